"""The simulation loop and the run accounting of ``shared/traces/README.md``.

Per run (:func:`execute_run`):

- draw one training seed of the batch size uniformly (the simulation's own generator, separate
  from the policy's);
- the run may last ``min(max_epochs, (beta * min_cost) // epoch_cost)`` epochs (``min_cost``: the
  cheapest finished recurrence so far), and no longer than the policy's own bound
  ``cost_bound // epoch_cost``; a seed that needs more is stopped there and fails; a bound of 0
  epochs means the run never starts and costs nothing;
- the first run of a batch size on a GPU model profiles: its first epoch costs the mean over the
  power limits it measures, the rest runs at the best of them; its profile, those limits only, is
  then stored for that GPU model and handed to the policy like the server would. It measures the
  limits the decision lists (every limit unless the policy narrows the list), in their order, and
  with a stop ratio only up to the first that stops it (:func:`measured_points`).

Per recurrence (:func:`simulate`): attempts until one reaches the target, all costs counted, then
``min_cost`` is updated with the recurrence's total. Regret is measured against the oracle's
expected cost, energy saving against the default configuration's expected energy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optimizer_server.policy.base import (
    ClusterPrior,
    Decision,
    JobSpec,
    Observation,
    ProfilePoint,
    SuggestContext,
    budget_power_limit,
    energy_time_cost,
)
from powerbandit.domain import power_time_cost, stops_profiling
from simulations.backend import BackendFactory, DecisionBackend, InProcessBackend, in_process_backend
from simulations.baselines import BASELINES, FixedPolicy, GridPolicy
from simulations.traces import TraceJob

MAX_ATTEMPTS_PER_RECURRENCE = 500
SHORT_HORIZONS: tuple[int, ...] = (5, 10, 20, 40)
"""The first-K-recurrences horizons whose regret every summary reports (most jobs recur tens of times)."""


class SimulationError(RuntimeError):
    """The simulation cannot go on (e.g. a recurrence never reaches the target)."""


@dataclass(frozen=True)
class Attempt:
    """One run, as written to ``runs.csv``."""

    job: str
    gpu: str
    policy: str
    seed: int
    recurrence: int
    attempt: int
    batch_size: int
    power_limit: float
    epochs: int
    energy_j: float
    time_s: float
    cost: float
    reached: bool
    profiled: bool
    phase: str


@dataclass(frozen=True)
class RunOutcome:
    """What one run did."""

    power_limit: float
    epochs: int
    energy_j: float
    time_s: float
    cost: float
    reached: bool
    profiled: bool
    epoch_cost: float
    called_off: bool = False
    """The policy stopped the run after its profiling epoch (its measured epoch cost ruled it out)."""


@dataclass
class SimResult:
    """One simulation: a job, a policy, a seed."""

    job: str
    gpu: str
    workload: str
    target_metric: float
    eta: float
    beta: float
    policy: str
    seed: int
    attempts: list[Attempt] = field(default_factory=list)
    recurrence_costs: list[float] = field(default_factory=list)
    oracle_costs: list[float] = field(default_factory=list)
    default_costs: list[float] = field(default_factory=list)
    default_energies: list[float] = field(default_factory=list)
    recurrence_times: list[float] = field(default_factory=list)  # wall time of each recurrence, s
    default_times: list[float] = field(default_factory=list)  # the default's expected time, s
    max_slowdown: float = 0.0  # the job's slowdown budget (0: none, the cost weighs energy by eta)
    stuck: str = ""  # why the simulation stopped early: the policy kept failing one recurrence

    def summary(self) -> dict[str, Any]:
        """The ``summary.json`` object of this simulation."""
        energy = sum(a.energy_j for a in self.attempts)
        cost = sum(self.recurrence_costs)
        oracle = sum(self.oracle_costs)
        default_energy = sum(self.default_energies)
        return {
            "job": self.job,
            "gpu": self.gpu,
            "workload": self.workload,
            "target_metric": self.target_metric,
            "eta": self.eta,
            "beta": self.beta,
            "policy": self.policy,
            "seed": self.seed,
            "recurrences": len(self.recurrence_costs),
            "attempts": len(self.attempts),
            "failed_attempts": sum(1 for a in self.attempts if not a.reached),
            "profiling_runs": sum(1 for a in self.attempts if a.profiled),
            "energy_j": energy,
            "time_s": sum(a.time_s for a in self.attempts),
            "cost": cost,
            "default_cost": sum(self.default_costs),
            "default_energy_j": default_energy,
            "oracle_cost": oracle,
            "regret_pct": 100.0 * (cost / oracle - 1.0) if oracle > 0 else math.nan,
            "energy_saving_pct": 100.0 * (1.0 - energy / default_energy) if default_energy > 0 else math.nan,
            **{f"regret_first_{k}_pct": self.regret_first_pct(k) for k in SHORT_HORIZONS},
            "recurrences_to_regret_10pct": self.recurrences_until_under(10.0),
            "max_slowdown": self.max_slowdown,
            "slowdown_mean": self.slowdown_mean(),
            "budget_broken_pct": self.budget_broken_pct(),
            "stuck": self.stuck,
        }

    def cumulative_regret_pct(self) -> np.ndarray:
        """Cumulative cost over cumulative oracle cost, minus one, after each recurrence (in %)."""
        return 100.0 * (np.cumsum(self.recurrence_costs) / np.cumsum(self.oracle_costs) - 1.0)

    def regret_first_pct(self, k: int) -> float:
        """Cost of the first ``k`` recurrences over the oracle's expected cost for them, minus one (%).

        A simulation with fewer than ``k`` recurrences counts all of them (NaN when it has none).
        A recurrence is one scheduled execution: its failed attempts plus the run that reached the
        target.
        """
        n = min(int(k), len(self.recurrence_costs))
        oracle = math.fsum(self.oracle_costs[:n])
        if n == 0 or oracle <= 0:
            return math.nan
        return 100.0 * (math.fsum(self.recurrence_costs[:n]) / oracle - 1.0)

    def slowdown_mean(self) -> float:
        """Mean over recurrences of their wall time over the default configuration's expected time."""
        ratios = [t / d for t, d in zip(self.recurrence_times, self.default_times, strict=False) if d > 0]
        return float(np.mean(ratios)) if ratios else math.nan

    def budget_broken_pct(self) -> float:
        """Share of recurrences (failed attempts included) that took longer than the slowdown budget
        allows: ``max_slowdown`` times the default's expected time (NaN without a budget)."""
        if self.max_slowdown <= 0 or not self.recurrence_times:
            return math.nan
        pairs = list(zip(self.recurrence_times, self.default_times, strict=False))
        broken = sum(1 for t, d in pairs if t > self.max_slowdown * d * (1 + 1e-9))
        return 100.0 * broken / len(pairs)

    def recurrences_until_under(self, regret_pct: float) -> int | None:
        """The first recurrence count after which cumulative regret stays below ``regret_pct`` for good.

        1 when it never rises to ``regret_pct``; ``None`` when it is still at or above it at the end.
        """
        curve = self.cumulative_regret_pct()
        if len(curve) == 0 or not curve[-1] < regret_pct:
            return None
        above = np.flatnonzero(~(curve < regret_pct))
        return 1 if len(above) == 0 else int(above[-1]) + 2


