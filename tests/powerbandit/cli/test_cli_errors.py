"""Every ordinary mistake gets one clear line and a non-zero exit, never a traceback.

Commands run as users run them: ``powerbandit.cli.main`` in-process (stderr captured) or as a
subprocess where a terminal, a pipe or a second process matters, against real servers on loopback
ports, real SQLite files and real trace files.
"""

from __future__ import annotations

import io
import logging
import os
import pty
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client_sdk.client import OptimizerClient
from optimizer_server.server import EmbeddedServer
from optimizer_server.store.open import open_store
from powerbandit.cli.errors import EXIT_BROKEN_PIPE
from powerbandit.cli.main import build_parser, main
from simulations.progress import Progress
from simulations.traces import packaged_trace_dir
from tests.helpers import all_parsers, small_job

CLI = [sys.executable, "-m", "powerbandit"]


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """``main`` configures the root logger; put it back after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``powerbandit ARGV`` in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    out, err = capsys.readouterr()
    code = done.value.code
    return (code if isinstance(code, int) else 1), out, err


def assert_one_error_line(code: int, err: str, *needles: str, exit_code: int = 1) -> None:
    """Exit ``exit_code``, no traceback, and one ``error:`` line holding every needle."""
    assert code == exit_code, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def garbage_traces(tmp_path: Path) -> Path:
    """A trace directory whose summary_train.csv is not a trace file."""
    directory = tmp_path / "garbage"
    directory.mkdir()
    (directory / "summary_train.csv").write_text("name,value\nfoo,1\n")
    return directory


# ------------------------------------------------------------------------------------ item 10
def test_serve_on_a_file_that_is_not_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notadb = tmp_path / "notadb.txt"
    notadb.write_text("hello, I am a text file\n" * 100)
    code, _, err = run_main(["serve", "--db", f"sqlite:///{notadb}", "--listen", "127.0.0.1:0"], capsys)
    assert_one_error_line(code, err, f"sqlite:///{notadb}", "not a database")
    assert "serving on" not in err


def test_a_bad_environment_setting_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("POWERBANDIT_LEASE_S", "five minutes")
    code, _, err = run_main(["serve", "--db", "sqlite:///unused.db"], capsys)
    assert_one_error_line(code, err, "--lease-s", "'five minutes' is not a number", exit_code=2)
    code, out, _ = run_main(["db", "--help"], capsys)  # other commands are not affected
    assert code == 0 and "upgrade" in out


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--metrics-port", "99999"), ("--lease-s", "0"), ("--grace-s", "-1"), ("--max-runs-in-flight", "0")],
)
def test_serve_bad_numbers(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["serve", "--db", "sqlite:///unused.db", flag, value], capsys)
    assert_one_error_line(code, err, flag, value, exit_code=2)
    assert not Path("unused.db").exists()


def test_demo_eta_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["demo", "--synthetic", "--eta", "1.5"], capsys)
    assert_one_error_line(code, err, "--eta", "1.5 is outside [0, 1]", exit_code=2)


@pytest.mark.parametrize(("flag", "value"), [("--gpu", "h100"), ("--policy", "fastest"), ("--recurrences", "0")])
def test_demo_bad_choices(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["demo", "--synthetic", flag, value], capsys)
    assert_one_error_line(code, err, flag, value, exit_code=2)


def test_demo_with_no_server_there(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{closed_port()}"
    code, _, err = run_main(["demo", "--synthetic", "--recurrences", "1", "--server", address], capsys)
    assert_one_error_line(code, err, "UNAVAILABLE", f"cannot reach the powerbandit server at {address}")


@pytest.mark.parametrize("eta", ["2", "-1", "nan", "x"])
def test_simulate_eta_out_of_range(eta: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["simulate", "--eta", eta, "--workload", "squad", "--gpu", "a40"], capsys)
    assert_one_error_line(code, err, "--eta", exit_code=2)


def test_simulate_missing_trace_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["simulate", "--trace-dir", str(tmp_path / "nowhere")], capsys)
    assert_one_error_line(code, err, "no summary_train.csv", str(tmp_path / "nowhere"), exit_code=2)


def test_simulate_unreadable_trace_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "summary_train.csv").mkdir()  # exists, cannot be read as a file (even by root)
    code, _, err = run_main(["simulate", "--trace-dir", str(tmp_path)], capsys)
    assert_one_error_line(code, err, "cannot read trace file", "summary_train.csv", exit_code=2)


def test_simulate_garbage_trace_csv(garbage_traces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["simulate", "--trace-dir", str(garbage_traces)], capsys)
    assert_one_error_line(code, err, "is not a trace file", "no column dataset", exit_code=2)


def test_simulate_bad_value_in_a_trace_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(packaged_trace_dir() / "summary_train.csv", tmp_path / "summary_train.csv")
    rows = (packaged_trace_dir() / "summary_power_a40.csv").read_text().splitlines()
    header = rows[0].split(",")
    broken = rows[1].split(",")
    broken[header.index("average_power")] = "lots"
    (tmp_path / "summary_power_a40.csv").write_text("\n".join([rows[0], ",".join(broken), *rows[2:]]) + "\n")
    code, _, err = run_main(["simulate", "--trace-dir", str(tmp_path), "--gpu", "a40"], capsys)
    assert_one_error_line(code, err, "summary_power_a40.csv, line 2", "lots", exit_code=2)


def test_demo_garbage_trace_csv(garbage_traces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["demo", "--trace-dir", str(garbage_traces)], capsys)
    assert_one_error_line(code, err, "is not a trace file")


def test_jobs_list_with_no_server_there(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{closed_port()}"
    code, _, err = run_main(["jobs", "--server", address, "list"], capsys)
    assert_one_error_line(code, err, "UNAVAILABLE", address)


def test_python_m_simulations_answers_with_one_line(garbage_traces: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "simulations", "--trace-dir", str(garbage_traces)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert_one_error_line(done.returncode, done.stderr, "is not a trace file", exit_code=2)


# ------------------------------------------------------------------------------------ item 11
@pytest.mark.parametrize("command", [["db", "upgrade"], ["jobs", "rebuild", "team/job"]])
def test_commands_reading_a_store_refuse_a_missing_file(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo.db"
    code, _, err = run_main([*command, "--db", f"sqlite:///{missing}"], capsys)
    assert_one_error_line(code, err, "no database at", str(missing))
    assert not missing.exists()


def test_jobs_rebuild_on_an_existing_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'real.db'}"
    open_store(url).close()
    code, _, err = run_main(["jobs", "rebuild", "nope", "--db", url], capsys)
    assert_one_error_line(code, err, "nope")  # the store opened; the job is not there


@pytest.fixture
def served_jobs(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A real server holding a few jobs."""
    with EmbeddedServer(f"sqlite:///{tmp_path / 'jobs.db'}") as server, OptimizerClient(server.address) as client:
        for i in range(3):
            client.register_job(small_job(f"team/job-{i}"))
        yield server


