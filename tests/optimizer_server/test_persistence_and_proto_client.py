"""Restart persistence, and a client generated from the .proto alone (not the SDK, not our stubs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from optimizer_server.server import EmbeddedServer
from tests.helpers import REPO_ROOT

PROTO_CLIENT = """
import json, sys
import grpc
import optimizer_pb2 as pb
import optimizer_pb2_grpc as pb_grpc

address, action = sys.argv[1], sys.argv[2]
stub = pb_grpc.OptimizerServiceStub(grpc.insecure_channel(address))
if action == "write":
    spec = pb.JobSpec(job_id="proto/job", batch_sizes=[16, 32], default_batch_size=32, target_metric=0.7, max_epochs=5)
    stub.RegisterJob(pb.RegisterJobRequest(spec=spec))
    gpu = pb.GpuInfo(model="V100", count=2, min_power_limit_w=100, max_power_limit_w=250)
    s = stub.Suggest(pb.SuggestRequest(job_id="proto/job", gpu=gpu))
    stub.CompleteRun(pb.CompleteRunRequest(job_id="proto/job", run_id=s.run_id, energy_j=9e5, time_s=3600,
                                           epochs=4, reached_target=True))
job = stub.GetJob(pb.GetJobRequest(job_id="proto/job")).job
print(json.dumps({"runs": [[r.run_id, r.batch_size, r.cost, r.max_power_w] for r in job.runs],
                  "completed": job.completed_runs, "arms": [[a.batch_size, a.observations] for a in job.arms],
                  "spec": job.spec.SerializeToString(deterministic=True).hex()}))
"""


def _generate_client(out: Path) -> Path:
    """Compile the .proto with protoc into ``out`` next to a client script that imports only that code."""
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"
    proto = REPO_ROOT / "protos" / "powerbandit" / "v1" / "optimizer.proto"
    args = [
        "protoc",
        f"-I{proto.parent}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(proto),
    ]
    assert protoc.main(args) == 0
    script = out / "client.py"
    script.write_text(PROTO_CLIENT)
    return script


def _run_client(script: Path, address: str, action: str) -> dict:
    # A separate interpreter whose path holds only the generated code: nothing of powerbandit.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-E", "-s", str(script), address, action],
        cwd=script.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_proto_only_client_survives_a_server_restart(tmp_path: Path) -> None:
    script = _generate_client(tmp_path)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with EmbeddedServer(url) as server:
        before = _run_client(script, server.address, "write")
    with EmbeddedServer(url) as server:
        after = _run_client(script, server.address, "read")
    assert after == before
    assert after["completed"] == 1 and sum(n for _, n in after["arms"]) == 1
    run_id, batch_size, cost, max_power = after["runs"][0]
    assert batch_size == 32 and max_power == 500  # 2 GPUs x 250 W
    assert cost == pytest.approx(0.5 * 9e5 + 0.5 * 500 * 3600)


def test_state_and_history_survive_restart(tmp_path: Path) -> None:
    from client_sdk.client import OptimizerClient
    from client_sdk.replay import ReplayGpu
    from tests.helpers import SMALL_TABLE, small_job

    url = f"sqlite:///{tmp_path / 'state.db'}"
    job = small_job()
    with EmbeddedServer(url) as server, OptimizerClient(server.address) as client:
        for _ in range(4):
            with client.run(job, ReplayGpu(SMALL_TABLE), steps_per_epoch=12, heartbeat=False) as run:
                for epoch in range(1, 6):
                    for _ in range(12):
                        run.step()
                    if run.epoch_end(0.95 if epoch == 3 else 0.5):
                        break
        before = client.get_job(job.job_id)
        next_before = before.outlook
    with EmbeddedServer(url) as server, OptimizerClient(server.address) as client:
        after = client.get_job(job.job_id)
        assert after == before
        assert after.outlook == next_before  # the policy state (and its next decision) is intact
        assert after.completed_runs == 4 and len(after.runs) == 4
        with client.run(job, ReplayGpu(SMALL_TABLE), steps_per_epoch=12, heartbeat=False) as run:
            run.epoch_end(0.95)
        assert client.get_job(job.job_id).completed_runs == 5
