"""Reference points for the first recurrences: what policies that know the oracle would score.

The regret of a job's first K recurrences (``SimResult.regret_first_pct``) has a floor no learning
policy beats: the first run is the default configuration, and a batch size's first run profiles its
power limits. These functions give that floor and two reference walks, as expected values over the
trace seeds (no simulation, no randomness), so a policy's short-horizon figures can be read against
what is attainable:

- ``default-then-oracle``: the default run (profiling), then the oracle's configuration every time.
- ``walk``: the first run of every batch size from the default to the oracle's, one at a time, then
  the oracle's: a walk that knows where to stop and never steps aside.
- ``walk+overshoot``: the walk plus one trial past the oracle's batch size (or, when the default is
  the oracle's, of its cheaper neighbour): what it takes to *see* that the best is the best.

Each trial runs in its own recurrence, in order, under the user's cap: ``beta`` times the cheapest
recurrence so far (taken as the expected cost of the cheapest batch size tried before; none for the
first run), at most ``max_epochs``. A seed that does not reach the target within the cap wastes all
it spent and the recurrence then runs the oracle's configuration; a trial that reaches it counts in
place of one oracle run. Only the trials within the first K recurrences count. Regret is over the
oracle's expected cost of K recurrences, as the simulator measures it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from powerbandit.domain import energy_time_cost
from simulations.engine import profiling_epoch
from simulations.traces import TraceJob

REFERENCES: tuple[str, ...] = ("default-then-oracle", "walk", "walk+overshoot")


def first_run_excess(job: TraceJob, batch_size: int, min_cost: float = math.inf) -> float:
    """Expected cost of the first (profiling) run of ``batch_size`` beyond one oracle run, under the
    cap ``beta * min_cost`` (``min_cost``: the cheapest recurrence so far; none before the first).

    Mean over the trace seeds: a seed that reaches the target within the cap costs its epochs at the
    best power limit plus the profiling epoch's extra, less the oracle's expected cost; one that
    does not wastes all it spent up to the cap.
    """
    b_star, p_star = job.oracle()
    oracle = job.expected_cost(b_star, p_star)
    p = job.best_power_limit(batch_size)
    epoch = job.epoch_cost(batch_size, p)
    profiling_extra = energy_time_cost(job.eta, *profiling_epoch(job, batch_size), job.max_power) - epoch
    cap = job.max_epochs if math.isinf(min_cost) else min(job.max_epochs, int(job.beta * min_cost // epoch))
    excess = []
    for k in job.target_epochs[batch_size]:
        if k is not None and k <= cap:
            excess.append(k * epoch + profiling_extra - oracle)
        else:
            excess.append(cap * epoch + profiling_extra)
    return sum(excess) / len(excess)


def walk(job: TraceJob) -> list[int]:
    """The batch sizes from the default to the oracle's, both included, in walking order."""
    sizes = list(job.batch_sizes)
    start, end = sizes.index(job.default_batch_size), sizes.index(job.oracle()[0])
    step = 1 if end >= start else -1
    return sizes[start : end + step : step]


def overshoot(job: TraceJob) -> int | None:
    """The trial that shows the oracle's batch size is the best: the next one past it away from the
    default, or (the default being the oracle's) its cheaper neighbour; ``None`` when there is none."""
    sizes = list(job.batch_sizes)
    start, end = sizes.index(job.default_batch_size), sizes.index(job.oracle()[0])
    if end != start:
        beyond = end + (1 if end > start else -1)
        return sizes[beyond] if 0 <= beyond < len(sizes) else None
    neighbours = [sizes[i] for i in (start - 1, start + 1) if 0 <= i < len(sizes)]
    b_star, p_star = job.oracle()
    best = job.expected_cost(b_star, p_star)
    return min(neighbours, key=lambda b: first_run_excess(job, b, best)) if neighbours else None


def reference_regret_pct(job: TraceJob, reference: str, k: int) -> float:
    """The expected regret (%) of ``job``'s first ``k`` recurrences under a reference of :data:`REFERENCES`."""
    b_star, p_star = job.oracle()
    oracle = job.expected_cost(b_star, p_star)
    trials = [job.default_batch_size]
    if reference in ("walk", "walk+overshoot"):
        trials = walk(job)
    elif reference != "default-then-oracle":
        raise ValueError(f"unknown reference {reference!r}; choose from {', '.join(REFERENCES)}")
    if reference == "walk+overshoot":
        extra = overshoot(job)
        trials = trials + ([extra] if extra is not None else [])
    n = min(k, job.recurrences) if job.recurrences else k
    excess = 0.0
    min_cost = math.inf
    for b in trials[:n]:
        excess += first_run_excess(job, b, min_cost)
        if job.all_reach(b):
            min_cost = min(min_cost, job.expected_cost(b, job.best_power_limit(b)))
    return 100.0 * excess / (n * oracle)


@dataclass(frozen=True)
class ReferenceRow:
    """One reference's mean regret over jobs, per K."""

    reference: str
    regret_pct: dict[int, float]


def reference_table(jobs: Sequence[TraceJob], ks: Sequence[int]) -> list[ReferenceRow]:
    """Mean over ``jobs`` of each reference's first-K regret, for every K of ``ks``."""
    rows = []
    for reference in REFERENCES:
        values = {
            k: math.fsum(reference_regret_pct(job, reference, k) for job in jobs) / len(jobs) for k in ks
        }
        rows.append(ReferenceRow(reference, values))
    return rows
