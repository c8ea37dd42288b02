"""Types and helpers shared by every bandit policy.

Everything in :mod:`optimizer_server.policy` is pure: no I/O, no clocks, no global random state.
A policy turns ``(job spec, policy state, context, rng)`` into a :class:`Decision`, and folds a
finished run (:class:`Observation`) into its state. The gRPC server and the simulator call the
very same code, so a simulated result is what the service would have done.

The records a policy reads and writes (:class:`JobSpec`, :class:`ProfilePoint`, :class:`Decision`,
:class:`Observation`, :class:`ArmSummary`) and the cost formula belong to the domain model shared with
the SDK (:mod:`powerbandit.domain`); they are re-exported here under their old names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from powerbandit.domain import (  # re-exported: the policies' record types live in the domain model
    DEFAULT_BETA,
    DEFAULT_ETA,
    ArmSummary,
    Decision,
    JobSpec,
    Observation,
    PowerProfile,
    ProfilePoint,
    energy_time_cost,
    epoch_cost,
)

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_ETA",
    "ArmSummary",
    "ClusterPrior",
    "Decision",
    "JobSpec",
    "Observation",
    "Policy",
    "PowerProfile",
    "ProfilePoint",
    "SuggestContext",
    "best_power_limit",
    "best_recurrence",
    "budget_power_limit",
    "choose_power_limit",
    "cluster_prior",
    "decision_rng",
    "energy_time_cost",
    "epoch_cost",
    "fold_recurrence",
    "is_finite_nonnegative",
    "limits_worth_profiling",
    "new_recurrence_state",
    "profiled_power_limit",
]

@dataclass(frozen=True)
class ClusterPrior:
    """What other jobs of the cluster say about a new job (see :func:`cluster_prior`).

    ``epochs_slope_down`` and ``epochs_slope_up``: the change of log epochs-to-target per doubling
    of the batch size, below and above a job's default batch size (mean over the other jobs);
    ``jobs``: how many jobs it was learned from.
    """

    epochs_slope_down: float = 0.0
    epochs_slope_up: float = 0.0
    jobs: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"epochs_slope_down": self.epochs_slope_down, "epochs_slope_up": self.epochs_slope_up, "jobs": self.jobs}


PRIOR_REACH = 2.0
"""Batch sizes up to this many doublings from a job's default teach the prior (where a new job explores first)."""


def cluster_prior(jobs: Iterable[tuple[int, Mapping[int, float]]]) -> ClusterPrior | None:
    """The prior other jobs give: ``jobs`` holds, per job, its default batch size and its mean
    epochs-to-target per batch size (batch sizes that reached the target). ``None`` without a job
    that measured its default and a neighbour.

    Per job and direction, the least-squares slope through the default of ``log(epochs(b) /
    epochs(b0))`` against ``log2(b / b0)``, over batch sizes within :data:`PRIOR_REACH` doublings;
    the prior is the mean over jobs (each job counts once, whatever its number of batch sizes).
    """
    down: list[float] = []
    up: list[float] = []
    count = 0
    for b0, epochs in jobs:
        e0 = epochs.get(int(b0))
        if not e0 or not (math.isfinite(e0) and e0 > 0):
            continue
        sums = {-1: [0.0, 0.0], 1: [0.0, 0.0]}
        for b, e in epochs.items():
            if int(b) == int(b0) or int(b) <= 0 or not (math.isfinite(e) and e > 0):
                continue
            d = math.log2(int(b) / int(b0))
            if abs(d) > PRIOR_REACH:
                continue
            side = sums[1 if d > 0 else -1]
            side[0] += d * math.log(e / e0)
            side[1] += d * d
        used = False
        for sign, (xy, xx) in sums.items():
            if xx > 0:
                (up if sign > 0 else down).append(xy / xx)
                used = True
        count += used
    if not count:
        return None
    return ClusterPrior(
        epochs_slope_down=float(np.mean(down)) if down else 0.0,
        epochs_slope_up=float(np.mean(up)) if up else 0.0,
        jobs=count,
    )


