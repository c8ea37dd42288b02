"""``powerbandit demo``: watch one recurring job converge, end to end, without a GPU.

It starts the real server on a temporary SQLite file (or uses ``--server``), then replays N
recurrences of one job through the real SDK (``OptimizerClient.run``) with the replay GPU: each
run trains epoch by epoch, profiles power limits when asked, reports progress and completes.
The job's numbers come from the published traces shipped with powerbandit (``--trace-dir`` or
``POWERBANDIT_TRACE_DIR`` for another copy), or with ``--synthetic`` from a small built-in job whose
numbers are made up to look like a typical image-classification job (they were not measured).

At the end it says "converged" only when the last :data:`CONVERGED_AFTER` recurrences each ended
with a run of one and the same configuration (batch size and power limit) that reached the target:
the policy has stopped exploring. Otherwise it prints the best configuration so far (the batch size
with the lowest mean cost among those that reached the target) and how many runs it rests on.
Ctrl-C or SIGTERM stops it cleanly: the run in progress is reported failed, the embedded server is
stopped and its temporary directory removed, one line on stderr says what the demo had done, and
the exit status is 130 (Ctrl-C) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import numpy as np

from client_sdk.client import Job, OptimizerClient, OptimizerClientError
from client_sdk.replay import ReplayGpu
from client_sdk.run import TrainingRun
from client_sdk.run import log as sdk_run_log
from optimizer_server.policy.base import ProfilePoint
from optimizer_server.policy.registry import POLICY_NAMES
from powerbandit.cli import operator_view as view
from powerbandit.cli.argtypes import fraction_0_1, positive_int, server_address
from powerbandit.cli.errors import UserError, run_command
from powerbandit.v1 import optimizer_pb2 as pb
from simulations.traces import CANONICAL, GPUS, TraceJob, TraceSet, default_trace_dir

DESCRIPTION = (
    "Watch one recurring job converge, end to end, without a GPU. The demo starts the real server on a "
    "temporary SQLite file (or uses --server), then replays N recurrences of one job through the real SDK "
    "with a replay GPU: each run trains epoch by epoch, profiles power limits when asked, reports progress "
    "and completes. At the end it prints the configuration and the energy saved against the job's measured "
    "default configuration (default batch size at the maximum power limit), computed as `powerbandit jobs "
    "list` computes it. It says 'converged to' only when the last 5 recurrences each ended with a run of one "
    "and the same batch size and power limit that reached the target; otherwise 'best so far': the batch "
    "size with the lowest mean cost among those that reached the target, and how many runs that rests on. "
    "The job's numbers come from the published traces shipped with powerbandit (--trace-dir or "
    "POWERBANDIT_TRACE_DIR for another copy), or with --synthetic from a small built-in job whose numbers "
    "are made up (not measured). Ctrl-C or SIGTERM stop it cleanly: the run in progress is reported failed, "
    "the embedded server's temporary directory is removed, and stderr says what the demo had done (exit "
    "status 130 for Ctrl-C, 143 for SIGTERM)."
)
"""``powerbandit demo --help`` (plain text: no reStructuredText markup)."""

CONVERGED_AFTER = 5
"""Recurrences in a row that must each end with a run of one configuration (batch size and power
limit) that reached the target before the demo says "converged to": the policy has stopped exploring
for that long. Fewer recurrences than this never count as converged."""
ATTEMPTS_PER_RECURRENCE = 20
"""Runs one recurrence may take to reach the target (a run stopped early is retried, as a job would be)."""
DEFAULT_WORKLOAD = "cifar100"
DEFAULT_GPU = "v100"
TRACE_FLAGS = {"trace_dir": "--trace-dir", "workload": "--workload", "gpu": "--gpu"}
"""The flags that choose the published traces (namespace attribute: flag), which --synthetic replaces."""


def synthetic_job() -> TraceJob:
    """A small made-up job (NOT measured): 5 batch sizes, 5 power limits, 3 seeds each.

    Larger batches run faster per epoch but need more epochs; 1024 never reaches the target.
    """
    batch_sizes = (64, 128, 256, 512, 1024)
    limits = (150.0, 175.0, 200.0, 225.0, 250.0)
    target_epochs = {
        64: (12, 13, 12),
        128: (13, 14, 14),
        256: (16, 15, 17),
        512: (24, 26, 23),
        1024: (None, None, None),
    }
    base_epoch_s = {64: 60.0, 128: 42.0, 256: 33.0, 512: 29.0, 1024: 27.0}
    power = {}
    for b in batch_sizes:
        row = {}
        for p in limits:
            slowdown = 1.0 + 0.9 * ((250.0 - p) / 250.0) ** 2  # lower limits: slower epochs
            row[p] = ProfilePoint(p, min(p, 120.0 + 0.4 * p + 0.05 * b), base_epoch_s[b] * slowdown)
        power[b] = row
    return TraceJob(
        gpu="synthetic",
        workload="synthetic",
        target_metric=0.6,
        max_epochs=40,
        default_batch_size=512,
        batch_sizes=batch_sizes,
        power_limits=limits,
        target_epochs=target_epochs,
        power=power,
    )


def load_job(trace_dir: str | None, workload: str, gpu: str, synthetic: bool = False) -> tuple[TraceJob, str]:
    """The demo's job and a sentence saying where its numbers come from."""
    if synthetic:
        return synthetic_job(), "a built-in SYNTHETIC job (numbers made up, not measured)"
    directory = Path(trace_dir) if trace_dir else default_trace_dir()
    if not (directory / "summary_train.csv").exists():
        raise UserError(f"no traces at {directory} (expected summary_train.csv there; "
                        "--synthetic runs a built-in made-up job instead)")  # fmt: skip
    job = TraceSet(directory).job(gpu, workload)
    return job, f"measured traces from {directory} ({workload} on {gpu})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``powerbandit demo``."""
    parser.add_argument(
        "--server", type=server_address, help="address of a running server (default: start one on a temporary SQLite file)"
    )
    parser.add_argument(
        "--recurrences", type=positive_int, default=40,
        help=f"recurrences of the job to replay (default 40; 'converged' needs at least {CONVERGED_AFTER})",
    )  # fmt: skip
    parser.add_argument(
        "--trace-dir",
        help="published traces [POWERBANDIT_TRACE_DIR, default: the copy shipped with powerbandit]; not with --synthetic",
    )
    parser.add_argument("--workload", choices=sorted(CANONICAL),
                        help=f"trace workload (default {DEFAULT_WORKLOAD}); not with --synthetic")  # fmt: skip
    parser.add_argument("--gpu", choices=GPUS, help=f"trace GPU model (default {DEFAULT_GPU}); not with --synthetic")
    parser.add_argument("--policy", default="powerbandit", choices=POLICY_NAMES,
                        help="the server's policy for the job (default powerbandit)")  # fmt: skip
    parser.add_argument(
        "--eta", type=fraction_0_1, default=0.5,
        help="energy-time trade-off in [0, 1]: 1 = energy only, 0 = time only (default 0.5)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=1, help="seed of the job and of the replayed training")
    parser.add_argument(
        "--synthetic", action="store_true",
        help="replay a built-in made-up job instead of the published traces (even if they exist); "
        "refuses --trace-dir, --workload and --gpu, which choose a trace job",
    )  # fmt: skip
    parser.add_argument(
        "--quiet", action="store_true",
        help="print only the result: the configuration line and the energy-saved line (no data source, server "
        "line, per-run table or timing); warnings and errors still go to stderr",
    )  # fmt: skip


class DemoInterrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT (Ctrl-C) or SIGTERM, so the demo unwinds and cleans up.

    Its text is the cause ("Ctrl-C", "SIGTERM"): the run it ends is reported failed with the
    reason ``DemoInterrupted: Ctrl-C``.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.cause = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        super().__init__(self.cause)

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as for a process the signal ended: 130 for Ctrl-C, 143 for SIGTERM."""
        return 128 + self.signum


class SignalStop:
    """SIGINT and SIGTERM raise :class:`DemoInterrupted` in the main thread, once (see :func:`stopping_on_signals`)."""

    def __init__(self) -> None:
        self.stopping = False
        """Set by the first signal, or by :meth:`finish`: later signals are ignored."""
        self.sdk_log_level: int | None = None
        """The SDK run logger's level before the signal held its warnings back."""

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: raise :class:`DemoInterrupted` unless the demo is already stopping or cleaning up.

        The SDK's warning about the run this ends ("run ... failed: DemoInterrupted: Ctrl-C") is held
        back: the demo's own lines say it (:meth:`restore` lets the SDK's warnings through again).
        """
        if not self.stopping:
            self.stopping = True
            self.sdk_log_level = sdk_run_log.level
            sdk_run_log.setLevel(logging.ERROR)
            raise DemoInterrupted(signum)

    def finish(self) -> None:
        """The demo's work is done: signals from now on are ignored, so its cleanup runs to the end."""
        self.stopping = True

    def restore(self) -> None:
        """Let the SDK's warnings through again."""
        if self.sdk_log_level is not None:
            sdk_run_log.setLevel(self.sdk_log_level)
            self.sdk_log_level = None


