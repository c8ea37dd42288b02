"""Synthetic scenarios built on the traces, for what the traces alone cannot show.

All are deterministic given the simulation seed and follow the run accounting of
:mod:`simulations.engine`.

``drift``
    Data drift: halfway through, epochs-to-target move ``shift`` batch sizes up the ladder (batch
    size ``b_i`` now needs what ``b_{i-shift}`` needed), so larger batch sizes get cheaper and the
    best batch size moves. Regret is measured against the oracle of each half.
``alternating``
    The job alternates between two GPU models (recurrence ``r`` runs on ``gpus[r % 2]``), on the
    batch sizes both GPUs have. Epochs-to-target are the same on both, epoch costs are not; each
    recurrence is compared with its own GPU's oracle.
``alternating-separate``
    The same alternation, but learned as two independent jobs, one per GPU model (what a service
    that keys everything by GPU would do). Comparing it with ``alternating`` shows what sharing
    epochs-to-target across GPU models is worth.
``leave-one-out``
    Trace replay with a cluster prior (:func:`~optimizer_server.policy.base.cluster_prior`): each
    job's prior is learned from the *other workloads* among the selected jobs only (their mean
    epochs-to-target per batch size, one entry per workload and target), never from its own
    workload on any GPU, so no job learns from its own future. Compare with ``trace`` (no prior).
``concurrent``
    Concurrent submissions: a recurrence is submitted every ``interval`` seconds, where
    ``interval`` is the oracle's expected run time divided by ``overlap``, so about ``overlap``
    runs are in flight and results arrive out of order (a run takes as long as it trains). A
    failed run is retried at once. Policies see the in-flight batch sizes; ``min_cost`` is
    updated as recurrences finish.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from optimizer_server.policy.base import ClusterPrior, cluster_prior
from simulations.backend import BackendFactory
from simulations.engine import (
    Attempt,
    GpuProfiles,
    SimResult,
    SimulationError,
    make_backend,
    make_spec,
    observation,
    run_decision,
    simulate,
)
from simulations.traces import TraceJob

SCENARIOS: tuple[str, ...] = (
    "trace",
    "leave-one-out",
    "drift",
    "concurrent",
    "alternating",
    "alternating-separate",
)


def leave_one_out_prior(job: TraceJob, others: Sequence[TraceJob]) -> ClusterPrior | None:
    """The cluster prior of ``job`` from ``others``, leaving out every job of ``job``'s workload."""
    seen: dict[tuple[str, float], tuple[int, dict[int, float]]] = {}
    for other in others:
        if other.workload == job.workload:
            continue
        key = (other.workload, other.target_metric)
        if key in seen:  # epochs-to-target do not depend on the GPU: one entry per workload and target
            continue
        epochs = {b: other.mean_epochs(b) for b in other.batch_sizes if other.all_reach(b)}
        seen[key] = (other.default_batch_size, epochs)
    return cluster_prior(seen.values())


def simulate_leave_one_out(
    job: TraceJob,
    others: Sequence[TraceJob],
    policy: str,
    seed: int,
    recurrences: int | None = None,
    backend_factory: BackendFactory | None = None,
    max_slowdown: float = 0.0,
) -> SimResult:
    """The ``leave-one-out`` scenario (see the module docstring)."""
    prior = leave_one_out_prior(job, others)
    return simulate(
        job,
        policy,
        seed,
        recurrences=recurrences,
        backend_factory=backend_factory,
        max_slowdown=max_slowdown,
        prior=prior,
    )


def drifted(job: TraceJob, shift: int = 2) -> TraceJob:
    """``job`` after drift: batch size ``b_i`` takes the epochs-to-target of ``b_{i-shift}``."""
    bs = job.batch_sizes
    epochs = {b: job.target_epochs[bs[max(0, min(len(bs) - 1, i - shift))]] for i, b in enumerate(bs)}
    return replace(job, target_epochs=epochs, _cache={})


def restrict(job: TraceJob, batch_sizes: tuple[int, ...]) -> TraceJob:
    """``job`` on a subset of its batch sizes (the default clipped into it)."""
    keep = tuple(b for b in job.batch_sizes if b in batch_sizes)
    if not keep:
        raise ValueError(f"{job.name}: no batch size left")
    b0 = job.default_batch_size
    if b0 not in keep:
        b0 = max((b for b in keep if b <= b0), default=keep[0])
    return replace(
        job,
        batch_sizes=keep,
        default_batch_size=b0,
        target_epochs={b: job.target_epochs[b] for b in keep},
        power={b: job.power[b] for b in keep},
        _cache={},
    )


def simulate_drift(
    job: TraceJob, policy: str, seed: int, shift: int = 2, backend_factory: BackendFactory | None = None
) -> SimResult:
    """The ``drift`` scenario (see the module docstring)."""
    after = drifted(job, shift)
    half = job.recurrences // 2

    def schedule(r: int) -> TraceJob:
        return job if r < half else after

    result = simulate(job, policy, seed, schedule=schedule, backend_factory=backend_factory)
    result.job = f"{job.name}+drift"
    return result