@dataclass(frozen=True)
class SuggestContext:
    """What a suggestion depends on besides the job: the run's GPUs and what is in flight.

    ``max_power_w`` is the sum over the run's GPUs of their maximum power limit (the cost's
    ``MAX_POWER``); ``power_limits_w`` are the per-GPU limits that may be applied, ascending;
    ``profiles`` maps batch size to the stored power profile for this GPU model;
    ``in_flight`` lists the batch sizes of this job's runs that started and have not finished;
    ``prior`` is what other jobs of the cluster say (``None``: the job learns from its own runs only).
    """

    gpu_model: str
    max_power_w: float
    power_limits_w: tuple[float, ...]
    profiles: Mapping[int, PowerProfile] = field(default_factory=dict)
    in_flight: Sequence[int] = ()
    prior: ClusterPrior | None = None


class Policy(Protocol):
    """A bandit policy: pure functions over a JSON-serialisable state dict.

    No method changes the state it is handed (:meth:`observe` returns a new one). A state loaded
    from storage goes through :meth:`upgrade_state` once; the other methods may refuse a state that
    is not in the policy's current version.
    """

    name: str

    def new_state(self, spec: JobSpec) -> dict[str, Any]:
        """The state of a job that has seen nothing yet."""
        ...

    def upgrade_state(self, spec: JobSpec, state: Mapping[str, Any]) -> dict[str, Any]:
        """``state`` (as loaded, of any version this policy knows) in the current version, as a new
        dict; ``state`` is not changed, and a current state comes back with the same content.
        Raises ``ValueError`` for a version the policy does not know."""
        ...

    def suggest(
        self, spec: JobSpec, state: Mapping[str, Any], context: SuggestContext, rng: np.random.Generator
    ) -> Decision:
        """Choose the configuration of the next run. Never raises for a valid job."""
        ...

    def observe(self, spec: JobSpec, state: Mapping[str, Any], observation: Observation) -> dict[str, Any]:
        """A new state: ``state`` with one finished run folded in (``state`` is not changed)."""
        ...

    def cost_bound(
        self, spec: JobSpec, state: Mapping[str, Any], batch_size: int | None = None, gpu_model: str | None = None
    ) -> float:
        """Largest cost one run may spend before it is told to stop (``inf`` when unbounded).

        With ``batch_size``, the bound for a run of that batch size (a policy may stop
        explorations sooner than the user's ``beta`` cap); without it, the job-wide cap. With
        ``gpu_model``, costs are compared only with runs on that model: ``MAX_POWER``, and so the
        scale of the cost, differs between GPU models.
        """
        ...

    def call_off(
        self, spec: JobSpec, state: Mapping[str, Any], context: SuggestContext, batch_size: int, cost_so_far: float
    ) -> str | None:
        """Why a run of ``batch_size`` on ``context``'s GPU, having cost ``cost_so_far``, should stop
        now although it is within its :meth:`cost_bound` (``None``: let it go on). A policy may call
        off an exploration once what the run has measured (its power profile, in ``context``) shows
        it cannot pay off; the run's :class:`Observation` then has ``called_off`` set."""
        ...

    def summarize(self, spec: JobSpec, state: Mapping[str, Any]) -> list[ArmSummary]:
        """One :class:`ArmSummary` per batch size of the job, ascending."""
        ...


def best_power_limit(eta: float, profile: PowerProfile, max_power_w: float) -> float:
    """The power limit of ``profile`` with the lowest epoch cost (the highest limit on ties)."""
    if not profile:
        raise ValueError("an empty power profile has no best power limit")
    return min(profile, key=lambda p: (epoch_cost(eta, profile[p], max_power_w), -p))


