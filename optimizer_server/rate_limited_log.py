"""A log line per kind of event that may repeat per request (bad bodies, database outages)."""

from __future__ import annotations

import logging
import threading
import time


class RateLimitedLog:
    """Logs the first event of a kind, then at most one line per ``interval_s`` with a count."""

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._next_s = 0.0
        self._suppressed = 0
        self._lock = threading.Lock()

    def warning(self, message: str, *args: object) -> None:
        """Log ``message % args`` unless a line was logged in the last ``interval_s``."""
        now = time.monotonic()
        with self._lock:
            if now < self._next_s:
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
            self._next_s = now + self._interval_s
        if suppressed:
            message += f" ({suppressed} more like it since the last such line)"
        self._log.warning(message, *args)
