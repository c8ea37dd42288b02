"""``powerbandit run``: the optimizer around a training command you cannot or will not edit.

    powerbandit run --job team/resnet --server HOST:PORT -- python train.py --batch-size {batch_size}

It asks the server for a configuration, puts the batch size into the command (``{batch_size}``;
``{run_id}`` too), applies the power limit to the command's GPUs for the command's lifetime
(directly through NVML or through the node agent), runs the command, measures the energy of its
GPUs and the time, then completes the run (exit status 0) or fails it (non-zero exit, or
interrupted), and exits with the command's own exit status.

The command sees ``POWERBANDIT_BATCH_SIZE``, ``POWERBANDIT_RUN_ID``, ``POWERBANDIT_JOB_ID``,
``POWERBANDIT_POWER_LIMIT_W`` and ``POWERBANDIT_METRIC_FILE`` in its environment. It tells the
wrapper its final metric (compared with the job's target) and the epochs it trained in either way:

- print a line ``powerbandit-metric: 0.93`` (and ``powerbandit-epochs: 12``) on standard output
  (the last one counts; the output is passed through unchanged), or
- write ``0.93`` or ``{"metric": 0.93, "epochs": 12}`` to the file ``$POWERBANDIT_METRIC_FILE``
  (the file wins over printed lines).

Without a metric, an exit status of 0 counts as "target reached"; without an epoch count the run
reports the job's ``max_epochs``. An unusable report (the last metric or epochs line not a finite
number, negative epochs, a metric file that holds neither) fails the run with that text as the
reason (the wrapper still exits with the command's status). Power limits are not profiled (the
wrapper sees no training steps): the command runs at the suggested limit once the server knows a
power profile for the batch size on this GPU model (from a run through the SDK or a framework
callback, or extrapolated from another batch size's), and at the limit in force while the server
still asks for a profile; the run reports the limit it ran at, failed or not.
Ctrl-C and SIGTERM reach the command (once) and the run is reported failed. Once the command
exited, its remaining output is copied for at most 2 s (a background process it left may hold the
pipe open).

The job comes from flags (``--batch-sizes 32,64,128 --default-batch-size 64 --target-metric 0.9
--max-epochs 50``, registered if new; ``--eta``, ``--max-slowdown`` and ``--lower-is-better`` go
with them) or, without them, from the server (already registered). ``--max-slowdown 1.1`` gives the
job a slowdown budget instead of an eta (as ``Job(max_slowdown=1.1)`` in the SDK): energy is
minimised with runs at most 10 % slower than the default configuration's expected time.
``--replay TABLE.json`` measures with a :class:`~client_sdk.replay.ReplayGpu` for dry runs; the
default is NVML (the simulated device when ``POWERBANDIT_SIMULATED_GPUS`` names its file).
This module needs only the slim SDK (no numpy).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from client_sdk.client import Job, OptimizerClient, fail_open_from_environment
from client_sdk.errors import NotFoundError
from client_sdk.gpu import Gpu, GpuUnavailableError
from powerbandit.cli.argtypes import fraction_0_1, server_address, slowdown_factor
from powerbandit.cli.errors import UserError
from powerbandit.domain import DEFAULT_ETA

__all__ = ["ChildReport", "add_arguments", "check_job_flags", "load_replay_table", "parse_report_line", "run"]

METRIC_LINE = re.compile(rb"^\s*powerbandit-(metric|epochs)\s*:\s*(\S+)\s*$")
"""A line the command prints to report its final metric or its epochs."""

#: Exit code when the command cannot be started (as a shell says "command not found").
EXIT_NOT_FOUND = 127

#: Seconds to finish copying the command's output once it exited. A background process it left
#: behind may keep the pipe open for much longer; its later output is not waited for.
OUTPUT_DRAIN_S = 2.0


def _env(name: str, default: str) -> str:
    return os.environ.get("POWERBANDIT_" + name, default)


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 32,64,128, got {text!r}") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected positive batch sizes such as 32,64,128, got {text!r}")
    return sizes


def add_arguments(sub: argparse._SubParsersAction) -> None:
    """Add the ``run`` command to the top-level parser."""
    p = sub.add_parser(
        "run",
        help="run a training command as one powerbandit run (zero code changes)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="powerbandit run --job JOB [options] -- COMMAND [ARG ...]",
    )
    p.add_argument("--job", required=True, help="the job id, e.g. team/resnet50")
    p.add_argument("--server", default=_env("SERVER", "127.0.0.1:50051"), type=server_address,
                   help="server address host:port [POWERBANDIT_SERVER, default 127.0.0.1:50051]")  # fmt: skip
    p.add_argument("--timeout-s", type=float, default=30.0, help="seconds each server call may take (default 30)")
    spec = p.add_argument_group("job spec (registers the job; omit all to use the registered job)")
    spec.add_argument("--batch-sizes", type=_batch_sizes, help="candidate batch sizes, e.g. 32,64,128")
    spec.add_argument("--default-batch-size", type=int, help="the batch size used today")
    spec.add_argument("--target-metric", type=float, help="the validation metric that counts as trained")
    spec.add_argument("--max-epochs", type=int, help="epochs after which a run stops without the target")
    spec.add_argument("--eta", type=fraction_0_1, default=None,
                      help="energy vs time weight in [0, 1]: 1 = energy only, 0 = time only (default 0.5)")  # fmt: skip
    spec.add_argument("--max-slowdown", type=slowdown_factor, default=None, metavar="FACTOR",
                      help="a slowdown budget instead of --eta, e.g. 1.1: minimise energy with runs at most 10%% "
                           "slower than the default configuration's expected time (a factor from 1 to 100; the "
                           "job's eta is 1, another --eta is refused)")  # fmt: skip
    spec.add_argument("--lower-is-better", action="store_true", help="the metric is a loss (lower is better)")
    p.add_argument("--replay", metavar="TABLE.json",
                   help="measure with a replay GPU from this table (dry run without a GPU); see docs/integrations.md")  # fmt: skip
    p.add_argument("--metric-file", help="file the command writes its metric to [default: a temporary file]")
    p.add_argument("--fail-open", action="store_true",
                   help="train at the job's default configuration when the server is out of reach "
                        "[POWERBANDIT_FAIL_OPEN]")  # fmt: skip
    p.add_argument("--kill-after-s", type=float, default=30.0,
                   help="after forwarding Ctrl-C/SIGTERM, seconds before the command is killed (default 30)")  # fmt: skip
    p.add_argument("child", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the training command")


# ----------------------------------------------------------------------------------- inputs
def load_replay_table(path: str) -> tuple[dict[int, dict[float, tuple[float, float]]], str, int]:
    """A replay table file: ``{"model": ..., "count": 1, "table": {"64": {"300": [250.0, 11.0]}}}``.

    ``table`` maps batch size -> power limit W -> ``[average power W, seconds per epoch]``; a file
    holding only that mapping works too. Returns ``(table, model, count)``.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not a JSON replay table ({exc})") from None
    body = raw.get("table", raw) if isinstance(raw, dict) else None
    try:
        if not isinstance(body, dict) or not body:
            raise ValueError("no batch sizes")
        table = {
            int(b): {float(p): (float(v[0]), float(v[1])) for p, v in row.items()} for b, row in body.items()
        }
        if any(not row for row in table.values()):
            raise ValueError("a batch size without power limits")
    except (ValueError, TypeError, IndexError, AttributeError) as exc:
        raise UserError(
            f'{path}: expected {{"table": {{"64": {{"300": [250.0, 11.0]}}}}}} (batch size -> power limit W -> '
            f"[average power W, seconds per epoch]): {exc}"
        ) from None
    model = str(raw.get("model", "Replay GPU")) if isinstance(raw, dict) and "table" in raw else "Replay GPU"
    count = int(raw.get("count", 1)) if isinstance(raw, dict) and "table" in raw else 1
    return table, model, count