def default_time_s(job: TraceJob) -> float:
    """Expected wall time of one run of the default configuration (default batch size, highest limit)."""
    b0 = job.default_batch_size
    return job.mean_epochs(b0) * job.power[b0][max(job.power[b0])].time_per_epoch_s


def budget_oracle(job: TraceJob, max_slowdown: float) -> tuple[int, float]:
    """The constrained oracle: the ``(b, p)`` with the lowest expected cost among those whose every seed
    reaches the target and whose expected time is at most ``max_slowdown`` times the default's."""
    allowed = max_slowdown * default_time_s(job) * (1 + 1e-12)
    candidates = [
        (b, p)
        for b in job.batch_sizes
        if job.all_reach(b)
        for p in job.power[b]
        if job.mean_epochs(b) * job.power[b][p].time_per_epoch_s <= allowed
    ]
    if not candidates:
        raise ValueError(f"{job.name}: no configuration reaches the target on every seed within the budget")
    return min(candidates, key=lambda bp: (job.expected_cost(*bp), bp[0], -bp[1]))


def job_oracle(job: TraceJob, max_slowdown: float = 0.0) -> tuple[int, float]:
    """The oracle regret is measured against: :meth:`TraceJob.oracle`, or :func:`budget_oracle`."""
    return budget_oracle(job, max_slowdown) if max_slowdown > 0 else job.oracle()


