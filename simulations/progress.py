"""A hand-written progress bar on stderr (no dependency), shown only for work longer than a second."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``with Progress(total, "simulating") as bar: ... bar.advance()``.

    Draws nothing during the first ``delay_s`` seconds, so short runs stay quiet, and redraws at
    most ten times a second.
    """

    def __init__(
        self, total: int, label: str = "", stream: TextIO | None = None, delay_s: float = 1.0, width: int = 30
    ) -> None:
        self.total = max(int(total), 0)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.delay_s = delay_s
        self.width = width
        self.done = 0
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items done and redraw if due."""
        self.done += n
        now = time.monotonic()
        if now - self._start >= self.delay_s and (now - self._last_draw >= 0.1 or self.done >= self.total):
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = self.done / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        elapsed = now - self._start
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(
            f"\r{self.label} [{bar}] {self.done}/{self.total} {elapsed:5.1f}s elapsed, ~{eta:4.1f}s left"
        )
        self.stream.flush()
        self._last_draw = now
        self._drawn = True

    def close(self) -> None:
        """Finish the line if anything was drawn."""
        if self._drawn:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