def check_job_flags(args: argparse.Namespace) -> None:
    """Refuse job flags that cannot go together, before anything is contacted (exit status 2).

    ``--max-slowdown`` sets the job's eta to 1 (a budget minimises energy), so another ``--eta`` is
    a contradiction; ``--eta``, ``--max-slowdown`` and ``--lower-is-better`` describe a job, so
    they need the four flags that describe it (a registered job is used as it is).
    """
    if args.max_slowdown is not None and args.eta is not None and args.eta != 1.0:
        raise UserError(
            f"--max-slowdown {args.max_slowdown:g} and --eta {args.eta:g} are alternatives: a slowdown budget "
            f"minimises energy (eta 1); give one of them",
            exit_code=2,
        )
    required = {
        "--batch-sizes": args.batch_sizes,
        "--default-batch-size": args.default_batch_size,
        "--target-metric": args.target_metric,
        "--max-epochs": args.max_epochs,
    }
    optional = {"--eta": args.eta, "--max-slowdown": args.max_slowdown, "--lower-is-better": args.lower_is_better or None}
    if not any(v is not None for v in (*required.values(), *optional.values())):
        return  # the registered job
    missing = [flag for flag, value in required.items() if value is None]
    if missing:
        with_flags = [flag for flag, value in optional.items() if value is not None]
        given = f" with {', '.join(with_flags)}" if with_flags else ""
        raise UserError(f"to describe the job{given} give all of --batch-sizes, --default-batch-size, "
                        f"--target-metric and --max-epochs (missing: {', '.join(missing)})", exit_code=2)  # fmt: skip


