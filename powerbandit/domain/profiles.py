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
