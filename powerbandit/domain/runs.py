"""What a policy decides for a run, what it learns from a finished one, what it believes about a batch
size, and runs summed in groups."""

from __future__ import annotations

from dataclasses import dataclass

from powerbandit.domain.enums import StopReason


@dataclass(frozen=True)
class Decision:
    """A policy's answer to "which configuration should this run use?".

    ``power_limit_w`` is ``None`` when the power limit must first be profiled: the run then tries
    each of ``profile_power_limits_w`` (not empty) in that order and keeps the one with the lowest
    epoch cost. With ``profile_stop_ratio`` above 0 it stops early, after the first limit that costs
    more than that multiple of the cheapest measured before it (:func:`~.profiles.stops_profiling`);
    0 measures every listed limit.
    ``phase`` is a :class:`~powerbandit.domain.enums.Phase` value (``explore``, ``exploit``,
    ``fallback``); ``explanation`` says why in words.
    """

    batch_size: int
    power_limit_w: float | None
    profile_power_limits_w: tuple[float, ...]
    phase: str
    explanation: str
    profile_stop_ratio: float = 0.0


@dataclass(frozen=True)
class Observation:
    """One finished run, as the policy sees it.

    ``epochs`` is how many epochs the run trained; ``reached_target`` whether it met the target.
    ``cost`` is ``eta * energy_j + (1 - eta) * max_power_w * time_s`` for that run
    (:func:`~powerbandit.domain.cost.energy_time_cost`). ``epoch_cost`` is the cost of one epoch at
    the power limit the run settled on, when known. ``called_off``: the policy stopped this
    exploratory run once its epoch cost was measured (:attr:`StopReason.EXPLORATION_CALLED_OFF`), so
    its epochs say nothing about epochs-to-target.
    """

    batch_size: int
    gpu_model: str
    power_limit_w: float
    epochs: float
    energy_j: float
    time_s: float
    cost: float
    reached_target: bool
    max_power_w: float
    epoch_cost: float | None = None
    called_off: bool = False


_CALLED_OFF_PREFIX = f"{StopReason.EXPLORATION_CALLED_OFF}: "


def called_off_reason(why: str) -> str:
    """The reason a run keeps when the policy called it off (``why``: the policy's explanation);
    :func:`called_off_why` reads it back, for the policy's :class:`Observation` and for people."""
    return _CALLED_OFF_PREFIX + why


def called_off_why(reason: str) -> str | None:
    """The policy's explanation when a run's ``reason`` records a call-off, else ``None``.

    >>> called_off_why(called_off_reason("too dear"))
    'too dear'
    """
    return reason.removeprefix(_CALLED_OFF_PREFIX) if reason.startswith(_CALLED_OFF_PREFIX) else None


@dataclass(frozen=True)
class RunGroup:
    """A job's runs with the same GPU model, batch size, power limit, state and outcome, summed.

    ``state`` is a :class:`RunState` value. ``in_window``: finished at or after the window start
    asked for. ``max_power_limit_w`` is per GPU (the largest ``max_power_w / gpu_count`` among them).
    """

    gpu_model: str
    batch_size: int
    power_limit_w: float
    state: str
    reached_target: bool
    in_window: bool
    runs: int
    energy_j: float
    time_s: float
    epochs: float
    max_power_limit_w: float
    last_created_unix_s: float


@dataclass(frozen=True)
class ArmSummary:
    """What a policy believes about one batch size (for people and for ``GetJob``)."""

    batch_size: int
    status: str  # "unexplored", "active", "pruned", "called off" (its only runs were called off)
    observations: int
    successes: int
    cost_mean: float  # posterior mean of the cost of one run; NaN when unknown
    cost_low: float  # lower end of the 90 % credible interval; NaN when unknown
    cost_high: float  # upper end of the 90 % credible interval; NaN when unknown
    epochs_mean: float  # mean epochs to target; NaN when unknown