@contextmanager
def stopping_on_signals() -> Iterator[SignalStop]:
    """Within the block, SIGINT and SIGTERM raise :class:`DemoInterrupted` in the main thread.

    Only the first signal raises: a second one while the demo cleans up is ignored, so the embedded
    server still stops and its temporary directory is still removed (:meth:`SignalStop.finish` does
    the same once the demo's work is done). A signal the parent set to be ignored (SIGINT of a
    background job) stays ignored. Outside the main thread (where Python cannot handle signals) the
    block runs unchanged. The previous handlers come back when the block ends.
    """
    stop = SignalStop()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, stop.handle)
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        stop.restore()


@dataclass
class Progress:
    """What the demo has done so far: for its summary, and for the line an interruption prints."""

    recurrences: int
    """Recurrences asked for."""
    job_id: str = ""
    """The demo's job, once registered."""
    recurrence: int = 0
    """The recurrence in progress (the last one once all are done)."""
    finished_runs: int = 0
    """Runs completed, whether they reached the target or not."""
    reached: list[tuple[int, float] | None] = field(default_factory=list)
    """Per finished recurrence: (batch size, power limit W) of its run that reached the target, or None."""
    failed_in_flight: bool = False
    """An interruption ended a run in progress, which was reported failed."""

    def converged_configuration(self) -> tuple[int, float] | None:
        """The configuration of each of the last :data:`CONVERGED_AFTER` recurrences, if they share one."""
        last = self.reached[-CONVERGED_AFTER:]
        if len(last) < CONVERGED_AFTER or last[0] is None or any(c != last[0] for c in last):
            return None
        return last[0]

    def interrupted_line(self, cause: str) -> str:
        """What the demo had done when ``cause`` stopped it."""
        runs = f"{self.finished_runs} finished run{'s' if self.finished_runs != 1 else ''}"
        text = f"demo interrupted ({cause}) in recurrence {self.recurrence} of {self.recurrences} after {runs}"
        if self.recurrence == 0:
            text = f"demo interrupted ({cause}) before its first run"
        return text + ("; the run in progress was reported failed" if self.failed_in_flight else "")


