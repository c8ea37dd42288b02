"""Synthetic scenarios (drift, concurrency, alternating GPUs) and the published-trace checks."""

from __future__ import annotations

from dataclasses import replace

import pytest

from optimizer_server.policy.base import Decision, JobSpec, ProfilePoint, SuggestContext
from simulations.backend import in_process_backend
from simulations.engine import simulate
from simulations.scenarios import drifted, simulate_alternating, simulate_concurrent, simulate_drift
from simulations.traces import TraceJob, TraceSet


def ladder_job(gpu: str = "v100", slow: float = 1.0) -> TraceJob:
    """Four batch sizes; epochs grow with b, epoch time falls: b=16 is the cheapest."""
    bs = (8, 16, 32, 64)
    epochs = {8: (6, 7), 16: (7, 8), 32: (12, 14), 64: (30, None)}
    tpe = {8: 20.0, 16: 11.0, 32: 7.0, 64: 5.0}
    power = {
        b: {
            100.0: ProfilePoint(100.0, 95.0, 1.6 * tpe[b] * slow),
            200.0: ProfilePoint(200.0, 190.0, tpe[b] * slow),
        }
        for b in bs
    }
    return TraceJob(gpu, "cifar100", 0.6, 40, 32, bs, (100.0, 200.0), epochs, power, recurrences=40)


def test_drift_moves_the_best_batch_size() -> None:
    job = ladder_job()
    after = drifted(job, shift=2)
    assert after.target_epochs[32] == job.target_epochs[8]
    assert after.target_epochs[8] == job.target_epochs[8]
    assert after.oracle()[0] > job.oracle()[0]  # the best batch size moved up
    result = simulate_drift(job, "powerbandit", 1)
    assert len(result.recurrence_costs) == job.recurrences
    half = job.recurrences // 2
    assert result.oracle_costs[0] == pytest.approx(job.expected_cost(*job.oracle()))
    assert result.oracle_costs[half] == pytest.approx(after.expected_cost(*after.oracle()))
    assert simulate_drift(job, "powerbandit", 1).attempts == result.attempts  # seeded


def test_concurrent_runs_overlap_and_report_out_of_order() -> None:
    job = ladder_job()
    result = simulate_concurrent(job, "powerbandit", 2, overlap=3.0)
    assert len(result.recurrence_costs) == job.recurrences
    order = [a.recurrence for a in result.attempts]
    assert order != sorted(order)  # results arrived out of order
    assert simulate_concurrent(job, "powerbandit", 2, overlap=3.0).attempts == result.attempts
    zeus = simulate_concurrent(job, "zeus", 2, overlap=3.0)
    assert len(zeus.recurrence_costs) == job.recurrences


class TopLimitOnly:
    """The in-process powerbandit, except that a profiling run is told to try the highest limit only;
    records every context it is handed."""

    def __init__(self, spec: JobSpec) -> None:
        self.inner = in_process_backend(spec)
        self.contexts: list[SuggestContext] = []

    def suggest(self, context: SuggestContext) -> Decision:
        self.contexts.append(context)
        d = self.inner.suggest(context)
        if d.power_limit_w is None:
            return replace(d, profile_power_limits_w=(max(context.power_limits_w),))
        return d

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.mark.parametrize("scenario", ["trace", "concurrent", "alternating"])
def test_every_scenario_profiles_only_the_listed_limits(scenario: str) -> None:
    job = ladder_job()
    backends: list[TopLimitOnly] = []

    def factory(spec: JobSpec) -> TopLimitOnly:
        backends.append(TopLimitOnly(spec))
        return backends[-1]

    if scenario == "concurrent":
        result = simulate_concurrent(job, "powerbandit", 2, overlap=3.0, backend_factory=factory)
    elif scenario == "alternating":
        result = simulate_alternating(job, ladder_job("a40", slow=0.5), "powerbandit", 2, backend_factory=factory)
    else:
        result = simulate(job, "powerbandit", 2, backend_factory=factory)
    profiled = [a for a in result.attempts if a.profiled]
    assert profiled and all(a.power_limit == 200.0 for a in profiled)  # 100 W is never measured
    stored = [p for ctx in backends[0].contexts for p in ctx.profiles.values()]
    assert stored and all(set(p) == {200.0} for p in stored)


def test_alternating_gpus_share_epochs_and_profile_each_gpu() -> None:
    a, b = ladder_job("v100"), ladder_job("a40", slow=1.5)
    b = replace(b, batch_sizes=(8, 16, 32), target_epochs={k: a.target_epochs[k] for k in (8, 16, 32)},
                power={k: b.power[k] for k in (8, 16, 32)}, _cache={})
    result = simulate_alternating(a, b, "powerbandit", 1)
    gpus = [x.gpu for x in result.attempts]
    assert {"v100", "a40"} == set(gpus)
    assert all(x.batch_size in (8, 16, 32) for x in result.attempts)
    profiled = {(x.gpu, x.batch_size) for x in result.attempts if x.profiled}
    assert len(profiled) == sum(1 for x in result.attempts if x.profiled)  # once per (GPU, b)
    assert result.summary()["regret_pct"] < 50.0


@pytest.mark.traces
def test_canonical_jobs_load() -> None:
    jobs = TraceSet().jobs()
    assert len(jobs) == 24
    libri = {j.gpu: j for j in jobs if j.workload == "librispeech"}
    assert libri["v100"].default_batch_size == 192 and libri["v100"].recurrences == 210


@pytest.mark.traces
def test_zeus_seed1_within_published_range() -> None:
    traces = TraceSet()
    for gpu, workload in [("v100", "cifar100"), ("a40", "squad"), ("p100", "sentiment140")]:
        s = simulate(traces.job(gpu, workload), "zeus", 1).summary()
        assert 1.0 <= s["regret_pct"] <= 12.0, (gpu, workload, s["regret_pct"])
