"""The ``powerbandit`` command as a user runs it: help, demo, serve with graceful shutdown, jobs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client_sdk.client import OptimizerClient
from tests.helpers import TRACE_DIR, small_job

CLI = [sys.executable, "-m", "powerbandit"]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize("command", [[], ["serve"], ["demo"], ["jobs"], ["db"], ["simulate"]])
def test_help(command: list[str]) -> None:
    done = run_cli(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: powerbandit" in done.stdout


def test_demo_on_the_synthetic_job_converges() -> None:
    done = run_cli("demo", "--synthetic", "--recurrences", "16")  # seeds 1-10 all converge by then
    assert done.returncode == 0, done.stderr
    assert "SYNTHETIC" in done.stdout
    assert re.search(r"converged to: batch size \d+, power limit [\d.]+ W", done.stdout)
    assert "saved" in done.stdout
    assert len(re.findall(r"^\s+\d+\s+\d+\s+\d+", done.stdout, re.M)) >= 16  # one line per run


@pytest.mark.traces
def test_demo_on_the_published_traces() -> None:
    done = run_cli("demo", "--trace-dir", str(TRACE_DIR), "--workload", "squad", "--gpu", "a40", "--recurrences", "8")
    assert done.returncode == 0, done.stderr
    assert "measured traces" in done.stdout and "squad on a40" in done.stdout


def test_serve_jobs_and_graceful_sigterm(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'served.db'}"
    proc = subprocess.Popen(
        [*CLI, "serve", "--db", db, "--listen", "127.0.0.1:0", "--grace-s", "2"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "POWERBANDIT_LOG_FORMAT": "text"},
    )
    try:
        address = None
        deadline = time.monotonic() + 30
        assert proc.stderr is not None
        while time.monotonic() < deadline and address is None:
            line = proc.stderr.readline()
            match = re.search(r"serving on (127\.0\.0\.1:\d+)", line)
            address = match.group(1) if match else None
        assert address, "the server did not say where it listens"
        with OptimizerClient(address) as client:
            client.register_job(small_job("cli/job"))
        listed = run_cli("jobs", "--server", address, "list")
        assert listed.returncode == 0 and "cli/job" in listed.stdout
        shown = run_cli("jobs", "--server", address, "show", "cli/job")
        assert shown.returncode == 0 and "batch" in shown.stdout and "next run" in shown.stdout
        missing = run_cli("jobs", "--server", address, "show", "nope")
        assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        rest = proc.stderr.read()
        assert "shutdown requested" in rest and "server stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    down = run_cli("jobs", "--server", address, "list", timeout=60)
    assert down.returncode == 1 and address in down.stderr


def test_db_upgrade(tmp_path: Path) -> None:
    from optimizer_server.store.open import open_store

    url = f"sqlite:///{tmp_path / 'x.db'}"
    open_store(url).close()  # the database a server created
    done = run_cli("db", "upgrade", "--db", url)
    assert done.returncode == 0 and "up to date" in done.stdout


def test_json_logs_carry_job_and_run_ids(capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import logging

    from powerbandit.cli.logs import configure_logging

    configure_logging("INFO", "json")
    logging.getLogger("powerbandit.server").info("run completed", extra={"job_id": "j/1", "run_id": "r1", "cost": 2.5})
    line = capsys.readouterr().err.strip().splitlines()[-1]
    event = json.loads(line)
    assert event["message"] == "run completed" and event["job_id"] == "j/1" and event["run_id"] == "r1"
    assert event["level"] == "INFO" and event["logger"] == "powerbandit.server" and event["time"].endswith("Z")
    logging.getLogger().handlers.clear()


def test_text_logs_are_one_line_per_event_with_ids(capsys: pytest.CaptureFixture[str]) -> None:
    import logging
    import re

    from powerbandit.cli.logs import configure_logging

    configure_logging("INFO", "text")
    log = logging.getLogger("powerbandit.server")
    log.info("run suggested", extra={"job_id": "j/1", "run_id": "r1", "batch_size": 64, "phase": "explore"})
    log.info("plain %s", "message")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    logging.getLogger().handlers.clear()
    lines = capsys.readouterr().err.splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(
        stamp + r" INFO powerbandit.server: run suggested job_id=j/1 run_id=r1 batch_size=64 phase=explore", lines[0]
    ), lines[0]
    assert re.fullmatch(stamp + r" INFO powerbandit.server: plain message", lines[1]), lines[1]
    assert re.fullmatch(stamp + r" ERROR powerbandit.server: failed", lines[2]) and "ValueError: boom" in lines[-1]


def test_the_agent_command_loads_neither_numpy_nor_the_simulator() -> None:
    """The node agent runs on every GPU node: its process builds only its own parser."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom powerbandit.cli import main as cli\n"
        "try:\n    cli.main(['--log-level', 'INFO', 'agent', 'status', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('numpy', 'simulations', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "powerbandit agent status" in done.stdout
    assert done.stdout.strip().endswith("[]"), done.stdout
