"""When an SDK run profiles power limits: only while steps come, never held at a candidate limit otherwise.

A real server (EmbeddedServer), the replay GPU (300 W in force; candidates 100/200/300 W).
"""

from __future__ import annotations

import pytest

from client_sdk.client import OptimizerClient
from client_sdk.replay import ReplayGpu
from powerbandit.v1 import optimizer_pb2 as pb
from tests.helpers import SMALL_TABLE, small_job


def test_a_run_without_steps_stays_at_the_limit_in_force(client: OptimizerClient) -> None:
    gpu = ReplayGpu(SMALL_TABLE)
    with client.run(small_job(), gpu, heartbeat=False) as run:
        assert run.profiling  # the server asked for a profile; it would start at the first step
        assert gpu.power_limit_w() == 300  # not the lowest candidate
        run.epoch_end(0.5)
        assert not run.profiling and gpu.power_limit_w() == 300
        run.epoch_end(0.95)
    done = run.completed_run
    assert done is not None and done.power_limit_w == 300 and done.epochs == 2
    power_w, epoch_s = SMALL_TABLE[64][300.0]
    assert done.energy_j == pytest.approx(2 * power_w * epoch_s)  # both epochs at 300 W
    assert not client.get_job("team/job").profiles


def test_an_epoch_ending_before_the_profile_completes_goes_back_to_the_limit_in_force(
    client: OptimizerClient,
) -> None:
    gpu = ReplayGpu(SMALL_TABLE)
    with client.run(small_job(), gpu, steps_per_epoch=12, heartbeat=False) as run:
        for _ in range(2):  # 4 steps per candidate limit were planned; the epoch ends after 2
            run.step()
        assert gpu.power_limit_w() == 100  # profiling the first candidate
        run.epoch_end(0.5)
        assert not run.profiling and gpu.power_limit_w() == 300
        run.epoch_end(0.95)
    assert run.completed_run is not None and run.completed_run.power_limit_w == 300


def test_without_steps_per_epoch_the_profile_starts_after_the_first_step(client: OptimizerClient) -> None:
    gpu = ReplayGpu(SMALL_TABLE)
    run = client.start_run(small_job(), gpu, heartbeat=False)
    assert run.profiling and gpu.power_limit_w() == 300
    run.step()  # ran at the limit in force: not measured; the first candidate comes next
    assert run.profiling and gpu.power_limit_w() == 100
    run.fail("stopped while profiling")
    assert gpu.power_limit_w() == 300  # restored
    (stored,) = client.get_job("team/job").runs
    assert stored.state == pb.RUN_STATE_FAILED and stored.power_limit_w == 100  # the limit it failed at


def test_a_failed_run_reports_the_limit_it_ran_at(client: OptimizerClient) -> None:
    gpu = ReplayGpu(SMALL_TABLE)
    run = client.start_run(small_job(), gpu, steps_per_epoch=12, heartbeat=False)
    for _ in range(12):
        run.step()
    run.epoch_end(0.5)
    chosen_w = gpu.power_limit_w()
    run.fail("loss is NaN")
    (stored,) = client.get_job("team/job").runs
    assert stored.state == pb.RUN_STATE_FAILED and stored.power_limit_w == chosen_w > 0  # was stored as 0


def test_fail_run_refuses_an_impossible_power_limit(client: OptimizerClient) -> None:
    from client_sdk.errors import InvalidRequestError

    run = client.start_run(small_job(), ReplayGpu(SMALL_TABLE), heartbeat=False)
    with pytest.raises(InvalidRequestError, match="power_limit_w"):
        client.fail_run("team/job", run.run_id, "crashed", power_limit_w=-5.0)
    run.fail("crashed")  # the run is still in flight: a valid report is taken
    (stored,) = client.get_job("team/job").runs
    assert stored.state == pb.RUN_STATE_FAILED and stored.power_limit_w == 300
