"""The named states of the domain: run states, decision phases, stop reasons, power-limit control
and metric direction.

Each is a :class:`~enum.StrEnum` whose values are the strings the store keeps and the policies
write, so a member equals its stored string (``RunState.COMPLETED == "completed"``) and records
read from an older database need no conversion. The protobuf numbers of each member are
:mod:`powerbandit.proto_conversion`'s business, not the domain's.
"""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    """Where a run is in its life: suggested and training, or finished one of three ways."""

    IN_FLIGHT = "in_flight"
    COMPLETED = "completed"  # trained to its end (reached the target, stopped early or ran out of epochs)
    FAILED = "failed"  # crashed: not evidence against its configuration
    EXPIRED = "expired"  # its lease ran out without a report

    @property
    def finished(self) -> bool:
        """True for every state but in flight."""
        return self is not RunState.IN_FLIGHT


class Phase(StrEnum):
    """Why a policy chose a configuration ("" when not known, e.g. a run of an older server)."""

    UNSPECIFIED = ""
    EXPLORE = "explore"
    EXPLOIT = "exploit"
    FALLBACK = "fallback"


class StopReason(StrEnum):
    """Why the server tells a run to stop ("" while it may go on)."""

    NONE = ""
    TARGET_REACHED = "target_reached"
    COST_BOUND = "cost_bound"
    MAX_EPOCHS = "max_epochs"
    EXPLORATION_CALLED_OFF = "exploration_called_off"
    """An exploratory run whose measured epoch cost shows it cannot pay off (see the policy's
    ``call_off``); its run is not evidence about epochs-to-target."""


class PowerLimitControl(StrEnum):
    """How a run's power limit was applied, as the SDK reports it ("" when it could not say)."""

    UNSPECIFIED = ""
    NVML = "nvml"  # set directly through NVML
    AGENT = "agent"  # set by the node agent
    NONE = "none"  # not in force (no permission, no GPU control)
    SIMULATED = "simulated"  # a replay or simulated GPU


class MetricDirection(StrEnum):
    """Whether a larger or a smaller metric is better (a job spec keeps it as ``higher_is_better``)."""

    HIGHER_IS_BETTER = "higher_is_better"
    LOWER_IS_BETTER = "lower_is_better"

    @classmethod
    def of(cls, higher_is_better: bool) -> MetricDirection:
        """The direction of a spec's ``higher_is_better`` flag."""
        return cls.HIGHER_IS_BETTER if higher_is_better else cls.LOWER_IS_BETTER