def _job(args: argparse.Namespace, client: OptimizerClient) -> Job:
    """The job from the flags (all of them), or the registered one (none of them)."""
    if args.batch_sizes is not None:  # check_job_flags made sure the other three are there
        budget = args.max_slowdown
        return Job(
            args.job,
            batch_sizes=args.batch_sizes,
            default_batch_size=args.default_batch_size,
            target_metric=args.target_metric,
            max_epochs=args.max_epochs,
            eta=1.0 if budget is not None else (args.eta if args.eta is not None else DEFAULT_ETA),
            higher_is_better=not args.lower_is_better,
            max_slowdown=budget,
        )
    try:
        spec = client.get_job(args.job, max_runs=1).spec
    except NotFoundError:
        raise UserError(
            f"job {args.job} is not registered on {client.address}: describe it with --batch-sizes, "
            f"--default-batch-size, --target-metric and --max-epochs"
        ) from None
    from powerbandit.v1 import optimizer_pb2 as pb

    return Job(
        spec.job_id,
        batch_sizes=tuple(spec.batch_sizes),
        default_batch_size=spec.default_batch_size,
        target_metric=spec.target_metric,
        max_epochs=spec.max_epochs,
        eta=spec.eta if spec.HasField("eta") else DEFAULT_ETA,
        beta=spec.beta,
        higher_is_better=spec.metric_direction != pb.METRIC_DIRECTION_LOWER_IS_BETTER,
        policy=spec.policy,
        window=spec.window,
        seed=spec.seed,
        max_slowdown=spec.max_slowdown if spec.HasField("max_slowdown") else None,
    )


def _gpu(args: argparse.Namespace) -> Gpu:
    if args.replay:
        from client_sdk.replay import ReplayGpu

        table, model, count = load_replay_table(args.replay)
        return ReplayGpu(table, model=model, count=count)
    from client_sdk.nvml import NvmlGpu

    try:
        return NvmlGpu()
    except GpuUnavailableError as exc:
        raise UserError(f"{exc} (or pass --replay TABLE.json for a dry run)") from None


# ---------------------------------------------------------------------------- the child's report
@dataclass
class ChildReport:
    """What the command said about itself: its final metric and its epochs (None: not said).

    ``unusable``: what it said that cannot count (``"metric"``, ``"epochs"`` -> the line or file
    text): the last report of a kind was not a usable number, so the run is reported failed.
    """

    metric: float | None = None
    epochs: float | None = None
    unusable: dict[str, str] = field(default_factory=dict)


def parse_report_line(line: bytes, report: ChildReport) -> None:
    """Update ``report`` from one output line if it is ``powerbandit-metric: X`` or ``powerbandit-epochs: N``."""
    match = METRIC_LINE.match(line)
    if match is None:
        return
    kind = match.group(1).decode()
    text = line.decode(errors="replace").strip()
    try:
        value = float(match.group(2))
        problem = _unusable(kind, value)
    except ValueError:
        value, problem = math.nan, "not a number"
    if problem:
        report.unusable[kind] = f"{text!r} ({problem})"
        print(f"powerbandit: unusable report {text!r}: {problem}; the run will be reported failed unless a "
              f"later line corrects it", file=sys.stderr)  # fmt: skip
        return
    report.unusable.pop(kind, None)
    if kind == "metric":
        report.metric = value
    else:
        report.epochs = value


