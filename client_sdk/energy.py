"""Energy windows: what a stretch of training cost, without the optimizer.

For users who only want to know what a run (or an epoch, or an evaluation) cost. Windows read the
same :class:`~client_sdk.gpu.Gpu` counters the optimizer's runs use (NVML's energy counter summed
over the job's GPUs, the replay GPU, a :class:`~client_sdk.torch_helpers.DistributedGpu` summing
all DDP ranks), may nest and overlap, and cost two counter readings each::

    meter = EnergyMeter(NvmlGpu())
    with meter.window("run"):
        for epoch in range(epochs):
            with meter.window(f"epoch-{epoch}") as w:
                train_one_epoch()
            print(w.name, w.energy_j, w.time_s, w.average_power_w)
    print(meter.summary())

or explicitly: ``w = meter.begin("eval")`` ... ``meter.end(w)`` (or ``meter.end("eval")``).
No server is involved and the power limit is not touched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from client_sdk.gpu import Gpu

__all__ = ["EnergyMeter", "EnergyWindow"]


@dataclass
class EnergyWindow:
    """One measured stretch: ``energy_j`` (all the meter's GPUs) and ``time_s``, final once ended.

    While open, the properties read the counters now (the window so far). ``parent``: the name of
    the window that was innermost open when this one began ("" at the top level).
    """

    name: str
    parent: str
    depth: int
    _meter: EnergyMeter = field(repr=False)
    _start: tuple[float, float] = field(repr=False)
    _end: tuple[float, float] | None = field(default=None, repr=False)

    @property
    def open(self) -> bool:
        """True until the window is ended."""
        return self._end is None

    def _now(self) -> tuple[float, float]:
        return self._end if self._end is not None else self._meter.read()

    @property
    def energy_j(self) -> float:
        """Energy in joules over the window (so far, while open)."""
        return self._now()[0] - self._start[0]

    @property
    def time_s(self) -> float:
        """Seconds over the window (so far, while open)."""
        return self._now()[1] - self._start[1]

    @property
    def average_power_w(self) -> float:
        """Average power in watts over the window (0 for an empty window)."""
        energy, elapsed = self._now()
        elapsed -= self._start[1]
        return (energy - self._start[0]) / elapsed if elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, float | str | int]:
        """The window's numbers, e.g. for a tracker or a JSON file."""
        return {
            "name": self.name,
            "parent": self.parent,
            "depth": self.depth,
            "energy_j": self.energy_j,
            "time_s": self.time_s,
            "average_power_w": self.average_power_w,
        }


class EnergyMeter:
    """Measures named, nestable energy windows over the GPUs of ``gpu``; see the module docstring."""

    def __init__(self, gpu: Gpu) -> None:
        self.gpu = gpu
        self._open: list[EnergyWindow] = []
        self.windows: list[EnergyWindow] = []
        """Ended windows, in the order they ended."""

    def read(self) -> tuple[float, float]:
        """``(energy J, time s)`` counters now (arbitrary origin)."""
        energy, now = self.gpu.energy_j(), self.gpu.now_s()
        if not (math.isfinite(energy) and math.isfinite(now)):
            raise ValueError(f"the GPU returned a non-finite reading (energy {energy} J, time {now} s)")
        return energy, now

    @property
    def open_windows(self) -> tuple[EnergyWindow, ...]:
        """Windows begun and not yet ended, outermost first."""
        return tuple(self._open)

    def begin(self, name: str) -> EnergyWindow:
        """Open a window named ``name`` (unique among the open ones) and return it."""
        if not name:
            raise ValueError("an energy window needs a name")
        if any(w.name == name for w in self._open):
            raise ValueError(f"an energy window named {name!r} is already open; end it first or use another name")
        parent = self._open[-1].name if self._open else ""
        window = EnergyWindow(name, parent, len(self._open), self, self.read())
        self._open.append(window)
        return window

    def end(self, window: EnergyWindow | str) -> EnergyWindow:
        """End an open window (the object or its name) and return it with its final numbers."""
        name = window if isinstance(window, str) else window.name
        for index in range(len(self._open) - 1, -1, -1):
            candidate = self._open[index]
            if candidate.name == name and (isinstance(window, str) or candidate is window):
                candidate._end = self.read()
                del self._open[index]
                self.windows.append(candidate)
                return candidate
        open_names = ", ".join(w.name for w in self._open) or "none"
        raise ValueError(f"no open energy window named {name!r} (open: {open_names})")

    @contextmanager
    def window(self, name: str) -> Iterator[EnergyWindow]:
        """``with meter.window(name) as w:`` measures the block (also when it raises)."""
        opened = self.begin(name)
        try:
            yield opened
        finally:
            self.end(opened)

    def summary(self) -> list[dict[str, float | str | int]]:
        """Every ended window as a dict (see :meth:`EnergyWindow.as_dict`), in the order they ended."""
        return [w.as_dict() for w in self.windows]
