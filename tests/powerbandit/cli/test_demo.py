"""``powerbandit demo`` as a newcomer meets it: what it claims at the end, the flags it refuses, what
``--quiet`` leaves, and how Ctrl-C and SIGTERM end it.

The demo runs as a subprocess of the real CLI (its own embedded server on a temporary SQLite file) or
in-process against a real embedded server; only the GPU is replayed.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client_sdk.client import OptimizerClient
from optimizer_server.server import EmbeddedServer
from powerbandit.cli import demo
from powerbandit.cli.errors import UserError
from powerbandit.cli.main import build_parser
from powerbandit.v1 import optimizer_pb2 as pb

CLI = [sys.executable, "-m", "powerbandit"]
RUN_ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+\d+\s+\S+\s+(.+)$")
"""One line of the per-run table: recurrence, try, batch size, power limit W, ..., outcome."""


def run_demo(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "demo", *args], capture_output=True, text=True, timeout=timeout_s, check=False)


def stderr_lines_besides_warnings(err: str) -> list[str]:
    """stderr without the log lines at WARNING (the embedded server's 'authentication: OFF')."""
    return [line for line in err.splitlines() if line and " WARNING " not in line]


# ------------------------------------------------------------------------------- converged or not
def test_a_few_recurrences_are_best_so_far_not_converged() -> None:
    done = run_demo("--synthetic", "--recurrences", "3")
    assert done.returncode == 0, done.stderr
    assert "converged to" not in done.stdout
    line = next(line for line in done.stdout.splitlines() if line.startswith("not converged"))
    assert line.startswith(f"not converged after 3 recurrences (that takes {demo.CONVERGED_AFTER} in a row"), line
    match = re.search(r"best so far: batch size (\d+), power limit ([\d.]+) W, from (\d+) runs? that reached", line)
    assert match, line
    batch_size, runs = int(match.group(1)), int(match.group(3))
    rows = [RUN_ROW.match(row) for row in done.stdout.splitlines()]
    reached = [int(m.group(3)) for m in rows if m and m.group(5) == "reached target"]
    assert batch_size in reached and runs == reached.count(batch_size), (line, reached)


def test_converged_only_after_the_last_recurrences_ran_one_configuration() -> None:
    recurrences = 16  # seeds 1-10 of the synthetic job all converge by then (7 of them by 12)
    done = run_demo("--synthetic", "--recurrences", str(recurrences))
    assert done.returncode == 0, done.stderr
    match = re.search(r"^converged to: batch size (\d+), power limit ([\d.]+) W, run by each of the last (\d+)",
                      done.stdout, re.M)  # fmt: skip
    assert match, done.stdout
    assert int(match.group(3)) == demo.CONVERGED_AFTER
    per_recurrence = {}
    for row in done.stdout.splitlines():
        m = RUN_ROW.match(row)
        if m and m.group(5) == "reached target":
            per_recurrence[int(m.group(1))] = (int(m.group(3)), float(m.group(4)))
    last = [per_recurrence.get(r) for r in range(recurrences - demo.CONVERGED_AFTER + 1, recurrences + 1)]
    assert last == [(int(match.group(1)), float(match.group(2)))] * demo.CONVERGED_AFTER, (last, match.group(0))


@pytest.mark.parametrize(
    ("reached", "converged"),
    [
        ([(256, 150.0)] * 5, (256, 150.0)),
        ([(512, 175.0)] + [(256, 150.0)] * 5, (256, 150.0)),
        ([(256, 150.0)] * 4, None),  # fewer recurrences than the rule needs
        ([(256, 150.0)] * 4 + [(256, 175.0)], None),  # same batch size, another power limit
        ([(256, 150.0)] * 2 + [None] + [(256, 150.0)] * 2, None),  # one recurrence never reached the target
        ([(256, 150.0)] * 4 + [(128, 100.0)], None),
    ],
)
def test_the_convergence_rule(reached: list[tuple[int, float] | None], converged: tuple[int, float] | None) -> None:
    progress = demo.Progress(recurrences=len(reached), reached=reached)
    assert progress.converged_configuration() == converged


# ------------------------------------------------------------------------- --synthetic and traces
@pytest.mark.parametrize(
    "flags", [["--workload", "imagenet"], ["--gpu", "a40"], ["--trace-dir", "/nowhere"], ["--gpu", "v100"]]
)
def test_synthetic_refuses_the_flags_that_choose_a_trace_job(flags: list[str]) -> None:
    args = build_parser().parse_args(["demo", "--synthetic", *flags])
    with pytest.raises(UserError) as refused:
        demo.run(args)
    assert refused.value.exit_code == 2
    assert flags[0] in str(refused.value) and "--synthetic" in str(refused.value)


def test_synthetic_with_workload_is_one_usage_line() -> None:
    done = run_demo("--synthetic", "--workload", "imagenet", "--gpu", "a40")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: --synthetic (a built-in made-up job) cannot be combined with --workload and --gpu, which choose "
        "a job of the published traces: drop one or the other"
    ]


