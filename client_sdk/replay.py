"""A :class:`Gpu` that replays measured numbers instead of touching hardware (dry runs).

Give it, per (batch size, power limit), the average power and the time of one epoch (for example
from the published traces); as the training loop reports progress through :meth:`ReplayGpu.advance`,
its energy counter and clock move by exactly what the trace says that much training costs at the
power limit in force. The whole SDK loop, power-limit profiling included, then runs on a machine
without a GPU, and tests get deterministic numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from client_sdk.gpu import Gpu, GpuInfo

log = logging.getLogger("powerbandit.sdk.replay")


class ReplayGpu(Gpu):
    """Energy and time from a table ``{batch_size: {power_limit_w: (average_power_w, time_per_epoch_s)}}``.

    ``average_power_w`` is summed over ``count`` GPUs. The power limits of the table are the
    candidate limits; the initial limit is the highest. ``can_set_power_limit=False`` mimics a
    process without permission: limits then stay at the maximum, as on a real GPU.
    """

    def __init__(
        self,
        table: Mapping[int, Mapping[float, tuple[float, float]]],
        *,
        model: str = "Replay GPU",
        count: int = 1,
        can_set_power_limit: bool = True,
    ) -> None:
        if not table:
            raise ValueError("a replay GPU needs at least one batch size in its table")
        self._table = {int(b): {float(p): v for p, v in row.items()} for b, row in table.items()}
        limits = sorted({p for row in self._table.values() for p in row})
        self._info = GpuInfo(model, count, limits[0], limits[-1], tuple(limits), can_set_power_limit)
        self._limit = limits[-1]
        self._batch_size: int | None = None
        self._energy_j = 0.0
        self._clock_s = 0.0
        self._warned = False

    def info(self) -> GpuInfo:
        return self._info

    def energy_j(self) -> float:
        return self._energy_j

    def now_s(self) -> float:
        return self._clock_s

    def power_limit_w(self) -> float:
        return self._limit

    def set_power_limit(self, power_limit_w: float) -> float:
        low, high = self._info.min_power_limit_w, self._info.max_power_limit_w
        if not low <= power_limit_w <= high:
            raise ValueError(
                f"power limit {power_limit_w:g} W is outside the allowed range {low:g}-{high:g} W"
            )
        if not self._info.can_set_power_limit:
            if not self._warned:
                log.warning(
                    "no permission to set GPU power limits (replayed); continuing at %g W", self._limit
                )
                self._warned = True
            return self._limit
        # A real GPU takes any limit in range; the trace knows only its measured levels, so the
        # replay snaps to the nearest measured one (and reports that as the limit in force).
        self._limit = min(self._info.power_limits_w, key=lambda p: abs(p - power_limit_w))
        return self._limit

    def restore_power_limit(self) -> None:
        self._limit = self._info.max_power_limit_w

    def power_limit_control(self) -> str:
        return "simulated" if self._info.can_set_power_limit else "none"

    def begin_run(self, batch_size: int) -> None:
        if batch_size not in self._table:
            raise ValueError(f"the replay table has no batch size {batch_size}; it has {sorted(self._table)}")
        self._batch_size = batch_size

    def advance(self, epochs: float) -> None:
        if self._batch_size is None:
            raise RuntimeError("advance() before begin_run(): the replay GPU needs the run's batch size")
        row = self._table[self._batch_size]
        power_w, epoch_s = row.get(self._limit) or row[min(row, key=lambda p: abs(p - self._limit))]
        self._clock_s += epochs * epoch_s
        self._energy_j += epochs * epoch_s * power_w
