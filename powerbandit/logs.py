"""Logging set-up: one line per event, as text or JSON, with job and run ids when present."""

from __future__ import annotations

import json
import logging
import time

_EXTRA_KEYS = ("job_id", "run_id", "batch_size", "phase", "cost", "reached_target", "reason", "policy")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any known extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _EXTRA_KEYS:
            if hasattr(record, key):
                event[key] = getattr(record, key)
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        # the server logs a line per run: format the date once per second, not once per line
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, super().formatTime(record, datefmt)[:-4]
        return f"{self._stamp},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{k}={record.__dict__[k]}" for k in _EXTRA_KEYS if k in record.__dict__)
        return f"{line} {extras}" if extras else line


def configure_logging(level: str = "INFO", fmt: str = "text", *, quiet_default: bool = False) -> None:
    """Log to stderr. ``quiet_default`` raises INFO to WARNING for commands that print their own output."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Neither format shows source lines, threads or processes: skip collecting them per record.
    logging._srcfile = None  # the documented switch (see the logging HOWTO, "Optimization")
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    numeric = getattr(logging, level.upper(), logging.INFO)
    if quiet_default and numeric == logging.INFO:
        numeric = logging.WARNING
    root.setLevel(numeric)