def _alternation(first: TraceJob, second: TraceJob) -> tuple[tuple[TraceJob, TraceJob], int]:
    """Both GPUs' jobs on their common batch sizes, and the number of recurrences to alternate."""
    common = tuple(b for b in first.batch_sizes if b in second.batch_sizes)
    return (restrict(first, common), restrict(second, common)), (first.recurrences + second.recurrences) // 2


def simulate_alternating(
    first: TraceJob, second: TraceJob, policy: str, seed: int, backend_factory: BackendFactory | None = None
) -> SimResult:
    """The ``alternating`` scenario between ``first`` and ``second`` (same workload and target)."""
    jobs, n = _alternation(first, second)

    def schedule(r: int) -> TraceJob:
        return jobs[r % 2]

    result = simulate(jobs[0], policy, seed, recurrences=n, schedule=schedule, backend_factory=backend_factory)
    result.job = f"{first.workload}@{first.gpu}+{second.gpu}"
    result.gpu = f"{first.gpu}+{second.gpu}"
    return result


def simulate_alternating_separately(
    first: TraceJob, second: TraceJob, policy: str, seed: int, backend_factory: BackendFactory | None = None
) -> SimResult:
    """``alternating-separate``: each GPU's recurrences learned by its own job (no sharing)."""
    jobs, n = _alternation(first, second)
    halves = [
        simulate(job, policy, seed, recurrences=(n + 1 - i) // 2, backend_factory=backend_factory)
        for i, job in enumerate(jobs)
    ]
    result = replace(halves[0], attempts=[], recurrence_costs=[], oracle_costs=[], default_costs=[], default_energies=[])
    for r in range(n):  # interleave the recurrences back into the alternating order
        part, k = halves[r % 2], r // 2
        result.attempts.extend(a for a in part.attempts if a.recurrence == k)
        result.recurrence_costs.append(part.recurrence_costs[k])
        result.oracle_costs.append(part.oracle_costs[k])
        result.default_costs.append(part.default_costs[k])
        result.default_energies.append(part.default_energies[k])
    result.job = f"{first.workload}@{first.gpu}+{second.gpu}"
    result.gpu = f"{first.gpu}+{second.gpu}"
    return result


def simulate_concurrent(
    job: TraceJob,
    policy: str,
    seed: int,
    overlap: float = 2.0,
    backend_factory: BackendFactory | None = None,
) -> SimResult:
    """The ``concurrent`` scenario (see the module docstring)."""
    ob, op = job.oracle()
    point = job.power[ob][op]
    interval = job.mean_epochs(ob) * point.time_per_epoch_s / overlap
    spec = make_spec(job, policy, seed)
    backend = make_backend(job, spec, backend_factory)
    trace_rng = np.random.default_rng(seed)
    profiles = GpuProfiles()
    result = SimResult(
        f"{job.name}+concurrent", job.gpu, job.workload, job.target_metric, job.eta, job.beta, policy, seed
    )
    n = job.recurrences
    totals = [0.0] * n
    attempts = [0] * n
    done = [False] * n
    min_cost = math.inf
    # (end time, sequence, recurrence, batch size, outcome, phase)
    running: list[tuple[float, int, int, int, object, str]] = []
    seq = 0

    def launch(r: int, now: float) -> None:
        nonlocal seq
        if attempts[r] >= 500:
            raise SimulationError(f"{job.name}/{policy}: recurrence {r} never reached the target")
        context = profiles.context(job, in_flight=[item[3] for item in running])
        decision = backend.suggest(context)
        b = int(decision.batch_size)
        out = run_decision(job, decision, trace_rng, min_cost, backend.cost_bound(b), backend, profiles, context.in_flight)
        heapq.heappush(running, (now + out.time_s, seq, r, b, out, decision.phase))
        seq += 1

    def reap_until(t: float) -> None:
        nonlocal min_cost
        while running and running[0][0] <= t:
            end, _, r, b, out, phase = heapq.heappop(running)
            backend.observe(observation(job, b, out))  # type: ignore[arg-type]
            totals[r] += out.cost  # type: ignore[attr-defined]
            result.attempts.append(
                Attempt(
                    job.name, job.gpu, policy, seed, r, attempts[r], b, out.power_limit, out.epochs,  # type: ignore[attr-defined]
                    out.energy_j, out.time_s, out.cost, out.reached, out.profiled, phase,  # type: ignore[attr-defined]
                )
            )
            attempts[r] += 1
            if out.reached:  # type: ignore[attr-defined]
                done[r] = True
                min_cost = min(min_cost, totals[r])
            else:
                launch(r, end)

    try:
        for r in range(n):
            now = r * interval
            reap_until(now)
            launch(r, now)
        reap_until(math.inf)
    finally:
        backend.close()
    if not all(done):
        raise SimulationError(f"{job.name}/{policy}: unfinished recurrences")
    oracle = job.expected_cost(ob, op)
    result.recurrence_costs = totals
    result.oracle_costs = [oracle] * n
    result.default_costs = [job.expected_cost(job.default_batch_size, job.max_power)] * n
    result.default_energies = [job.expected_energy(job.default_batch_size, job.max_power)] * n
    return result