def make_spec(
    job: TraceJob,
    policy: str,
    seed: int,
    batch_sizes: Sequence[int] | None = None,
    max_slowdown: float = 0.0,
) -> JobSpec:
    """The :class:`JobSpec` a user would register for ``job`` (with a slowdown budget: ``eta`` 1)."""
    return JobSpec(
        job_id=f"{job.name}/{policy}/{seed}",
        batch_sizes=tuple(batch_sizes if batch_sizes is not None else job.batch_sizes),
        default_batch_size=job.default_batch_size,
        target_metric=job.target_metric,
        max_epochs=job.max_epochs,
        eta=job.eta,
        beta=job.beta,
        higher_is_better=job.higher_is_better,
        policy=policy,
        seed=seed,
        max_slowdown=max_slowdown,
    )


def make_backend(job: TraceJob, spec: JobSpec, factory: BackendFactory | None = None) -> DecisionBackend:
    """The backend of ``spec.policy``: a simulator baseline or, through ``factory``, a real policy."""
    if spec.policy == "default":
        return InProcessBackend(spec, FixedPolicy("default", job.default_batch_size, job.max_power))
    if spec.policy == "oracle":
        return InProcessBackend(spec, FixedPolicy("oracle", *job_oracle(job, spec.max_slowdown)))
    if spec.policy == "grid":
        return InProcessBackend(spec, GridPolicy())
    return (factory or in_process_backend)(spec)


def _snap_power_limit(job: TraceJob, b: int, p: float) -> float:
    limits = job.power[b]
    return p if p in limits else min(limits, key=lambda q: (abs(q - p), -q))