def refuse_trace_flags_with_synthetic(args: argparse.Namespace) -> None:
    """``--synthetic`` with a flag that chooses a trace job is a usage error (exit 2), never silently ignored."""
    if not args.synthetic:
        return
    given = [flag for attribute, flag in TRACE_FLAGS.items() if getattr(args, attribute) is not None]
    if given:
        flags = " and ".join([", ".join(given[:-1]), given[-1]] if len(given) > 1 else given)
        raise UserError(
            f"--synthetic (a built-in made-up job) cannot be combined with {flags}, which "
            f"choose{'s' if len(given) == 1 else ''} a job of the published traces: drop one or the other",
            exit_code=2,
        )


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code (130 after Ctrl-C, 143 after SIGTERM)."""
    refuse_trace_flags_with_synthetic(args)
    workload, gpu = args.workload or DEFAULT_WORKLOAD, args.gpu or DEFAULT_GPU
    trace, source = load_job(args.trace_dir, workload, gpu, args.synthetic)
    progress = Progress(recurrences=args.recurrences)
    aftermath = ""  # what happened to the demo's runs, said when it is interrupted
    with stopping_on_signals() as signals:
        try:
            if not args.quiet:
                print(f"job data: {source}")
            if args.server:
                with OptimizerClient(args.server) as client:
                    return _replay(client, trace, args, progress, signals)
            from optimizer_server.server import EmbeddedServer

            with tempfile.TemporaryDirectory(prefix="powerbandit-demo-") as tmp:
                aftermath = f"its temporary directory {tmp} was removed"
                with EmbeddedServer(f"sqlite:///{tmp}/demo.db") as server:
                    aftermath = f"the embedded server was stopped and its temporary directory {tmp} removed"
                    if not args.quiet:
                        print(f"started an embedded server at {server.address} on {tmp}/demo.db")
                    with OptimizerClient(server.address) as client:
                        return _replay(client, trace, args, progress, signals)
        except DemoInterrupted as stop:
            sys.stdout.flush()  # the runs printed so far come before the line that ends them
            print(progress.interrupted_line(stop.cause), file=sys.stderr)
            if args.server and progress.job_id:
                aftermath = f"job {progress.job_id} keeps its finished runs on the server at {args.server}"
            if aftermath:
                print(aftermath, file=sys.stderr)
            return stop.exit_code


def _replay(
    client: OptimizerClient, trace: TraceJob, args: argparse.Namespace, progress: Progress, signals: SignalStop
) -> int:
    started = time.perf_counter()
    job = Job(
        # unique per demo: two demos started in the same second against one server must not share a job
        job_id=f"demo/{trace.workload}@{trace.gpu}/{int(time.time())}-{secrets.token_hex(3)}",
        batch_sizes=trace.batch_sizes,
        default_batch_size=trace.default_batch_size,
        target_metric=trace.target_metric,
        max_epochs=trace.max_epochs,
        eta=args.eta,
        higher_is_better=True,  # the replay reports the target value itself when a seed reaches it
        policy=args.policy,
        seed=args.seed,
    )
    progress.job_id = job.job_id
    table = {
        b: {p: (pt.average_power_w, pt.time_per_epoch_s) for p, pt in trace.power[b].items()}
        for b in trace.batch_sizes
    }
    rng = np.random.default_rng(args.seed)
    steps_per_epoch = 4 * len(trace.power_limits)  # the profile fits the first epoch in equal slices
    if not args.quiet:
        print(f"{'rec':>4} {'try':>3} {'batch':>6} {'limit W':>8} {'epochs':>6} {'energy kJ':>10} {'time s':>9} "
              f"{'cost':>10}  outcome")  # fmt: skip
    for recurrence in range(1, args.recurrences + 1):
        progress.recurrence = recurrence
        reached: tuple[int, float] | None = None
        for attempt in range(1, ATTEMPTS_PER_RECURRENCE + 1):
            gpu = ReplayGpu(table, model=f"Replay {trace.gpu}")
            run = client.run(job, gpu, steps_per_epoch=steps_per_epoch, heartbeat=False)
            try:
                with run as r:
                    try:
                        seeds = trace.target_epochs[r.batch_size]
                        target_epoch = seeds[int(rng.integers(len(seeds)))]
                        for epoch in range(1, trace.max_epochs + 1):
                            for _ in range(steps_per_epoch):
                                r.step()
                            metric = trace.target_metric if epoch == target_epoch else None
                            if r.epoch_end(metric):
                                break
                    except DemoInterrupted as stop:
                        progress.failed_in_flight = _fail_interrupted_run(r, stop)
                        raise
            except DemoInterrupted:
                # interrupted while the run started (the SDK reported it failed) or while it completed
                progress.failed_in_flight = progress.failed_in_flight or run.state == "failed"
                raise
            done = r.completed_run
            assert done is not None
            progress.finished_runs += 1
            if not args.quiet:
                outcome = (
                    "reached target" if done.reached_target else f"stopped: {r.stop_reason or 'max epochs'}"
                )
                print(f"{recurrence:>4} {attempt:>3} {done.batch_size:>6} {done.power_limit_w:>8g} {done.epochs:>6g} "
                      f"{done.energy_j / 1e3:>10.1f} {done.time_s:>9.0f} {done.cost:>10.4g}  {outcome}")  # fmt: skip
            if done.reached_target:
                reached = (done.batch_size, done.power_limit_w)
                break
        progress.reached.append(reached)
    elapsed = time.perf_counter() - started
    final = client.get_job(job.job_id)  # with every run: the saving is what `jobs list` shows
    if not args.quiet:
        print()
    print(configuration_line(final, trace, progress))
    print(f"job {job.job_id}: {view.saving_sentence(view.job_summary(final))}")
    if not args.quiet:
        print(
            f"{final.completed_runs} runs in {elapsed:.1f} s ({final.completed_runs / elapsed:.1f} runs/s through gRPC)"
        )
    signals.finish()  # done: the cleanup (server stop, temporary directory) is not cut short
    return 0


def _fail_interrupted_run(run: TrainingRun, stop: DemoInterrupted) -> bool:
    """Report the run in progress failed because the demo was interrupted; False if the server did not hear it."""
    try:
        run.fail(stop)
    except OptimizerClientError:
        return False
    return True


def configuration_line(final: pb.Job, trace: TraceJob, progress: Progress) -> str:
    """'converged to: ...' when the last recurrences all ran one configuration, else 'best so far: ...'."""
    default = f"(default: batch size {trace.default_batch_size} at {trace.max_power:g} W)"
    converged = progress.converged_configuration()
    if converged is not None:
        batch_size, limit_w = converged
        return (f"converged to: batch size {batch_size}, power limit {limit_w:g} W, run by each of the last "
                f"{CONVERGED_AFTER} recurrences {default}")  # fmt: skip
    done = len(progress.reached)
    not_yet = f"not converged after {done} recurrence{'s' if done != 1 else ''} " + (
        f"(that takes {CONVERGED_AFTER} in a row reaching the target with one configuration)"
        if done < CONVERGED_AFTER
        else f"(the last {CONVERGED_AFTER} did not all reach the target with one configuration)"
    )
    if not final.best_batch_size:
        return f"{not_yet}; no batch size has reached the target yet {default}"
    arm = next(a for a in final.arms if a.batch_size == final.best_batch_size)
    limit = f", power limit {final.best_power_limit_w:g} W" if final.best_power_limit_w else ""
    runs = f"{arm.successes} run{'s' if arm.successes != 1 else ''}"
    return (f"{not_yet}; best so far: batch size {final.best_batch_size}{limit}, from {runs} that reached the "
            f"target {default}")  # fmt: skip


def main() -> None:  # pragma: no cover - convenience entry point
    """``python -m powerbandit.cli.demo``."""
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args()
    sys.exit(run_command(lambda: run(args)))


if __name__ == "__main__":
    main()
