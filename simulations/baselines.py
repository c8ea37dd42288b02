"""Simulator-only baseline policies: ``default``, ``oracle`` and ``grid``.

They follow the :class:`~optimizer_server.policy.base.Policy` protocol so the simulation loop
treats them like any other policy, but they are not in the server's registry: ``default`` and
``oracle`` are given the trace's answers, ``grid`` is a naive reference point.
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
    choose_power_limit,
)

BASELINES: tuple[str, ...] = ("default", "oracle", "grid")


class _Recorder:
    """State shared by the baselines: costs and successes per batch size."""

    def new_state(self, spec: JobSpec) -> dict[str, Any]:
        return {"costs": {}, "successes": {}, "min_recurrence_cost": None, "recurrence_cost": 0.0}

    def upgrade_state(self, spec: JobSpec, state: Mapping[str, Any]) -> dict[str, Any]:
        """A copy: the baselines have one state version."""
        return {
            "costs": {k: list(v) for k, v in state["costs"].items()},
            "successes": dict(state["successes"]),
            "min_recurrence_cost": state["min_recurrence_cost"],
            "recurrence_cost": state["recurrence_cost"],
        }

    def observe(self, spec: JobSpec, state: Mapping[str, Any], observation: Observation) -> dict[str, Any]:
        """A new state with ``observation`` folded in (``state`` is left as it is)."""
        key = str(observation.batch_size)
        costs = dict(state["costs"])
        costs[key] = [*costs.get(key, []), float(observation.cost)]
        new = {**state, "costs": costs, "successes": dict(state["successes"])}
        if observation.reached_target:
            new["successes"][key] = new["successes"].get(key, 0) + 1
            total = state["recurrence_cost"] + float(observation.cost)
            best = state["min_recurrence_cost"]
            new["min_recurrence_cost"] = total if best is None else min(best, total)
            new["recurrence_cost"] = 0.0
        else:
            new["recurrence_cost"] = state["recurrence_cost"] + float(observation.cost)
        return new

    def cost_bound(
        self, spec: JobSpec, state: Mapping[str, Any], batch_size: int | None = None, gpu_model: str | None = None
    ) -> float:
        best = state["min_recurrence_cost"]
        return math.inf if best is None else spec.beta * best

    def call_off(
        self, spec: JobSpec, state: Mapping[str, Any], context: SuggestContext, batch_size: int, cost_so_far: float
    ) -> str | None:
        return None

    def summarize(self, spec: JobSpec, state: Mapping[str, Any]) -> list[ArmSummary]:
        out = []
        for b in sorted(spec.batch_sizes):
            costs = state["costs"].get(str(b), [])
            mean = float(np.mean(costs)) if costs else math.nan
            status = "active" if costs else "unexplored"
            succ = int(state["successes"].get(str(b), 0))
            out.append(ArmSummary(b, status, len(costs), succ, mean, mean, mean, math.nan))
        return out


class FixedPolicy(_Recorder):
    """Always the same ``(batch size, power limit)``: ``default`` (b0 at max power) or ``oracle``."""

    def __init__(self, name: str, batch_size: int, power_limit_w: float) -> None:
        self.name = name
        self.batch_size = batch_size
        self.power_limit_w = power_limit_w

    def suggest(
        self, spec: JobSpec, state: Mapping[str, Any], context: SuggestContext, rng: np.random.Generator
    ) -> Decision:
        """The fixed configuration."""
        return Decision(
            self.batch_size, self.power_limit_w, (), "exploit", f"{self.name}: always {self.batch_size}"
        )


class GridPolicy(_Recorder):
    """Each batch size once (ascending, profiling its power limit), then the cheapest mean cost."""

    name = "grid"

    def suggest(
        self, spec: JobSpec, state: Mapping[str, Any], context: SuggestContext, rng: np.random.Generator
    ) -> Decision:
        """The next untried batch size, else the one with the lowest mean cost among successes."""
        untried = [b for b in sorted(spec.batch_sizes) if str(b) not in state["costs"]]
        untried = [b for b in untried if b not in context.in_flight] or untried
        if untried:
            b, phase, why = untried[0], "explore", "grid: trying every batch size once"
        else:
            ok = [b for b in spec.batch_sizes if state["successes"].get(str(b), 0)]
            if ok:
                b = min(ok, key=lambda x: (float(np.mean(state["costs"][str(x)])), x))
                phase, why = "exploit", "grid: lowest mean cost so far"
            else:
                b, phase, why = spec.default_batch_size, "fallback", "grid: nothing reached the target"
        power_limit, profile = choose_power_limit(spec, context, b)
        return Decision(b, power_limit, profile, phase, why)
