"""The SDK against the real server with the replay GPU."""

from __future__ import annotations

import logging
import time

import pytest

from client_sdk.client import OptimizerClient, OptimizerClientError
from client_sdk.gpu import GpuUnavailableError
from client_sdk.replay import ReplayGpu
from optimizer_server.server import EmbeddedServer
from powerbandit.v1 import optimizer_pb2 as pb
from tests.helpers import SMALL_TABLE, small_job

STEPS = 12  # 4 steps per power limit: the profile fills the first epoch in equal slices


def train(run, target_epoch: int | None, max_epochs: int = 20) -> None:  # noqa: ANN001 - a TrainingRun
    """A stand-in training loop: steps, then a metric that reaches 0.9 at ``target_epoch``."""
    for epoch in range(1, max_epochs + 1):
        for _ in range(STEPS):
            run.step()
        if run.epoch_end(0.95 if epoch == target_epoch else 0.5):
            return


def test_first_run_profiles_and_reports_exact_numbers(client: OptimizerClient) -> None:
    job = small_job()
    gpu = ReplayGpu(SMALL_TABLE, model="Replay A40")
    with client.run(job, gpu, steps_per_epoch=STEPS, heartbeat=False) as run:
        assert run.batch_size == 64 and run.profiling
        train(run, target_epoch=3)
        assert not run.profiling
    done = run.completed_run
    assert done is not None and done.reached_target and done.epochs == 3
    # first epoch: equal thirds at 100/200/300 W; then the cheapest limit for the last two epochs
    row = SMALL_TABLE[64]
    costs = {p: 0.5 * w * t + 0.5 * 300 * t for p, (w, t) in row.items()}
    best = min(costs, key=costs.get)
    profile_time = sum(t for _, t in row.values()) / 3
    profile_energy = sum(w * t for w, t in row.values()) / 3
    assert done.power_limit_w == best
    assert done.time_s == pytest.approx(profile_time + 2 * row[best][1])
    assert done.energy_j == pytest.approx(profile_energy + 2 * row[best][0] * row[best][1])
    stored = client.get_job(job.job_id)
    (profile,) = stored.profiles
    assert profile.gpu_model == "Replay A40" and profile.batch_size == 64
    for point in profile.points:
        power, epoch_s = row[point.power_limit_w]
        assert point.average_power_w == pytest.approx(power)
        assert point.time_per_epoch_s == pytest.approx(epoch_s)
    assert gpu.power_limit_w() == 300  # restored at the end


def test_profile_is_reused_by_later_runs_of_the_batch_size(client: OptimizerClient) -> None:
    job = small_job()
    seen: dict[int, int] = {}
    for _ in range(8):
        with client.run(job, ReplayGpu(SMALL_TABLE), steps_per_epoch=STEPS, heartbeat=False) as run:
            seen[run.batch_size] = seen.get(run.batch_size, 0) + 1
            if seen[run.batch_size] > 1:
                assert not run.profiling
            train(run, target_epoch=4)
    runs = client.get_job(job.job_id).runs
    profiled = [r.batch_size for r in runs if r.profiled]
    assert len(profiled) == len(set(profiled)) == len(seen)


def test_exception_fails_the_run_and_restores_the_limit(client: OptimizerClient) -> None:
    gpu = ReplayGpu(SMALL_TABLE)
    with (
        pytest.raises(RuntimeError, match="loss is NaN"),
        client.run(small_job(), gpu, heartbeat=False) as run,
    ):
        run.epoch_end(0.1)
        raise RuntimeError("loss is NaN")
    (stored,) = client.get_job("team/job").runs
    assert stored.state == pb.RUN_STATE_FAILED and "loss is NaN" in stored.reason
    assert gpu.power_limit_w() == 300


def test_without_permission_the_run_reports_the_limit_in_force(
    client: OptimizerClient, caplog: pytest.LogCaptureFixture
) -> None:
    gpu = ReplayGpu(SMALL_TABLE, can_set_power_limit=False)
    with (
        caplog.at_level(logging.WARNING),
        client.run(small_job(), gpu, steps_per_epoch=STEPS, heartbeat=False) as run,
    ):
        train(run, target_epoch=2)
    assert run.completed_run is not None and run.completed_run.power_limit_w == 300
    assert any("cannot set power limits" in r.getMessage() for r in caplog.records)
    assert not client.get_job("team/job").profiles  # nothing was measured, nothing is claimed


def test_missing_nvml_names_the_ways_out(client: OptimizerClient) -> None:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("NVML works on this machine; the no-GPU error cannot be shown")
    except Exception:
        pass
    with pytest.raises(GpuUnavailableError) as info:
        client.run(small_job())
    assert "ReplayGpu" in str(info.value) or "replay" in str(info.value).lower()


def test_unreachable_server_error_names_the_address() -> None:
    with OptimizerClient("127.0.0.1:1", timeout_s=2) as client, pytest.raises(OptimizerClientError) as info:
        client.get_job("x")
    assert "127.0.0.1:1" in str(info.value) and info.value.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def test_heartbeats_keep_a_run_alive_and_silence_expires_it(tmp_path) -> None:  # noqa: ANN001
    url = f"sqlite:///{tmp_path / 'lease.db'}"
    with (
        EmbeddedServer(url, lease_s=0.6, sweep_interval_s=0.1) as server,
        OptimizerClient(server.address) as client,
    ):
        with client.run(small_job(), ReplayGpu(SMALL_TABLE), heartbeat=True) as alive:
            time.sleep(1.5)
            alive.epoch_end(0.95)
        assert alive.completed_run is not None and alive.completed_run.state == pb.RUN_STATE_COMPLETED
        silent = client.suggest("team/job", ReplayGpu(SMALL_TABLE).info())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            job = client.get_job("team/job")
            if job.in_flight_runs == 0:
                break
            time.sleep(0.1)
        states = {r.run_id: r.state for r in client.get_job("team/job").runs}
        assert states[silent.run_id] == pb.RUN_STATE_EXPIRED
        # an expired run is not evidence against its batch size, and a late report is still used
        client.complete_run("team/job", silent.run_id, energy_j=10, time_s=1, epochs=1, reached_target=True)
        assert client.get_job("team/job").completed_runs == 2


def test_replay_gpu_counts_exactly() -> None:
    gpu = ReplayGpu(SMALL_TABLE)
    gpu.begin_run(32)
    assert gpu.set_power_limit(200) == 200
    gpu.advance(0.5)
    assert gpu.now_s() == pytest.approx(10.0) and gpu.energy_j() == pytest.approx(1700.0)
    assert gpu.set_power_limit(240) == 200  # snaps to the nearest measured level
    with pytest.raises(ValueError, match="outside"):
        gpu.set_power_limit(1000)
    with pytest.raises(ValueError, match="no batch size 7"):
        gpu.begin_run(7)
