"""Power profiles: how one batch size behaves at each power limit on one GPU model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProfilePoint:
    """Measured behaviour of one batch size at one power limit on one GPU model.

    ``average_power_w`` is summed over the run's GPUs; ``time_per_epoch_s`` is wall time.
    """

    power_limit_w: float
    average_power_w: float
    time_per_epoch_s: float


PowerProfile = Mapping[float, ProfilePoint]
"""Power limit (W, per GPU) -> measurement, for one (GPU model, batch size)."""


def stops_profiling(cost: float, cheapest: float, stop_ratio: float) -> bool:
    """Whether a profile that walks its limits in order stops after one that cost ``cost`` (per epoch
    or per step) when the cheapest measured so far, that one included, cost ``cheapest``.

    It stops once a limit costs more than ``stop_ratio`` times the cheapest (never with a ratio of
    0): walking down from the highest limit, the cost of a run falls with the limit to one minimum and
    then climbs as the GPU slows, so the limits after one that far above the minimum cost more still.
    The SDK applies it after each measured window, the simulator to a trace's profile.
    """
    return stop_ratio > 0.0 and cost > stop_ratio * cheapest


@dataclass
class ProfileRecord:
    """A measured power profile of one batch size on one GPU model, as stored with a job.

    ``points``: power limit (W, per GPU) -> measurement, in the order they were measured;
    ``run_id``: the run that measured it ("" when not known).
    """

    gpu_model: str
    batch_size: int
    points: dict[float, ProfilePoint] = field(default_factory=dict)
    run_id: str = ""
