"""Energy from power readings: a background thread integrating power with the trapezoid rule.

Used by :class:`client_sdk.nvml.NvmlGpu` when the GPU has no total-energy counter (before Volta),
or when the caller asks for polling because its windows are shorter than the counter's ~100 ms
update period. Hardware-free: it only needs a ``read_power_w`` callable, so it is tested alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

_LOG = logging.getLogger("powerbandit.sdk.nvml")


class PowerPoller:
    """Integrates ``read_power_w()`` over time into a monotone energy counter (joules).

    A daemon thread samples every ``interval_s``; :meth:`energy_j` also takes a sample at the moment
    it is called, so a reading is exact at its call time rather than up to one interval old. The
    counter starts at 0 at :meth:`start` (or at the first :meth:`energy_j`, which starts the thread).

    A failing read is logged once and the previous power is held, so a transient NVML error neither
    stops the thread nor drops the energy of that interval. If the very first read fails, the
    error propagates from :meth:`start`.
    """

    def __init__(
        self,
        read_power_w: Callable[[], float],
        interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        thread_name: str = "powerbandit-power-poller",
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self._read_power_w = read_power_w
        self._interval_s = float(interval_s)
        self._clock = clock
        self._thread_name = thread_name
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._energy_j = 0.0
        self._last_t: float | None = None
        self._last_p: float | None = None
        self._read_failed_logged = False
        self.samples = 0
        """Number of samples taken so far (for tests and diagnostics)."""

    @property
    def interval_s(self) -> float:
        """Seconds between background samples."""
        return self._interval_s

    @property
    def running(self) -> bool:
        """Whether the background thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Take the first sample and start the background thread (no-op when already running)."""
        with self._lock:
            if self._thread is not None:
                return
            self._sample_locked()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the background thread (idempotent). The energy counter keeps its value."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def energy_j(self) -> float:
        """Energy in joules integrated since :meth:`start`, including the interval up to now."""
        if self._thread is None:
            self.start()
        with self._lock:
            self._sample_locked()
            return self._energy_j

    def sample(self) -> None:
        """Take one sample now (the thread calls this; tests may too)."""
        with self._lock:
            self._sample_locked()

    def _sample_locked(self) -> None:
        try:
            p = float(self._read_power_w())
        except Exception:
            if self._last_p is None:
                raise
            if not self._read_failed_logged:
                self._read_failed_logged = True
                _LOG.warning(
                    "Reading GPU power failed; holding the last reading (%.1f W) for the energy integral. "
                    "Further failures are not logged.",
                    self._last_p,
                    exc_info=True,
                )
            p = self._last_p
        t = self._clock()
        if self._last_t is not None and self._last_p is not None:
            dt = t - self._last_t
            if dt > 0:
                self._energy_j += 0.5 * (p + self._last_p) * dt
        self._last_t, self._last_p = t, p
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.sample()
            except Exception:  # pragma: no cover - _sample_locked already holds the last value
                _LOG.exception("power poller sample failed")
