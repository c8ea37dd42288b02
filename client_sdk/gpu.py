"""The SDK's one door to the hardware: the :class:`Gpu` interface.

Two implementations exist: :class:`client_sdk.nvml.NvmlGpu` (real GPUs through NVML) and
:class:`client_sdk.replay.ReplayGpu` (energy and time replayed from a trace, for dry runs, demos
and tests on machines without a GPU). Everything else in the SDK talks only to this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


class GpuUnavailableError(RuntimeError):
    """No GPU can be measured here (no NVML, no driver, no device). The message names the ways out."""


@dataclass(frozen=True)
class GpuInfo:
    """The GPUs of one run, as the optimizer needs to know them.

    Power limits are per GPU, in watts; ``power_limits_w`` are the candidate limits a profile tries
    (ascending, within ``[min_power_limit_w, max_power_limit_w]``); ``can_set_power_limit`` is False
    when the process lacks permission (the run then continues at the limit in force).
    """

    model: str
    count: int
    min_power_limit_w: float
    max_power_limit_w: float
    power_limits_w: tuple[float, ...]
    can_set_power_limit: bool

    @property
    def max_power_w(self) -> float:
        """The cost's ``MAX_POWER``: the maximum power limit summed over the run's GPUs."""
        return self.max_power_limit_w * self.count


class Gpu(ABC):
    """Measures energy and time of the job's GPUs and applies power limits.

    ``energy_j`` and ``now_s`` are monotone counters with an arbitrary origin; the SDK measures a
    window as the difference of two readings. ``advance`` tells the implementation how much training
    happened (real GPUs ignore it; the replay GPU moves its counters by the trace's numbers).
    """

    @abstractmethod
    def info(self) -> GpuInfo:
        """Model, count and power-limit range of the job's GPUs."""

    @abstractmethod
    def energy_j(self) -> float:
        """Energy counter in joules, summed over the job's GPUs."""

    @abstractmethod
    def now_s(self) -> float:
        """Clock in seconds (after synchronising the device where that matters)."""

    @abstractmethod
    def power_limit_w(self) -> float:
        """The per-GPU power limit in force now."""

    @abstractmethod
    def set_power_limit(self, power_limit_w: float) -> float:
        """Apply a per-GPU power limit and return the limit actually in force afterwards.

        Without permission this logs one warning and returns the unchanged limit: it never raises
        for a missing permission, so the run goes on and reports the truth.
        """

    @abstractmethod
    def restore_power_limit(self) -> None:
        """Put back the power limit that was in force before this object changed it."""

    def power_limit_control(self) -> str:
        """How limits are applied: ``"nvml"``, ``"agent"``, ``"none"`` or ``"simulated"`` (reported per run).

        The default derives it from :meth:`info`: ``"nvml"`` when limits can be set, else ``"none"``.
        """
        return "nvml" if self.info().can_set_power_limit else "none"

    def renew_power_limit_lease(self) -> None:  # noqa: B027 - optional hook
        """Called with every heartbeat of a run: renew a lease that keeps the limit (the node agent's)."""

    def begin_run(self, batch_size: int) -> None:  # noqa: B027 - optional hook
        """Called once when a run starts with its batch size (the replay GPU needs it)."""

    def advance(self, epochs: float) -> None:  # noqa: B027 - optional hook
        """Called as training progresses by ``epochs`` (fractions allowed)."""

    def close(self) -> None:
        """Restore the power limit and release resources."""
        self.restore_power_limit()

    def __enter__(self) -> Gpu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
