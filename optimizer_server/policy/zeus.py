"""The published Zeus policy (NSDI'23): pruning exploration, then Gaussian Thompson sampling.

Faithful to the published batch size optimizer (``PruningGTSBatchSizeOptimizer``):

1. **Pruning exploration**, 2 rounds. A round starts at its centre batch size (round 1: the job's
   default), tries smaller batch sizes in descending order until one fails to reach the target,
   then larger ones in ascending order until one fails. The next round is restricted to the batch
   sizes that reached the target in this round and is centred on the cheapest of them. Only an
   observation of the batch size the exploration expects advances it (the published code's
   concurrency rule); other observations are only recorded.
2. **Gaussian Thompson sampling** over the survivors with reward ``-cost``: per arm, prior
   precision 0 and reward precision ``1 / var(costs)`` (population variance), so the posterior of
   the mean is ``N(mean(costs), var(costs) / n)``, a point mass when the variance is 0 ("infinite
   precision after one sample"). Arms with fewer than 2 observations are explored first.

A run that never started because its first epoch already exceeded the early-stop bound is observed
by the published simulator as costing ``100 * beta * min_cost``; we do the same.
The power limit comes from :func:`choose_power_limit` (profile on first use per GPU model).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from optimizer_server.policy.base import (
    ArmSummary,
    Decision,
    JobSpec,
    Observation,
    SuggestContext,
    best_recurrence,
    choose_power_limit,
    fold_recurrence,
    new_recurrence_state,
)

PRUNING_ROUNDS = 2
TS_MIN_OBSERVATIONS = 2
_Z90 = 1.6448536269514722


def _direction_list(arms: list[int], center: int, direction: str) -> list[int]:
    """Batch sizes of one pruning direction: ``down`` from the centre (inclusive) or ``up``."""
    idx = arms.index(center)
    if direction == "down":
        return sorted(arms[: idx + 1], reverse=True)
    return sorted(arms[idx + 1 :])


def _mean_var(values: list[float]) -> tuple[float, float]:
    """Mean and population variance (``np.var``), in plain Python for speed on short lists."""
    n = len(values)
    mean = sum(values) / n
    return mean, sum((v - mean) ** 2 for v in values) / n


def _windowed(costs: list[float], window: int) -> list[float]:
    return costs[-window:] if window > 0 else costs


class ZeusPolicy:
    """Pruning exploration + Gaussian Thompson sampling, as published (see module docstring)."""

    name = "zeus"

    # ---------------------------------------------------------------- state
    def new_state(self, spec: JobSpec) -> dict[str, Any]:
        """Round 1 of pruning centred on the default batch size; nothing observed."""
        arms = sorted(int(b) for b in spec.batch_sizes)
        center = int(spec.default_batch_size)
        if center not in arms:
            center = min(arms, key=lambda b: (abs(b - center), b))
        return {
            "version": 1,
            "prune": {
                "round": 0,
                "arms": arms,
                "center": center,  # where this round started; its direction lists are fixed
                "best": center,  # cheapest batch size that reached the target so far
                "direction": "down",
                "pos": 0,
                "good": [],
                "best_cost": None,
            },
            "survivors": None,  # list once pruning is over
            "costs": {},  # str(batch size) -> observed costs (for the Gaussian TS)
            "successes": {},  # str(batch size) -> number of runs that reached the target
            "epochs_sum": {},  # str(batch size) -> sum of epochs of successful runs
            "observations": 0,
            **new_recurrence_state(),
        }

    @staticmethod
    def _expecting(state: Mapping[str, Any]) -> int | None:
        """The batch size pruning exploration wants next, or ``None`` when pruning is over."""
        if state["survivors"] is not None:
            return None
        prune = state["prune"]
        todo = _direction_list(prune["arms"], prune["center"], prune["direction"])
        return int(todo[prune["pos"]])

    # -------------------------------------------------------------- suggest
    def suggest(
        self, spec: JobSpec, state: Mapping[str, Any], context: SuggestContext, rng: np.random.Generator
    ) -> Decision:
        """Next pruning batch size, else a Thompson sample over the survivors."""
        expecting = self._expecting(state)
        if expecting is not None:
            prune = state["prune"]
            phase, batch_size = "explore", expecting
            explanation = (
                f"pruning round {prune['round'] + 1}/{PRUNING_ROUNDS}, going {prune['direction']} "
                f"from batch size {prune['center']}: trying {batch_size}"
            )
        else:
            batch_size, phase, explanation = self._thompson(spec, state, rng)
        power_limit, profile = choose_power_limit(spec, context, batch_size)
        if power_limit is None:
            explanation += "; profiling power limits during the first epoch"
        return Decision(batch_size, power_limit, profile, phase, explanation)

    def _thompson(
        self, spec: JobSpec, state: Mapping[str, Any], rng: np.random.Generator
    ) -> tuple[int, str, str]:
        arms = [int(b) for b in state["survivors"]]
        if not arms:
            # Pruning removed everything (the published code raises here): fall back to the batch
            # sizes that ever reached the target, else to the default.
            arms = sorted(int(b) for b, n in state["successes"].items() if n > 0)
            if not arms:
                return int(state["prune"]["best"]), "fallback", "every batch size was pruned; using the default batch size"
        costs = {b: _windowed(state["costs"].get(str(b), []), spec.window) for b in arms}
        cold = [b for b in arms if len(costs[b]) < TS_MIN_OBSERVATIONS]
        if cold:
            b = int(cold[int(rng.integers(len(cold)))])
            return b, "explore", f"batch size {b} has fewer than {TS_MIN_OBSERVATIONS} observations"
        samples: dict[int, float] = {}
        for b in arms:
            mean, var = _mean_var(costs[b])
            samples[b] = mean if var == 0.0 else float(rng.normal(mean, math.sqrt(var / len(costs[b]))))
        best = min(arms, key=lambda b: samples[b])
        return best, "exploit", f"Thompson sample: batch size {best} has the lowest sampled cost"

    # -------------------------------------------------------------- observe
    def upgrade_state(self, spec: JobSpec, state: Mapping[str, Any]) -> dict[str, Any]:
        """``state`` as a new dict with the same content: version 1 is the only version so far."""
        return dict(state)

    def observe(self, spec: JobSpec, state: Mapping[str, Any], observation: Observation) -> dict[str, Any]:
        """A new state with the run's cost recorded, and pruning advanced when it is the batch size
        pruning expected (``state`` is not changed)."""
        b = int(observation.batch_size)
        key = str(b)
        cost = float(observation.cost)
        never_ran = observation.epochs <= 0 and not observation.reached_target
        if never_ran and state["min_recurrence_cost"] is not None:
            cost = 100.0 * spec.beta * float(state["min_recurrence_cost"])
        new = dict(state)
        new["costs"] = {**state["costs"], key: [*state["costs"].get(key, []), cost]}
        new["observations"] = state["observations"] + 1
        if observation.reached_target:
            new["successes"] = {**state["successes"], key: state["successes"].get(key, 0) + 1}
            new["epochs_sum"] = {**state["epochs_sum"], key: state["epochs_sum"].get(key, 0.0) + float(observation.epochs)}
        new["min_recurrence_cost_by_gpu"] = dict(state.get("min_recurrence_cost_by_gpu", {}))
        fold_recurrence(new, observation)

        if self._expecting(new) == b:
            prune = state["prune"]
            new["prune"] = {**prune, "arms": list(prune["arms"]), "good": list(prune["good"])}
            self._advance_pruning(new, b, cost, observation.reached_target)
        return new

    @staticmethod
    def _advance_pruning(state: dict[str, Any], b: int, cost: float, reached: bool) -> None:
        """One step of the published pruning generator for the result of batch size ``b``, in place
        (on the new state :meth:`observe` builds)."""
        prune = state["prune"]
        switch = True
        if reached:
            if prune["best_cost"] is None or cost < prune["best_cost"]:
                prune["best_cost"] = cost
                prune["best"] = b
            prune["good"].append(b)
            prune["pos"] += 1
            todo = _direction_list(prune["arms"], prune["center"], prune["direction"])
            switch = prune["pos"] >= len(todo)
        if not switch:
            return
        if prune["direction"] == "down":
            prune["direction"] = "up"
            prune["pos"] = 0
            if _direction_list(prune["arms"], prune["center"], "up"):
                return
        # End of the round: keep what reached the target, re-centre on the cheapest.
        good = sorted(prune["good"])
        prune["round"] += 1
        if prune["round"] >= PRUNING_ROUNDS or not good:
            state["survivors"] = good
            return
        prune.update(arms=good, center=prune["best"], direction="down", pos=0, good=[], best_cost=None)

    # ------------------------------------------------------------ the rest
    def cost_bound(
        self, spec: JobSpec, state: Mapping[str, Any], batch_size: int | None = None, gpu_model: str | None = None
    ) -> float:
        """``beta`` times the cheapest finished recurrence (on ``gpu_model`` when given; ``inf`` before one)."""
        best = best_recurrence(state, gpu_model)
        return math.inf if best is None else spec.beta * float(best)

    def call_off(
        self, spec: JobSpec, state: Mapping[str, Any], context: SuggestContext, batch_size: int, cost_so_far: float
    ) -> str | None:
        """Never: the published policy stops runs at its cost bound only."""
        return None

    def summarize(self, spec: JobSpec, state: Mapping[str, Any]) -> list[ArmSummary]:
        """Empirical cost per batch size with the TS posterior's 90 % interval."""
        survivors = state["survivors"]
        out = []
        for b in sorted(spec.batch_sizes):
            costs = _windowed(state["costs"].get(str(b), []), spec.window)
            succ = int(state["successes"].get(str(b), 0))
            if not costs:
                status = "unexplored"
            elif survivors is not None and b not in survivors:
                status = "pruned"
            else:
                status = "active"
            if costs:
                mean, var = _mean_var(costs)
                half = _Z90 * math.sqrt(var / len(costs))
                low, high = mean - half, mean + half
            else:
                mean = low = high = math.nan
            epochs = float(state["epochs_sum"].get(str(b), 0.0)) / succ if succ else math.nan
            out.append(ArmSummary(b, status, len(state["costs"].get(str(b), [])), succ, mean, low, high, epochs))
        return out
