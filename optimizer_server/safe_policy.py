"""A policy as the service uses it: a stored state it cannot use never becomes an error for callers.

Policies are pure code over a job's stored state. The edge validates every report, so a policy
should never meet a value it cannot handle; but a database written by an older version, or a bug
met by one unlucky state, must not turn every ``Suggest``, ``GetJob`` and ``ListJobs`` touching the
job into ``INTERNAL`` for every caller. :class:`SafePolicy` wraps a policy so that:

* ``upgrade_state`` (applied once where a state is loaded) leaves a state it cannot upgrade as is;
* ``suggest`` falls back to the job's default batch size (phase ``fallback``, saying why);
* ``cost_bound`` falls back to no bound (``inf``), ``call_off`` to letting the run go on;
  ``summarize`` to arms marked ``unknown``;
* ``observe`` reports failure (``None``) instead of raising, and :meth:`SafePolicy.replay`
  rebuilds a state from the run log, skipping each observation the policy cannot fold in.

Every fallback is logged at ERROR with the job id and the traceback, so the defect is visible.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from optimizer_server.policy import (
    ArmSummary,
    Decision,
    JobSpec,
    Observation,
    Policy,
    SuggestContext,
    choose_power_limit,
)

log = logging.getLogger("powerbandit.server.policy")

UNKNOWN_ARM = "unknown"
"""Arm status when the policy could not summarise the job's state."""


class SafePolicy:
    """A :class:`~optimizer_server.policy.Policy` whose failures on stored state are logged, not raised."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.name = policy.name

    def upgrade_state(self, spec: JobSpec, state: Mapping[str, Any]) -> dict[str, Any]:
        """``state`` in the policy's current version (a new dict; ``state`` is not changed), or
        ``state`` as it is when the policy cannot upgrade it (the other methods then fall back)."""
        try:
            return self.policy.upgrade_state(spec, state)
        except Exception:
            self._failed("upgrade the stored state", spec)
            return dict(state)

    def new_state(self, spec: JobSpec) -> dict[str, Any]:
        """The state of a new job (a failure here is a bug in the policy: it raises)."""
        return self.policy.new_state(spec)

    def suggest(
        self, spec: JobSpec, state: Mapping[str, Any], context: SuggestContext, rng: np.random.Generator
    ) -> Decision:
        """The policy's decision, or the job's default configuration when it cannot decide."""
        try:
            return self.policy.suggest(spec, state, context, rng)
        except Exception:
            self._failed("suggest", spec)
        batch_size = int(spec.default_batch_size)
        try:
            power_limit, profile = choose_power_limit(spec, context, batch_size)
        except Exception:
            self._failed("choose a power limit", spec)
            power_limit, profile = None, tuple(context.power_limits_w)
        return Decision(
            batch_size,
            power_limit,
            profile,
            "fallback",
            f"the {self.name} policy could not use this job's stored state (see the server log); "
            f"running the default batch size {batch_size}",
        )

    def cost_bound(
        self, spec: JobSpec, state: Mapping[str, Any], batch_size: int | None = None, gpu_model: str | None = None
    ) -> float:
        """The policy's early-stop bound, or ``inf`` (no early stop) when it cannot compute one."""
        try:
            return self.policy.cost_bound(spec, state, batch_size, gpu_model)
        except Exception:
            self._failed("compute the early-stop bound", spec)
            return math.inf

    def call_off(
        self, spec: JobSpec, state: Mapping[str, Any], context: SuggestContext, batch_size: int, cost_so_far: float
    ) -> str | None:
        """The policy's reason to call the run off now, or ``None`` (go on) when it cannot tell."""
        try:
            return self.policy.call_off(spec, state, context, batch_size, cost_so_far)
        except Exception:
            self._failed("decide whether to call a run off", spec)
            return None

    def power_limit(
        self, spec: JobSpec, state: Mapping[str, Any], context: SuggestContext, batch_size: int
    ) -> float | None:
        """The power limit a run of ``batch_size`` would get (``None``: it would profile first).

        The policy's own rule where it has one (a slowdown budget changes it), else the profiled best.
        """
        try:
            own = getattr(self.policy, "power_limit", None)
            if own is not None:
                return own(spec, state, context, batch_size)  # type: ignore[no-any-return]
            return choose_power_limit(spec, context, batch_size)[0]
        except Exception:
            self._failed("choose a power limit", spec)
            return None

    def summarize(self, spec: JobSpec, state: Mapping[str, Any]) -> list[ArmSummary]:
        """The policy's arm summaries, or one ``unknown`` arm per batch size."""
        try:
            return self.policy.summarize(spec, state)
        except Exception:
            self._failed("summarize", spec)
            nan = math.nan
            return [ArmSummary(int(b), UNKNOWN_ARM, 0, 0, nan, nan, nan, nan) for b in sorted(spec.batch_sizes)]

    def observe(self, spec: JobSpec, state: Mapping[str, Any], observation: Observation) -> dict[str, Any] | None:
        """The state with ``observation`` folded in, or ``None`` when the policy failed.

        Policies never change the state they are handed; after a failure the service rebuilds the
        state from the run log with :meth:`replay`, skipping what the policy cannot fold in.
        """
        try:
            return self.policy.observe(spec, state, observation)
        except Exception:
            self._failed(f"fold in a run of batch size {observation.batch_size}", spec)
            return None

    def replay(self, spec: JobSpec, observations: Iterable[Observation]) -> dict[str, Any]:
        """A fresh state with every observation folded in, in order; unusable ones are skipped."""
        state = self.policy.new_state(spec)
        for observation in observations:
            try:
                state = self.policy.observe(spec, state, observation)  # a new state: ``state`` is kept
            except Exception:
                log.warning(
                    "skipped an unusable run of batch size %s (energy %r J, time %r s, epochs %r) "
                    "while rebuilding the %s policy state",
                    observation.batch_size,
                    observation.energy_j,
                    observation.time_s,
                    observation.epochs,
                    self.name,
                    extra={"job_id": spec.job_id},
                )
        return state

    def _failed(self, action: str, spec: JobSpec) -> None:
        log.error(
            "the %s policy could not %s for job %r; falling back (the job keeps serving)",
            self.name,
            action,
            spec.job_id,
            exc_info=True,
            extra={"job_id": spec.job_id},
        )