def _unusable(kind: str, value: float) -> str:
    """Why a reported value cannot count ("" when it can)."""
    if not math.isfinite(value):
        return "not a finite number"
    if kind == "epochs" and value < 0:
        return "a negative epoch count"
    return ""


def _read_metric_file(path: Path, report: ChildReport) -> None:
    """The metric file, when the command wrote one: a number, or ``{"metric": X, "epochs": N}``."""
    try:
        text = path.read_text().strip()
    except OSError:
        return
    if not text:
        return
    expected = 'expected 0.93 or {"metric": 0.93, "epochs": 12}'
    try:
        value = json.loads(text)
        if isinstance(value, bool) or not isinstance(value, (int, float, dict)):
            raise ValueError("neither a number nor an object")
        found = {"metric": value} if not isinstance(value, dict) else value
        for kind in ("metric", "epochs"):
            if found.get(kind) is None:
                continue
            number = found[kind]
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise ValueError(f"{kind} {number!r} is not a number")
            problem = _unusable(kind, float(number))
            if problem:
                raise ValueError(f"{kind} {number!r}: {problem}")
            setattr(report, kind, float(number))
            report.unusable.pop(kind, None)
    except (ValueError, TypeError) as exc:
        shown = text if len(text) <= 80 else text[:77] + "..."
        report.unusable["metric file"] = f"{path}: {shown!r} ({exc}; {expected})"
        print(f"powerbandit: unusable metric file {path}: {exc} ({expected}); the run will be reported failed",
              file=sys.stderr)  # fmt: skip


def _pump(stream: IO[bytes], out: IO[bytes], report: ChildReport) -> None:
    """Copy the command's output to ours line by line, reading report lines on the way."""
    for line in iter(stream.readline, b""):
        out.write(line)
        out.flush()
        parse_report_line(line, report)
    stream.close()


# ------------------------------------------------------------------------------------- signals
class _Forwarder:
    """Forwards SIGINT and SIGTERM to the command once each, remembers the first, restores handlers."""

    def __init__(self, child: subprocess.Popen[bytes], shares_terminal: bool) -> None:
        self.child = child
        self.shares_terminal = shares_terminal
        self.signum: int | None = None
        self.forwarded_at: float | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        # Ctrl-C in a terminal already reached the command (it shares our process group)
        if signum == signal.SIGINT and self.shares_terminal:
            self.forwarded_at = self.forwarded_at or time.monotonic()
            return
        if self.child.poll() is None:
            self.child.send_signal(signum)
            self.forwarded_at = self.forwarded_at or time.monotonic()

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


def _exit_status(returncode: int) -> int:
    """A shell's exit status for a child's return code (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


# ----------------------------------------------------------------------------------------- run
def _substitute(command: list[str], values: dict[str, str]) -> list[str]:
    out = []
    for word in command:
        for key, value in values.items():
            word = word.replace("{" + key + "}", value)
        out.append(word)
    return out


def run(args: argparse.Namespace, *, stdout: IO[bytes] | None = None) -> int:
    """Run ``args.child`` as one run of ``args.job``; returns the command's exit status."""
    command = list(args.child)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UserError("no command to run: powerbandit run --job JOB -- python train.py --batch-size {batch_size}")
    check_job_flags(args)
    fail_open = True if args.fail_open else fail_open_from_environment()
    gpu = _gpu(args)
    try:
        with OptimizerClient(args.server, timeout_s=args.timeout_s, fail_open=fail_open) as client:
            job = _job(args, client)
            training = client.start_run(job, gpu=gpu, profile=False)  # no steps seen: nothing to profile with
            try:
                return _run_child(args, command, training, job, stdout or sys.stdout.buffer)
            except BaseException as exc:
                if training.state == "running":
                    training.fail(exc if str(exc) else f"{type(exc).__name__} in powerbandit run")
                raise
    finally:
        gpu.close()