def budget_power_limit(
    eta: float, profile: PowerProfile, max_power_w: float, max_slowdown: float, epochs_ratio: float = 1.0
) -> float | None:
    """The cheapest power limit of ``profile`` whose epochs fit a slowdown budget, or ``None``.

    A limit fits when ``epochs_ratio * time_per_epoch(p) <= max_slowdown * time_per_epoch(p_max)``,
    ``p_max`` being the profile's highest limit and ``epochs_ratio`` the epochs this batch size is
    expected to need over those of the reference (1: the reference itself).
    """
    if not profile:
        raise ValueError("an empty power profile has no best power limit")
    reference = profile[max(profile)].time_per_epoch_s * max_slowdown
    fitting = {p: pt for p, pt in profile.items() if epochs_ratio * pt.time_per_epoch_s <= reference * (1 + 1e-12)}
    return best_power_limit(eta, fitting, max_power_w) if fitting else None


def profiled_power_limit(spec: JobSpec, profile: PowerProfile, max_power_w: float) -> float:
    """The power limit a run settles on after profiling ``profile``.

    The lowest epoch cost; with a slowdown budget, the lowest among the limits whose epochs take at
    most ``max_slowdown`` times as long as at the highest limit (the highest limit when none does).
    """
    if spec.max_slowdown > 0:
        chosen = budget_power_limit(spec.eta, profile, max_power_w, spec.max_slowdown)
        return max(profile) if chosen is None else chosen
    return best_power_limit(spec.eta, profile, max_power_w)


def choose_power_limit(
    spec: JobSpec, context: SuggestContext, batch_size: int
) -> tuple[float | None, tuple[float, ...]]:
    """Power limit for ``batch_size`` on this GPU: the profiled best, or a request to profile.

    Returns ``(power_limit_w, ())`` when a profile exists for this GPU model and batch size, and
    ``(None, power_limits_w)`` when the run must profile first.
    """
    profile = context.profiles.get(batch_size)
    if profile:
        return profiled_power_limit(spec, profile, context.max_power_w), ()
    return None, tuple(context.power_limits_w)


def limits_worth_profiling(
    spec: JobSpec,
    context: SuggestContext,
    batch_size: int,
    limits: Sequence[float],
    tolerance: float,
    reach_doublings: float = 1.0,
) -> tuple[float, ...]:
    """The power limits of ``limits`` a first profile of ``batch_size`` should try, in their order.

    How an epoch's cost moves with the power limit changes slowly with the batch size, and a profile
    spends equal slices of its epoch on every limit it tries, the slow low limits included. So a
    limit is left out when the nearest profiled batch size on each side of ``batch_size``, within
    ``reach_doublings`` doublings and having measured that limit, found it more than ``tolerance``
    (a share) above its own best epoch cost. Below its best limit a run's cost climbs as the limit
    falls, so a limit such a batch size did not measure (its profile stopped early:
    :func:`~powerbandit.domain.profiles.stops_profiling`) but that lies under one it found too costly
    below its best counts as found too costly as well. Any other limit that no such batch size
    measured is tried, and so is the highest, the reference of a slowdown budget and of a GPU's
    utilisation. With no profile near enough, every limit is tried.
    """
    limits = tuple(limits)
    if not limits or not math.isfinite(tolerance):
        return limits
    b = int(batch_size)
    relative: dict[int, dict[float, float]] = {}  # nearby profiled batch size -> limit -> cost / best
    for c, profile in context.profiles.items():
        c = int(c)
        if not profile or c == b or c <= 0 or b <= 0 or abs(math.log2(c / b)) > reach_doublings + 1e-9:
            continue
        costs = {p: epoch_cost(spec.eta, point, context.max_power_w) for p, point in profile.items()}
        best = min(costs.values())
        if best > 0.0 and math.isfinite(best):
            ratios = {p: cost / best for p, cost in costs.items()}
            best_limit = min(costs, key=lambda p: (costs[p], -p))
            too_low = [p for p, ratio in ratios.items() if p < best_limit and ratio > 1.0 + tolerance]
            if too_low:  # the limits under one already too costly, below the best, cost more still
                ceiling = max(too_low)
                ratios.update({p: math.inf for p in limits if p < ceiling and p not in ratios})
            relative[c] = ratios
    if not relative:
        return limits
    highest = max(limits)
    kept = []
    for p in limits:
        below = [c for c in relative if c < b and p in relative[c]]
        above = [c for c in relative if c > b and p in relative[c]]
        judges = ([max(below)] if below else []) + ([min(above)] if above else [])
        if p == highest or not judges or any(relative[c][p] <= 1.0 + tolerance for c in judges):
            kept.append(p)
    return tuple(kept)