# ----------------------------------------------------------------------------------------- --quiet
def test_quiet_prints_only_the_result() -> None:
    quiet = run_demo("--synthetic", "--recurrences", "6", "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    lines = quiet.stdout.splitlines()
    assert len(lines) == 2, quiet.stdout
    assert re.match(r"(converged to|not converged after 6 recurrences)", lines[0]), lines[0]
    assert re.match(r"job demo/synthetic@synthetic/\S+: energy used .+; saved vs default configuration: ", lines[1])
    assert stderr_lines_besides_warnings(quiet.stderr) == [], quiet.stderr
    assert "authentication: OFF" in quiet.stderr  # warnings still go to stderr

    loud = run_demo("--synthetic", "--recurrences", "6")
    assert loud.returncode == 0, loud.stderr
    for shown in ("job data: a built-in SYNTHETIC job", "started an embedded server at", " rec try  batch",
                  "runs in"):  # fmt: skip
        assert shown in loud.stdout and shown not in quiet.stdout, shown
    assert loud.stdout.splitlines()[-3] == lines[0]  # the same result line, quiet or not


def test_help_says_what_quiet_synthetic_and_converged_mean() -> None:
    (demo_parser,) = [
        action.choices["demo"] for action in build_parser()._actions if getattr(action, "choices", None)
        and isinstance(action.choices, dict) and "demo" in action.choices
    ]  # fmt: skip
    text = " ".join(demo_parser.format_help().split())
    assert "print only the result" in text and "warnings and errors still go to stderr" in text
    assert "refuses --trace-dir, --workload and --gpu" in text
    assert f"'converged to' only when the last {demo.CONVERGED_AFTER} recurrences" in text
    assert "130 for Ctrl-C, 143 for SIGTERM" in text


# ---------------------------------------------------------------------------------- Ctrl-C, SIGTERM
def read_until(proc: subprocess.Popen[str], pattern: re.Pattern[str], timeout_s: float = 60) -> list[str]:
    """stdout lines of ``proc`` up to the first that matches ``pattern``; fails after ``timeout_s``."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if not ready:
            continue
        line = proc.stdout.readline()
        assert line, f"the demo ended early: {lines}"
        lines.append(line.rstrip("\n"))
        if pattern.search(line):
            return lines
    raise AssertionError(f"no line matching {pattern.pattern} within {timeout_s} s: {lines}")


@pytest.mark.parametrize(("signum", "cause", "exit_code"), [(signal.SIGTERM, "SIGTERM", 143), (signal.SIGINT, "Ctrl-C", 130)])
def test_a_signal_ends_the_demo_cleanly_and_removes_its_directory(signum: int, cause: str, exit_code: int) -> None:
    proc = subprocess.Popen(
        [*CLI, "demo", "--synthetic", "--recurrences", "100000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        started = read_until(proc, re.compile(r"^started an embedded server at \S+ on (/\S+)/demo\.db$"))[-1]
        match = re.search(r" on (/\S+)/demo\.db$", started)
        assert match, started
        directory = Path(match.group(1))
        assert directory.is_dir()
        read_until(proc, re.compile(r"^\s+3\s+\d+\s+\d+"))  # a few recurrences done
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == exit_code, err
    assert "Traceback" not in err, err
    assert not directory.exists(), f"{directory} is left behind"
    lines = stderr_lines_besides_warnings(err)
    assert len(lines) == 2, err
    said = re.fullmatch(rf"demo interrupted \({cause}\) in recurrence (\d+) of 100000 after (\d+) finished runs?"
                        r"(; the run in progress was reported failed)?", lines[0])  # fmt: skip
    assert said, lines[0]
    assert int(said.group(1)) >= 3 and int(said.group(2)) >= 3, lines[0]
    assert lines[1] == f"the embedded server was stopped and its temporary directory {directory} removed"
    assert "converged" not in out  # no summary after an interruption


def test_ctrl_c_against_a_server_reports_the_run_in_flight_failed(tmp_path: Path) -> None:
    with EmbeddedServer(f"sqlite:///{tmp_path / 'served.db'}") as server:
        proc = subprocess.Popen(
            [*CLI, "demo", "--synthetic", "--recurrences", "100000", "--server", server.address],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            read_until(proc, re.compile(r"^\s+3\s+\d+\s+\d+"))
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 130, err
        lines = stderr_lines_besides_warnings(err)
        assert len(lines) == 2 and lines[0].startswith("demo interrupted (Ctrl-C) in recurrence "), err
        said = re.fullmatch(rf"job (demo/synthetic@synthetic/\S+) keeps its finished runs on the server at "
                            rf"{re.escape(server.address)}", lines[1])  # fmt: skip
        assert said, lines[1]
        with OptimizerClient(server.address) as client:
            job = client.get_job(said.group(1))
        finished = int(re.search(r"after (\d+) finished run", lines[0]).group(1))  # type: ignore[union-attr]
        assert job.completed_runs == finished
        failed = [r for r in job.runs if r.state == pb.RUN_STATE_FAILED]
        if "the run in progress was reported failed" in lines[0]:
            assert [r.reason for r in failed] == ["DemoInterrupted: Ctrl-C"]
        else:  # the signal came between two runs
            assert failed == []


def test_in_process_the_signal_handlers_are_put_back(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with EmbeddedServer(f"sqlite:///{tmp_path / 'demo.db'}") as server:
        argv = ["demo", "--synthetic", "--recurrences", "2", "--quiet", "--server", server.address]
        assert demo.run(build_parser().parse_args(argv)) == 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