def job_ids(server: EmbeddedServer) -> list[str]:
    with OptimizerClient(server.address) as client:
        return [j.spec.job_id for j in client.list_jobs()]


def test_jobs_delete_without_a_terminal_needs_yes(served_jobs: EmbeddedServer) -> None:
    base = [*CLI, "jobs", "--server", served_jobs.address, "delete", "team/job-0"]
    refused = subprocess.run(base, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False)
    assert_one_error_line(refused.returncode, refused.stderr, "pass --yes")
    assert "team/job-0" in job_ids(served_jobs)
    done = subprocess.run([*base, "--yes"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == 0 and "deleted team/job-0" in done.stdout
    assert "team/job-0" not in job_ids(served_jobs)


def answer_on_a_terminal(argv: list[str], answer: str) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as stdin and stderr; type ``answer`` at the question."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdin=follower, stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"[y/N]" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if ready:
                try:
                    seen += os.read(leader, 4096)
                except OSError:  # the process ended and closed the terminal
                    break
        assert b"[y/N]" in seen, seen
        os.write(leader, answer.encode() + b"\n")
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    return proc.returncode, out


@pytest.mark.parametrize(("answer", "deleted"), [("n", False), ("", False), ("y", True)])
def test_jobs_delete_asks_on_a_terminal(served_jobs: EmbeddedServer, answer: str, deleted: bool) -> None:
    code, out = answer_on_a_terminal([*CLI, "jobs", "--server", served_jobs.address, "delete", "team/job-1"], answer)
    assert (code == 0) is deleted and ("deleted team/job-1" in out) is deleted
    assert ("team/job-1" in job_ids(served_jobs)) is not deleted


def test_jobs_list_into_a_closed_pipe_ends_quietly(served_jobs: EmbeddedServer) -> None:
    # `powerbandit jobs list | head -0`: the reader is gone before the first line is written.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([*CLI, "jobs", "--server", served_jobs.address, "list"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60, check=False)  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.returncode == EXIT_BROKEN_PIPE, proc.stderr
    assert proc.stderr == "", proc.stderr  # no "Broken pipe", no traceback, no "Exception ignored"


def test_jobs_list_into_head(served_jobs: EmbeddedServer) -> None:
    shell = f"{sys.executable} -m powerbandit jobs --server {served_jobs.address} list | head -1"
    done = subprocess.run(["/bin/sh", "-c", shell], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.startswith("job") and done.stderr == "", done.stderr


# ------------------------------------------------------------------------------------ item 15
def test_help_texts_are_plain_text() -> None:
    seen = 0
    for name, parser in all_parsers():
        text = parser.format_help()  # type: ignore[attr-defined]
        seen += 1
        for markup in ("%%", "``", ":class:", ":func:", ":mod:", ":meth:"):
            assert markup not in text, f"{name} --help shows {markup!r}"
    assert seen > 10


def test_demo_help_lists_gpu_and_policy_choices() -> None:
    (demo,) = [p for name, p in all_parsers() if name == "powerbandit demo"]
    text = " ".join(demo.format_help().split())  # type: ignore[attr-defined]
    assert "--gpu {v100,a40,rtx6000,p100}" in text and "--policy {powerbandit,zeus}" in text


def test_progress_into_a_file_writes_plain_lines(tmp_path: Path) -> None:
    with open(tmp_path / "log.txt", "w") as log, Progress(50, "simulating", stream=log, delay_s=0.0) as bar:
        for _ in range(50):
            bar.advance()
    text = (tmp_path / "log.txt").read_text()
    assert "\r" not in text and text.endswith("simulating: 50/50 (100%)" + text.split("(100%)")[-1])
    assert len(text.splitlines()) == 2  # the first line at once, the last at the end: no flood


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_animates() -> None:
    tty = Terminal()
    with Progress(5, "simulating", stream=tty, delay_s=0.0) as bar:
        for _ in range(5):
            bar.advance()
    assert tty.getvalue().startswith("\rsimulating [") and tty.getvalue().endswith("\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--log-level", "LOUD", "jobs", "list"], "unknown log level 'LOUD'"),
        (["simulate", "--seeds", "abc"], "'abc' is not a list of seeds"),
        (["report", "--since", "0m"], "the duration '0m' is not positive"),
        (["jobs", "show", "some/job", "--runs", "-1"], "-1 is negative"),
    ],
)
def test_values_a_newcomer_mistyped_are_refused_with_what_is_accepted(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "parse_seeds" not in err


@pytest.mark.parametrize(
    ("address", "needle"),
    [
        ("not an address", "is not HOST:PORT"),
        ("localhost", "is not HOST:PORT"),
        ("localhost:99999", "not a number from 1 to 65535"),
        ("localhost:http", "not a number from 1 to 65535"),
        ("::1:50051", "IPv6 address in brackets"),
        ("[::1:50051", "needs a port after the brackets"),
        (":50051", "has no valid host"),
        ("unix:", "names a scheme but no target"),
    ],
)
def test_a_malformed_server_address_is_one_usage_line(
    address: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["jobs", "list", "--server", address], ["report", "--server", address],
                 ["health", "--server", address], ["dashboard", "--server", address]):  # fmt: skip
        code, _, err = run_main(argv, capsys)
        assert_one_error_line(code, err, "--server", needle, exit_code=2)


@pytest.mark.parametrize("address", ["127.0.0.1:50051", "[::1]:50051", "unix:/run/pb.sock", "dns:///pb.example:443"])
def test_well_formed_server_addresses_are_accepted(address: str) -> None:
    args = build_parser().parse_args(["jobs", "list", "--server", address])
    assert args.server == address


def test_a_job_that_does_not_exist_is_named_without_the_rpc_behind_it(
    served_jobs: EmbeddedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["show", "team/nosuch"], ["delete", "team/nosuch", "--yes"]):
        code, _, err = run_main(["jobs", "--server", served_jobs.address, *argv], capsys)
        assert_one_error_line(code, err, "NOT_FOUND: job 'team/nosuch' not found", served_jobs.address)
        assert "GetJob" not in err, err