def new_recurrence_state() -> dict[str, Any]:
    """The recurrence bookkeeping every policy keeps in its state (see :func:`fold_recurrence`)."""
    return {
        "recurrence_cost": 0.0,  # cost of the failed attempts of the recurrence under way
        "min_recurrence_cost": None,  # cheapest finished recurrence, any GPU model
        "min_recurrence_cost_by_gpu": {},  # gpu model -> cheapest recurrence that ended on it
    }


def fold_recurrence(state: dict[str, Any], observation: Observation) -> None:
    """Add a run to the recurrence under way; a run that reached the target ends the recurrence.

    A recurrence is the failed attempts of one scheduled execution plus the run that succeeded;
    its total is what the ``beta`` early-stop cap compares against.
    """
    if observation.reached_target:
        total = float(state["recurrence_cost"]) + float(observation.cost)
        best = state["min_recurrence_cost"]
        state["min_recurrence_cost"] = total if best is None else min(float(best), total)
        by_gpu = state.setdefault("min_recurrence_cost_by_gpu", {})
        by_gpu[observation.gpu_model] = min(float(by_gpu.get(observation.gpu_model, math.inf)), total)
        state["recurrence_cost"] = 0.0
    else:
        state["recurrence_cost"] = float(state["recurrence_cost"]) + float(observation.cost)


def best_recurrence(state: Mapping[str, Any], gpu_model: str | None) -> float | None:
    """The cheapest finished recurrence, on ``gpu_model`` when given (``None`` before the first)."""
    if gpu_model is None:
        return state["min_recurrence_cost"]
    return state.get("min_recurrence_cost_by_gpu", {}).get(gpu_model)


_MASK64 = (1 << 64) - 1
_GOLDEN64 = 0x9E3779B97F4A7C15  # SplitMix64's increment


def _splitmix64(z: int) -> int:
    """SplitMix64's output function (a bijective 64-bit mixer)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class _DecisionSeed(np.random.bit_generator.ISeedSequence):
    """Seed words for a bit generator: the SplitMix64 stream started at ``key``.

    NumPy's :class:`~numpy.random.SeedSequence` would do, but it costs more than the rest of a
    suggestion's arithmetic; SplitMix64 is the standard cheap way to spread one 64-bit key over a
    generator's state.
    """

    __slots__ = ("_key",)

    def __init__(self, key: int) -> None:
        self._key = key

    def generate_state(self, n_words: int, dtype: Any = np.uint32) -> np.ndarray:
        words = []
        x = self._key
        for _ in range(n_words):
            x = (x + _GOLDEN64) & _MASK64
            words.append(_splitmix64(x))
        state = np.array(words, dtype=np.uint64)
        return state if np.dtype(dtype) == np.uint64 else (state & 0xFFFFFFFF).astype(dtype)


def decision_rng(seed: int, decision_index: int) -> np.random.Generator:
    """The random generator for a job's ``decision_index``-th suggestion.

    Server replicas are stateless and the simulator must reproduce the server's choices, so every
    suggestion draws from a generator derived from the job's seed and the suggestion's index: a
    PCG64 whose state is four SplitMix64 outputs of the pair (distinct indices of one job give
    distinct streams).
    """
    key = _splitmix64((int(seed) + _GOLDEN64) & _MASK64) ^ (int(decision_index) & _MASK64)
    return np.random.Generator(np.random.PCG64(_DecisionSeed(key)))


def is_finite_nonnegative(value: float) -> bool:
    """True for finite numbers >= 0."""
    return math.isfinite(value) and value >= 0.0