def _run_child(args: argparse.Namespace, command: list[str], training: Any, job: Job, out: IO[bytes]) -> int:
    batch_size = training.batch_size
    run_id = training.run_id
    temporary = None
    if args.metric_file:
        metric_path = Path(args.metric_file)
        metric_path.unlink(missing_ok=True)  # a stale metric from an earlier run must not count
    else:
        descriptor, temporary = tempfile.mkstemp(prefix="powerbandit-metric-", suffix=".txt")
        os.close(descriptor)
        metric_path = Path(temporary)
    env = {
        **os.environ,
        "POWERBANDIT_BATCH_SIZE": str(batch_size),
        "POWERBANDIT_RUN_ID": run_id,
        "POWERBANDIT_JOB_ID": job.job_id,
        "POWERBANDIT_POWER_LIMIT_W": f"{training.power_limit_w:g}",
        "POWERBANDIT_METRIC_FILE": str(metric_path),
    }
    argv = _substitute(command, {"batch_size": str(batch_size), "run_id": run_id})
    _say(f"run {run_id or '(offline)'} of {job.job_id}: batch size {batch_size}, "
         f"power limit {training.power_limit_w:g} W: {' '.join(argv)}")  # fmt: skip
    report = ChildReport()
    try:
        try:
            child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, bufsize=0)
        except OSError as exc:
            training.fail(f"the command could not be started: {exc}")
            print(f"error: cannot run {argv[0]!r}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_NOT_FOUND
        assert child.stdout is not None
        pump = threading.Thread(target=_pump, args=(child.stdout, out, report), name="powerbandit-output", daemon=True)
        pump.start()
        forwarder = _Forwarder(child, shares_terminal=_stdin_is_terminal())
        forwarder.install()
        try:
            returncode = _wait(child, forwarder, args.kill_after_s)
        finally:
            forwarder.restore()
        pump.join(timeout=OUTPUT_DRAIN_S)  # bounded: a grandchild may hold the pipe open
        if pump.is_alive():
            _say(f"the command exited but its output is still open (a process it started in the background "
                 f"holds it); not waiting for it past {OUTPUT_DRAIN_S:g} s")  # fmt: skip
        _read_metric_file(metric_path, report)
        return _finish(training, job, report, returncode, forwarder.signum)
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


def _stdin_is_terminal() -> bool:
    try:
        return os.isatty(sys.stdin.fileno())
    except (OSError, ValueError, AttributeError):
        return False


def _wait(child: subprocess.Popen[bytes], forwarder: _Forwarder, kill_after_s: float) -> int:
    """Wait for the command; kill it ``kill_after_s`` after a forwarded signal it ignores."""
    while True:
        try:
            return child.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if forwarder.forwarded_at is not None and time.monotonic() - forwarder.forwarded_at > kill_after_s:
                _say(f"the command did not exit {kill_after_s:g} s after the signal; killing it")
                child.kill()


def _finish(training: Any, job: Job, report: ChildReport, returncode: int, signum: int | None) -> int:
    status = _exit_status(returncode)
    if signum is not None:
        name = signal.Signals(signum).name
        training.fail(f"interrupted by {name} (the command exited with status {status})")
        _say(f"run {training.run_id or '(offline)'} interrupted by {name}: reported failed")
        return status if status else 128 + signum
    if returncode != 0:
        training.fail(f"the command exited with status {status}")
        _say(f"run {training.run_id or '(offline)'} failed: the command exited with status {status}")
        return status
    if report.unusable:  # garbage is no evidence: neither "target reached" nor "not reached"
        what = "; ".join(f"{kind} {detail}" for kind, detail in report.unusable.items())
        training.fail(f"the command exited with status 0 but its report was unusable: {what}")
        _say(f"run {training.run_id or '(offline)'} failed: unusable report from the command: {what}")
        return status
    if report.epochs is None:
        _say(f"the command reported no epoch count (print `powerbandit-epochs: N`); reporting max_epochs "
             f"({job.max_epochs})")  # fmt: skip
    epochs = report.epochs if report.epochs is not None else float(job.max_epochs)
    if report.metric is None:
        training.reached_target = True  # documented: exit status 0 without a metric = target reached
    done = training.complete(report.metric, epochs=epochs)
    energy, elapsed = (done.energy_j, done.time_s) if done is not None else _offline(training)
    verdict = "target reached" if training.reached_target else "target not reached"
    _say(f"run {training.run_id or '(offline, not reported)'} completed: {epochs:g} epochs, {energy:.0f} J, "
         f"{elapsed:.1f} s, {verdict}")  # fmt: skip
    return 0


def _offline(training: Any) -> tuple[float, float]:
    result = training.offline_result
    return (result.energy_j, result.time_s) if result is not None else (0.0, 0.0)


def _say(message: str, printer: Callable[..., None] = print) -> None:
    printer(f"powerbandit: {message}", file=sys.stderr, flush=True)
