"""When an SDK run profiles power limits: only while steps come, never held at a candidate limit otherwise.

A real server (EmbeddedServer), the replay GPU (300 W in force; candidates 100/200/300 W, profiled
from the highest down).
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
    gpu.set_power_limit(200.0)  # in force before the run, and not the first candidate
    with client.run(small_job(), gpu, steps_per_epoch=12, heartbeat=False) as run:
        for _ in range(2):  # 4 steps per candidate limit were planned; the epoch ends after 2
            run.step()
        assert gpu.power_limit_w() == 300  # profiling the first candidate, the highest
        run.epoch_end(0.5)
        assert not run.profiling and gpu.power_limit_w() == 200
        run.epoch_end(0.95)
    assert run.completed_run is not None and run.completed_run.power_limit_w == 200


def test_without_steps_per_epoch_the_profile_starts_after_the_first_step(client: OptimizerClient) -> None:
    gpu = ReplayGpu(SMALL_TABLE)
    gpu.set_power_limit(200.0)
    run = client.start_run(small_job(), gpu, heartbeat=False)
    assert run.profiling and gpu.power_limit_w() == 200
    run.step()  # ran at the limit in force: not measured; the first candidate comes next
    assert run.profiling and gpu.power_limit_w() == 300
    run.fail("stopped while profiling")
    assert gpu.power_limit_w() == 300  # restored: the replay GPU's limit before this object changed it
    (stored,) = client.get_job("team/job").runs
    assert stored.state == pb.RUN_STATE_FAILED and stored.power_limit_w == 300  # the limit it failed at


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


class CappedReplayGpu(ReplayGpu):
    """A GPU held at 200 W by a lower limit set elsewhere: asking for more leaves 200 W in force."""

    def set_power_limit(self, power_limit_w: float) -> float:
        return super().set_power_limit(min(power_limit_w, 200.0))


def test_two_candidates_at_one_limit_in_force_are_one_profile_point(client: OptimizerClient) -> None:
    gpu = CappedReplayGpu(SMALL_TABLE, model="Replay capped")
    with client.run(small_job(), gpu, steps_per_epoch=12, heartbeat=False) as run:
        for epoch in range(2):
            for _ in range(12):
                run.step()  # the 300 W candidate runs at 200 W: the profile measured 200 W twice
            run.epoch_end(0.5 + 0.45 * epoch)
    assert run.completed_run is not None and run.completed_run.reached_target  # was: ReportProfile refused
    (profile,) = client.get_job("team/job").profiles
    points = {p.power_limit_w: p for p in profile.points}
    assert sorted(points) == [100.0, 200.0]
    power_w, epoch_s = SMALL_TABLE[64][200.0]
    assert points[200.0].average_power_w == pytest.approx(power_w)
    assert points[200.0].time_per_epoch_s == pytest.approx(epoch_s)


# 21 limits, 200-700 W every 25 W; every limit trains an epoch in 4 s at 80 % of its limit.
WIDE_TABLE = {64: {float(w): (0.8 * w, 4.0) for w in range(200, 701, 25)}, 128: {700.0: (560.0, 3.0)}}


def test_a_short_first_epoch_profiles_fewer_limits_each_for_a_second(client: OptimizerClient) -> None:
    gpu = ReplayGpu(WIDE_TABLE, model="Replay wide")
    job = small_job(batch_sizes=(64, 128))
    with client.run(job, gpu, steps_per_epoch=400, heartbeat=False) as run:  # 10 ms steps
        assert run.profiling
        for epoch in range(2):
            for _ in range(400):
                run.step()
            run.epoch_end(0.5 + 0.45 * epoch)
    assert run.completed_run is not None and run.completed_run.reached_target
    (profile,) = client.get_job(job.job_id).profiles
    points = sorted(profile.points, key=lambda p: p.power_limit_w)
    # 21 windows of 19 steps would each last 0.19 s, under two ticks of NVML's energy counter: the
    # 4 s epoch holds three windows of 1 s (and their warm-ups), spread from the highest to the lowest
    # (no limit costs more than the one above it here, so the profile does not stop early).
    assert len(points) == 3
    assert points[0].power_limit_w == 200.0 and points[-1].power_limit_w == 700.0
    assert points[1].power_limit_w == 425.0  # halfway: not the highest's neighbour
    for point in points:
        assert point.average_power_w == pytest.approx(0.8 * point.power_limit_w)
        assert point.time_per_epoch_s == pytest.approx(4.0)


def test_a_minimum_window_of_zero_measures_every_limit(client: OptimizerClient) -> None:
    from client_sdk.run import TrainingRun

    gpu = ReplayGpu(WIDE_TABLE, model="Replay wide")
    job = small_job(batch_sizes=(64, 128))
    client.register_job(job)
    run = TrainingRun(client, job, gpu, steps_per_epoch=420, heartbeat=False, min_profile_window_s=0.0)
    with run:
        for epoch in range(2):
            for _ in range(420):
                run.step()
            run.epoch_end(0.5 + 0.45 * epoch)
    (profile,) = client.get_job(job.job_id).profiles
    assert sorted(p.power_limit_w for p in profile.points) == [float(w) for w in range(200, 701, 25)]


# Costs per epoch at eta 0.5 with MAX_POWER 300 W: 300 W 2850, 250 W 2754, 200 W 2722.5 (the cheapest),
# 150 W 3584 (1.32x the cheapest: the profile stops there), 100 W 5985 (never measured).
STEEP_TABLE = {
    64: {300.0: (270.0, 10.0), 250.0: (240.0, 10.2), 200.0: (195.0, 11.0), 150.0: (148.0, 16.0), 100.0: (99.0, 30.0)},
    128: {300.0: (280.0, 8.0)},
}


def test_a_profile_stops_past_the_cheapest_limit_and_the_run_uses_the_cheapest(
    client: OptimizerClient, caplog: pytest.LogCaptureFixture
) -> None:
    from client_sdk.run import TrainingRun

    gpu = ReplayGpu(STEEP_TABLE, model="Replay steep")
    job = small_job(batch_sizes=(64, 128))
    client.register_job(job)
    run = TrainingRun(client, job, gpu, steps_per_epoch=100, heartbeat=False, min_profile_window_s=0.0)
    with caplog.at_level("INFO", logger="powerbandit.sdk.run"), run:
        suggestion = run.suggestion
        assert suggestion is not None and list(suggestion.profile_power_limits_w) == [300, 250, 200, 150, 100]
        assert suggestion.profile_stop_ratio == pytest.approx(1.25)
        for _ in range(100):
            run.step()
        assert not run.profiling and gpu.power_limit_w() == 200  # settled on the cheapest measured
        run.epoch_end(0.5)
        for _ in range(100):
            run.step()
        run.epoch_end(0.95)
    (profile,) = client.get_job(job.job_id).profiles
    assert sorted(p.power_limit_w for p in profile.points) == [150.0, 200.0, 250.0, 300.0]  # 100 W skipped
    assert run.completed_run is not None and run.completed_run.power_limit_w == 200
    assert "150 W costs 32% more per step than 200 W; not profiling the 1 lower limit(s) left (100 W)" in caplog.text
