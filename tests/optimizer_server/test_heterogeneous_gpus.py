"""A job that moves between GPU models: shared epochs knowledge, per-model profiles and cost bounds."""

from __future__ import annotations

import math

import pytest

from client_sdk.client import OptimizerClient
from client_sdk.replay import ReplayGpu
from optimizer_server.policy import JobSpec, Observation, get_policy
from powerbandit.v1 import optimizer_pb2 as pb
from tests.helpers import SMALL_TABLE, small_job

# The same job on a second, slower and hungrier GPU model.
OTHER_TABLE = {b: {p: (w * 1.5, t * 1.4) for p, (w, t) in row.items()} for b, row in SMALL_TABLE.items()}


@pytest.mark.parametrize("policy", ["zeus", "powerbandit"])
def test_cost_bounds_compare_costs_of_one_gpu_model(policy: str) -> None:
    p = get_policy(policy)
    spec = JobSpec("h/job", (32, 64, 128), 64, 0.9, 20, policy=policy, seed=1)
    state = p.new_state(spec)
    state = p.observe(spec, state, Observation(64, "A40", 200.0, 5, 1000.0, 10.0, 100.0, True, 300.0, 20.0))
    assert p.cost_bound(spec, state, 64, "A40") == pytest.approx(2 * 100.0)
    assert math.isinf(p.cost_bound(spec, state, 64, "V100"))  # nothing finished on V100 yet
    state = p.observe(spec, state, Observation(64, "V100", 200.0, 5, 3000.0, 30.0, 400.0, True, 250.0, 80.0))
    assert p.cost_bound(spec, state, 64, "V100") == pytest.approx(2 * 400.0)
    assert p.cost_bound(spec, state, 64, "A40") == pytest.approx(2 * 100.0)


def _replay(client: OptimizerClient, table: dict, model: str, runs: int) -> list[int]:
    chosen = []
    for _ in range(runs):
        with client.run(small_job(), ReplayGpu(table, model=model), steps_per_epoch=12, heartbeat=False) as run:
            chosen.append(run.batch_size)
            for epoch in range(1, 21):
                for _ in range(12):
                    run.step()
                if run.epoch_end(0.95 if epoch == {32: 3, 64: 4, 128: 9}[run.batch_size] else 0.5):
                    break
    return chosen


def test_a_job_moving_to_a_new_gpu_model_keeps_what_it_learned(client: OptimizerClient) -> None:
    _replay(client, SMALL_TABLE, "GPU-A", 8)
    learned = client.get_job("team/job")
    assert learned.best_batch_size in (32, 64, 128)
    (first_on_b,) = _replay(client, OTHER_TABLE, "GPU-B", 1)
    job = client.get_job("team/job")
    # epochs-to-target carried over: the new model exploits a batch size that reached the target on
    # the old one instead of starting the exploration from scratch
    proven = {a.batch_size for a in learned.arms if a.successes > 0}
    assert first_on_b in proven
    assert job.runs[-1].phase == pb.PHASE_EXPLOIT
    assert job.runs[-1].profiled  # but its power profile is per GPU model, so it is measured again
    models = {(p.gpu_model, p.batch_size) for p in job.profiles}
    assert ("GPU-B", first_on_b) in models and any(m == "GPU-A" for m, _ in models)
    assert job.runs[-1].max_power_w == 300.0 and job.runs[-1].gpu_model == "GPU-B"