def execute_run(
    job: TraceJob,
    batch_size: int,
    power_limit: float | None,
    trace_rng: np.random.Generator,
    min_cost: float,
    policy_bound: float = math.inf,
    max_slowdown: float = 0.0,
    profile_limits: Sequence[float] = (),
) -> RunOutcome:
    """Simulate one run with the README's accounting (see the module docstring).

    ``power_limit=None`` means the run profiles power limits during its first epoch, then settles
    on what :func:`~optimizer_server.policy.base.profiled_power_limit` picks (with a slowdown budget,
    the cheapest limit within ``max_slowdown`` of the highest limit's epoch time). It profiles
    ``profile_limits`` (the decision's list; every limit of the trace when empty), and only they can
    be picked.
    """
    if batch_size not in job.power:
        raise SimulationError(f"{job.name}: the policy chose batch size {batch_size}, not in the trace")
    seeds = job.target_epochs[batch_size]
    k = seeds[int(trace_rng.integers(len(seeds)))]
    profiled = power_limit is None
    if profiled:
        tried = profiled_points(job, batch_size, profile_limits)
        p = job.best_power_limit(batch_size, tried)
        if max_slowdown > 0:
            fit = budget_power_limit(job.eta, tried, job.max_power, max_slowdown)
            p = max(tried) if fit is None else fit
    else:
        p = _snap_power_limit(job, batch_size, power_limit)
    ec = job.epoch_cost(batch_size, p)
    cap = job.max_epochs
    if math.isfinite(min_cost):
        cap = min(cap, int((job.beta * min_cost) // ec))
    if math.isfinite(policy_bound):
        cap = min(cap, max(int(policy_bound // ec), 0))
    reached = k is not None and k <= cap
    epochs = int(k) if reached else int(cap)  # type: ignore[arg-type]
    if epochs <= 0:
        return RunOutcome(p, 0, 0.0, 0.0, 0.0, False, False, ec)
    point = job.power[batch_size][p]
    energy = point.average_power_w * point.time_per_epoch_s * epochs
    time = point.time_per_epoch_s * epochs
    if profiled:
        first_energy, first_time = profiling_epoch(job, batch_size, profile_limits)
        energy += first_energy - point.average_power_w * point.time_per_epoch_s
        time += first_time - point.time_per_epoch_s
    cost = energy_time_cost(job.eta, energy, time, job.max_power)
    return RunOutcome(p, epochs, energy, time, cost, reached, profiled, ec)


def listed_points(points: Mapping[float, ProfilePoint], profile_limits: Sequence[float]) -> dict[float, ProfilePoint]:
    """What profiling ``profile_limits`` measures of a profile's ``points``: those at the listed limits
    (limits it lacks are skipped); every point when ``profile_limits`` is empty or none is known."""
    wanted = set(profile_limits)
    measured = {p: point for p, point in points.items() if p in wanted}
    return measured or dict(points)


def measured_points(
    points: Mapping[float, ProfilePoint],
    profile_limits: Sequence[float],
    stop_ratio: float,
    eta: float,
    max_power_w: float,
) -> dict[float, ProfilePoint]:
    """What a profile measures of ``points`` when it walks ``profile_limits`` in their order (every
    point, highest first, when the list is empty or none is known) and stops after the first limit
    that :func:`~powerbandit.domain.profiles.stops_profiling` says ends it; in the order measured."""
    listed = listed_points(points, profile_limits)
    order = [p for p in dict.fromkeys(profile_limits) if p in listed] or sorted(listed, reverse=True)
    measured: dict[float, ProfilePoint] = {}
    cheapest = math.inf
    for p in order:
        point = measured[p] = listed[p]
        cost = power_time_cost(eta, point.average_power_w, point.time_per_epoch_s, max_power_w)
        cheapest = min(cheapest, cost)
        if stops_profiling(cost, cheapest, stop_ratio):
            break
    return measured


def profiled_points(job: TraceJob, batch_size: int, profile_limits: Sequence[float] = ()) -> dict[float, ProfilePoint]:
    """What profiling ``profile_limits`` measures for ``batch_size`` (:func:`listed_points` of the trace)."""
    return listed_points(job.power[batch_size], profile_limits)


def profiling_epoch(job: TraceJob, batch_size: int, profile_limits: Sequence[float] = ()) -> tuple[float, float]:
    """``(energy J, time s)`` of a profiling run's first epoch: equal slices of it at each profiled
    power limit (:func:`profiled_points`), so the mean over them."""
    points = profiled_points(job, batch_size, profile_limits).values()
    energy = sum(q.average_power_w * q.time_per_epoch_s for q in points) / len(points)
    time = sum(q.time_per_epoch_s for q in points) / len(points)
    return energy, time


def called_off_after_profiling(job: TraceJob, batch_size: int, out: RunOutcome, backend: DecisionBackend,
                               context: SuggestContext, profile_limits: Sequence[float] = ()) -> RunOutcome:
    """``out``, or the run stopped after its profiling epoch when the policy calls it off then.

    The server asks the policy at every progress report; a run that profiles reports its first
    epoch with the profile stored, the first moment its epoch cost is measured. The outcome is
    drawn before (``out``), so the trace generator advances the same whether or not it is called off.
    """
    if not out.profiled or out.epochs <= 1:
        return out
    energy, time = profiling_epoch(job, batch_size, profile_limits)
    if backend.call_off(batch_size, context, energy, time) is None:
        return out
    cost = energy_time_cost(job.eta, energy, time, job.max_power)
    return RunOutcome(out.power_limit, 1, energy, time, cost, False, True, out.epoch_cost, called_off=True)


def run_decision(
    job: TraceJob,
    decision: Decision,
    trace_rng: np.random.Generator,
    min_cost: float,
    policy_bound: float,
    backend: DecisionBackend,
    profiles: GpuProfiles,
    in_flight: Sequence[int] = (),
    max_slowdown: float = 0.0,
) -> RunOutcome:
    """Run what ``decision`` says (:func:`execute_run`, profiling the limits it lists up to where it
    stops: :func:`measured_points`); a run that profiled stores its profile in ``profiles`` and may
    then be called off (:func:`called_off_after_profiling`). Every scenario runs its decisions
    through here."""
    b = int(decision.batch_size)
    listed = tuple(decision.profile_power_limits_w)
    if decision.power_limit_w is None and b in job.power:
        listed = tuple(measured_points(job.power[b], listed, decision.profile_stop_ratio, job.eta, job.max_power))
    out = execute_run(job, b, decision.power_limit_w, trace_rng, min_cost, policy_bound, max_slowdown, listed)
    if out.profiled:
        profiles.record(job, b, listed)
        out = called_off_after_profiling(job, b, out, backend, profiles.context(job, in_flight), listed)
    return out


class GpuProfiles:
    """Power profiles reported so far, per GPU model and batch size (what the server stores)."""

    def __init__(self, prior: ClusterPrior | None = None) -> None:
        self._by_gpu: dict[str, dict[int, dict[float, ProfilePoint]]] = {}
        self.prior = prior  # what other jobs tell this one (the server's cluster prior)

    def context(self, job: TraceJob, in_flight: Sequence[int] = ()) -> SuggestContext:
        """The :class:`SuggestContext` of a run of ``job`` on its GPU."""
        return SuggestContext(
            gpu_model=job.gpu,
            max_power_w=job.max_power,
            power_limits_w=job.power_limits,
            profiles=dict(self._by_gpu.setdefault(job.gpu, {})),
            in_flight=tuple(in_flight),
            prior=self.prior,
        )

    def record(self, job: TraceJob, batch_size: int, profile_limits: Sequence[float] = ()) -> None:
        """Store the measured profile of ``batch_size`` on ``job``'s GPU: the points at
        ``profile_limits`` (every point when empty)."""
        self._by_gpu.setdefault(job.gpu, {})[batch_size] = profiled_points(job, batch_size, profile_limits)


def observation(job: TraceJob, batch_size: int, out: RunOutcome) -> Observation:
    """What the policy is told about a finished run."""
    return Observation(
        batch_size=batch_size,
        gpu_model=job.gpu,
        power_limit_w=out.power_limit,
        epochs=float(out.epochs),
        energy_j=out.energy_j,
        time_s=out.time_s,
        cost=out.cost,
        reached_target=out.reached,
        max_power_w=job.max_power,
        epoch_cost=out.epoch_cost,
        called_off=out.called_off,
    )


def simulate(
    job: TraceJob,
    policy: str,
    seed: int,
    recurrences: int | None = None,
    schedule: Callable[[int], TraceJob] | None = None,
    backend_factory: BackendFactory | None = None,
    max_slowdown: float = 0.0,
    prior: ClusterPrior | None = None,
) -> SimResult:
    """Replay ``recurrences`` recurrences of ``job`` (``schedule(r)`` may swap the job per recurrence).

    ``schedule`` is how the synthetic scenarios change the data (drift) or the GPU (alternation);
    every job it returns must have the same batch sizes as ``job`` or a subset of them.
    With ``max_slowdown`` the job minimises energy (``eta`` 1) within that slowdown budget, and
    regret is measured against :func:`budget_oracle` (no ``schedule`` then). ``prior`` is handed to
    the policy in every :class:`SuggestContext` (the ``leave-one-out`` scenario's cluster prior).
    """
    n = job.recurrences if recurrences is None else recurrences
    if max_slowdown > 0:
        if schedule is not None:
            raise SimulationError("a slowdown budget is simulated on the trace scenario only")
        job = job.with_knobs(eta=1.0)
    spec = make_spec(job, policy, seed, max_slowdown=max_slowdown)
    backend = make_backend(job, spec, backend_factory)
    trace_rng = np.random.default_rng(seed)
    profiles = GpuProfiles(prior)
    result = SimResult(job.name, job.gpu, job.workload, job.target_metric, job.eta, job.beta, policy, seed)
    result.max_slowdown = max_slowdown
    # The user's cap compares costs of one GPU model: MAX_POWER (so the cost's scale) differs
    # between models, so a job that changes GPU keeps one ``min_cost`` per model.
    min_cost: dict[str, float] = {}
    try:
        for r in range(n):
            current = schedule(r) if schedule is not None else job
            total = 0.0
            elapsed_s = 0.0
            for attempt in range(MAX_ATTEMPTS_PER_RECURRENCE):
                decision: Decision = backend.suggest(profiles.context(current))
                b = int(decision.batch_size)
                cap_cost = min_cost.get(current.gpu, math.inf)
                out = run_decision(
                    current, decision, trace_rng, cap_cost, backend.cost_bound(b), backend, profiles,
                    max_slowdown=max_slowdown,
                )
                backend.observe(observation(current, b, out))
                total += out.cost
                elapsed_s += out.time_s
                result.attempts.append(
                    Attempt(
                        current.name, current.gpu, policy, seed, r, attempt, b, out.power_limit, out.epochs,
                        out.energy_j, out.time_s, out.cost, out.reached, out.profiled, decision.phase,
                    )
                )
                if out.reached:
                    break
            else:
                # The policy is stuck (the published one can be, after drift): record it, with the
                # cost of the failed attempts, and stop this simulation rather than the whole batch.
                result.stuck = (
                    f"recurrence {r} did not reach the target in {MAX_ATTEMPTS_PER_RECURRENCE} attempts; "
                    "simulation stopped there"
                )
            min_cost[current.gpu] = min(min_cost.get(current.gpu, math.inf), total)
            result.recurrence_costs.append(total)
            result.recurrence_times.append(elapsed_s)
            result.default_times.append(default_time_s(current))
            ob, op = job_oracle(current, max_slowdown)
            result.oracle_costs.append(current.expected_cost(ob, op))
            result.default_costs.append(current.expected_cost(current.default_batch_size, current.max_power))
            result.default_energies.append(current.expected_energy(current.default_batch_size, current.max_power))
            if result.stuck:
                break
    finally:
        backend.close()
    return result


def is_baseline(policy: str) -> bool:
    """Whether ``policy`` is a simulator-only baseline."""
    return policy in BASELINES
