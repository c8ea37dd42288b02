"""A hand-written progress bar on stderr (no dependency), shown only for work longer than a second.

On a terminal the bar redraws in place (``\r``); written to a file or a pipe (a CI log, ``2> log``)
it never writes ``\r``: a plain line every :data:`PLAIN_INTERVAL_S` seconds instead.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

#: Seconds between the plain progress lines written when the stream is not a terminal.
PLAIN_INTERVAL_S = 30.0


class Progress:
    """``with Progress(total, "simulating") as bar: ... bar.advance()``.

    Draws nothing during the first ``delay_s`` seconds, so short runs stay quiet, and redraws at
    most ten times a second on a terminal; elsewhere (``stream`` not a tty) it writes a plain line
    at most every ``plain_interval_s`` seconds and a last one at the end.
    """

    def __init__(
        self,
        total: int,
        label: str = "",
        stream: TextIO | None = None,
        delay_s: float = 1.0,
        width: int = 30,
        plain_interval_s: float = PLAIN_INTERVAL_S,
    ) -> None:
        self.total = max(int(total), 0)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.delay_s = delay_s
        self.width = width
        isatty = getattr(self.stream, "isatty", None)
        self.animate = bool(isatty and isatty())
        self.interval_s = 0.1 if self.animate else plain_interval_s
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
        if now - self._start < self.delay_s:
            return
        if now - self._last_draw >= self.interval_s or (self.animate and self.done >= self.total):
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = self.done / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        elapsed = now - self._start
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        if self.animate:
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(
                f"\r{self.label} [{bar}] {self.done}/{self.total} {elapsed:5.1f}s elapsed, ~{eta:4.1f}s left"
            )
        else:
            self.stream.write(
                f"{self.label}: {self.done}/{self.total} ({frac:.0%}), {elapsed:.1f}s elapsed, ~{eta:.1f}s left\n"
            )
        self.stream.flush()
        self._last_draw = now
        self._drawn = True

    def close(self) -> None:
        """Finish the line (on a terminal) or write the last plain line, if anything was drawn."""
        if self._drawn:
            self._draw(time.monotonic())
            if self.animate:
                self.stream.write("\n")
            self.stream.flush()
