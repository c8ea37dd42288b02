"""How the simulator asks for decisions: a small backend object per simulated job.

The simulation loop never calls a policy directly. It talks to a :class:`DecisionBackend`, so the
same loop can drive the policy in process (:class:`InProcessBackend`) or the real gRPC server
through the SDK (a ``--via-server`` backend), which must reproduce the same decisions: the
in-process backend draws the ``i``-th suggestion's randomness from ``decision_rng(spec.seed, i)``,
exactly as the server does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from optimizer_server.policy.base import Decision, JobSpec, Observation, Policy, SuggestContext, decision_rng
from optimizer_server.policy.registry import get_policy
from powerbandit.domain import energy_time_cost


class DecisionBackend(Protocol):
    """One simulated job's link to a policy."""

    def suggest(self, context: SuggestContext) -> Decision:
        """The configuration of the next run (the ``i``-th call uses ``decision_rng(seed, i)``)."""
        ...

    def observe(self, observation: Observation) -> None:
        """Report a finished run."""
        ...

    def cost_bound(self, batch_size: int | None = None) -> float:
        """The policy's own early-stop bound on one run's cost (``inf`` when it asks for none).

        ``batch_size`` is the run's batch size; policies may bound exploratory runs tighter.
        """
        ...

    def call_off(self, batch_size: int, context: SuggestContext, energy_j: float, time_s: float) -> str | None:
        """The policy's reason to stop the run under way now, after it spent ``energy_j`` and
        ``time_s`` (its profiling epoch, with its profile in ``context``); ``None``: go on."""
        ...

    def close(self) -> None:
        """Release whatever the backend holds."""
        ...


BackendFactory = Callable[[JobSpec], DecisionBackend]
"""Builds the backend of one simulated job from its spec (``spec.policy`` names the policy)."""


class InProcessBackend:
    """Calls a :class:`Policy` in this process and keeps its state, as the server would store it."""

    def __init__(self, spec: JobSpec, policy: Policy | None = None) -> None:
        self.spec = spec
        self.policy = policy if policy is not None else get_policy(spec.policy)
        self.state: dict[str, Any] = self.policy.new_state(spec)
        self.decisions = 0
        self._gpu_model: str | None = None

    def suggest(self, context: SuggestContext) -> Decision:
        """Ask the policy, with the generator of this decision's index."""
        rng = decision_rng(self.spec.seed, self.decisions)
        self.decisions += 1
        self._gpu_model = context.gpu_model
        return self.policy.suggest(self.spec, self.state, context, rng)

    def observe(self, observation: Observation) -> None:
        """Fold the run into the policy state."""
        self.state = self.policy.observe(self.spec, self.state, observation)

    def cost_bound(self, batch_size: int | None = None) -> float:
        """The policy's bound for a run of ``batch_size``."""
        return float(self.policy.cost_bound(self.spec, self.state, batch_size, self._gpu_model))

    def call_off(self, batch_size: int, context: SuggestContext, energy_j: float, time_s: float) -> str | None:
        """Ask the policy, with the run's cost so far (``eta`` of the job, ``MAX_POWER`` of the GPU)."""
        cost = energy_time_cost(self.spec.eta, energy_j, time_s, context.max_power_w)
        return self.policy.call_off(self.spec, self.state, context, batch_size, cost)

    def close(self) -> None:
        """Nothing to release."""


def in_process_backend(spec: JobSpec) -> DecisionBackend:
    """The default :data:`BackendFactory`: the registry's policy, in process."""
    return InProcessBackend(spec)
