"""How a run's power limit was applied: stored per run on SQLite and PostgreSQL, validated, shown."""

from __future__ import annotations

import grpc
import pytest

from powerbandit.v1 import optimizer_pb2 as pb
from powerbandit.v1 import optimizer_pb2_grpc as pb_grpc
from tests.helpers import gpu_pb, small_job


def _suggest(stub: pb_grpc.OptimizerServiceStub) -> str:
    return stub.Suggest(pb.SuggestRequest(job_id="team/job", gpu=gpu_pb())).run_id


def test_power_limit_control_is_stored_per_run(stub: pb_grpc.OptimizerServiceStub) -> None:
    stub.RegisterJob(pb.RegisterJobRequest(spec=small_job().to_pb()))
    agent_run, failed_run, old_sdk_run = _suggest(stub), _suggest(stub), _suggest(stub)
    done = stub.CompleteRun(pb.CompleteRunRequest(
        job_id="team/job", run_id=agent_run, energy_j=1000, time_s=10, epochs=5, reached_target=True,
        power_limit_w=200, power_limit_control=pb.POWER_LIMIT_CONTROL_AGENT,
    ))  # fmt: skip
    assert done.run.power_limit_control == pb.POWER_LIMIT_CONTROL_AGENT
    stub.FailRun(pb.FailRunRequest(job_id="team/job", run_id=failed_run, reason="oom",
                                   power_limit_control=pb.POWER_LIMIT_CONTROL_NONE))  # fmt: skip
    stub.CompleteRun(pb.CompleteRunRequest(
        job_id="team/job", run_id=old_sdk_run, energy_j=900, time_s=9, epochs=5, reached_target=True,
    ))  # fmt: skip
    runs = {r.run_id: r for r in stub.GetJob(pb.GetJobRequest(job_id="team/job")).job.runs}
    assert runs[agent_run].power_limit_control == pb.POWER_LIMIT_CONTROL_AGENT
    assert runs[failed_run].power_limit_control == pb.POWER_LIMIT_CONTROL_NONE
    assert runs[old_sdk_run].power_limit_control == pb.POWER_LIMIT_CONTROL_UNSPECIFIED


def test_unknown_power_limit_control_is_invalid(stub: pb_grpc.OptimizerServiceStub) -> None:
    stub.RegisterJob(pb.RegisterJobRequest(spec=small_job().to_pb()))
    run_id = _suggest(stub)
    with pytest.raises(grpc.RpcError) as info:
        stub.CompleteRun(pb.CompleteRunRequest(
            job_id="team/job", run_id=run_id, energy_j=1000, time_s=10, epochs=5, reached_target=True,
            power_limit_control=9,  # type: ignore[arg-type]
        ))  # fmt: skip
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "PowerLimitControl" in (info.value.details() or "")
