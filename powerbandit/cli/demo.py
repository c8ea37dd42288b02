"""``powerbandit demo``: watch one recurring job converge, end to end, without a GPU.

It starts the real server on a temporary SQLite file (or uses ``--server``), then replays N
recurrences of one job through the real SDK (``OptimizerClient.run``) with the replay GPU: each
run trains epoch by epoch, profiles power limits when asked, reports progress and completes.
The job's numbers come from the published traces shipped with powerbandit (``--trace-dir`` or
``POWERBANDIT_TRACE_DIR`` for another copy), or with ``--synthetic`` from a small built-in job whose
numbers are made up to look like a typical image-classification job (they were not measured).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from client_sdk.client import Job, OptimizerClient
from client_sdk.replay import ReplayGpu
from optimizer_server.policy.base import ProfilePoint
from optimizer_server.policy.registry import POLICY_NAMES
from powerbandit.cli import operator_view as view
from powerbandit.cli.argtypes import fraction_0_1, positive_int, server_address
from powerbandit.cli.errors import UserError, run_command
from simulations.traces import CANONICAL, GPUS, TraceJob, TraceSet, default_trace_dir

DESCRIPTION = (
    "Watch one recurring job converge, end to end, without a GPU. The demo starts the real server on a "
    "temporary SQLite file (or uses --server), then replays N recurrences of one job through the real SDK "
    "with a replay GPU: each run trains epoch by epoch, profiles power limits when asked, reports progress "
    "and completes. At the end it prints the configuration it converged to and the energy saved against the "
    "job's measured default configuration (default batch size at the maximum power limit), computed as "
    "`powerbandit jobs list` computes it. The job's numbers come from the published traces shipped with "
    "powerbandit (--trace-dir or POWERBANDIT_TRACE_DIR for another copy), or with --synthetic from a small "
    "built-in job whose numbers are made up (not measured)."
)
"""``powerbandit demo --help`` (plain text: no reStructuredText markup)."""


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
        "--recurrences", type=positive_int, default=40, help="recurrences of the job to replay (default 40)"
    )
    parser.add_argument(
        "--trace-dir", help="published traces [POWERBANDIT_TRACE_DIR, default: the copy shipped with powerbandit]"
    )
    parser.add_argument("--workload", default="cifar100", choices=sorted(CANONICAL), help="trace workload")
    parser.add_argument("--gpu", default="v100", choices=GPUS, help="trace GPU model (default v100)")
    parser.add_argument("--policy", default="powerbandit", choices=POLICY_NAMES,
                        help="the server's policy for the job (default powerbandit)")  # fmt: skip
    parser.add_argument(
        "--eta", type=fraction_0_1, default=0.5,
        help="energy-time trade-off in [0, 1]: 1 = energy only, 0 = time only (default 0.5)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=1, help="seed of the job and of the replayed training")
    parser.add_argument("--synthetic", action="store_true", help="use the built-in synthetic job even if traces exist")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code."""
    trace, source = load_job(args.trace_dir, args.workload, args.gpu, args.synthetic)
    print(f"job data: {source}")
    if args.server:
        with OptimizerClient(args.server) as client:
            return _replay(client, trace, args)
    from optimizer_server.server import EmbeddedServer

    with tempfile.TemporaryDirectory() as tmp, EmbeddedServer(f"sqlite:///{tmp}/demo.db") as server:
        print(f"started an embedded server at {server.address} on {tmp}/demo.db")
        with OptimizerClient(server.address) as client:
            return _replay(client, trace, args)


def _replay(client: OptimizerClient, trace: TraceJob, args: argparse.Namespace) -> int:
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
        for attempt in range(1, 21):
            gpu = ReplayGpu(table, model=f"Replay {trace.gpu}")
            with client.run(job, gpu, steps_per_epoch=steps_per_epoch, heartbeat=False) as r:
                seeds = trace.target_epochs[r.batch_size]
                target_epoch = seeds[int(rng.integers(len(seeds)))]
                for epoch in range(1, trace.max_epochs + 1):
                    for _ in range(steps_per_epoch):
                        r.step()
                    metric = trace.target_metric if epoch == target_epoch else None
                    if r.epoch_end(metric):
                        break
            done = r.completed_run
            assert done is not None
            if not args.quiet:
                outcome = (
                    "reached target" if done.reached_target else f"stopped: {r.stop_reason or 'max epochs'}"
                )
                print(f"{recurrence:>4} {attempt:>3} {done.batch_size:>6} {done.power_limit_w:>8g} {done.epochs:>6g} "
                      f"{done.energy_j / 1e3:>10.1f} {done.time_s:>9.0f} {done.cost:>10.4g}  {outcome}")  # fmt: skip
            if done.reached_target:
                break
    elapsed = time.perf_counter() - started
    final = client.get_job(job.job_id)  # with every run: the saving is what `jobs list` shows
    b0, p_max = trace.default_batch_size, trace.max_power
    print()
    print(f"converged to: batch size {final.best_batch_size}, power limit {final.best_power_limit_w:g} W "
          f"(default: batch size {b0} at {p_max:g} W)")  # fmt: skip
    print(f"job {job.job_id}: {view.saving_sentence(view.job_summary(final))}")
    print(
        f"{final.completed_runs} runs in {elapsed:.1f} s ({final.completed_runs / elapsed:.1f} runs/s through gRPC)"
    )
    return 0


def main() -> None:  # pragma: no cover - convenience entry point
    """``python -m powerbandit.cli.demo``."""
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args()
    sys.exit(run_command(lambda: run(args)))


if __name__ == "__main__":
    main()
