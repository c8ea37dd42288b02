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
    """``time level logger: message key=value ...`` (time as ``2026-11-25 14:29:18,749``, local)."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        # The server logs a line per run: build it directly, and format the date once a second.
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        line = f"{self._stamp},{int(record.msecs):03d} {record.levelname} {record.name}: {record.getMessage()}"
        fields = record.__dict__
        extras = " ".join(f"{k}={fields[k]}" for k in _EXTRA_KEYS if k in fields)
        if extras:
            line = f"{line} {extras}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        elif record.exc_text:
            line = f"{line}\n{record.exc_text}"
        return line


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
