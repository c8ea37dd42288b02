"""``powerbandit simulate`` / ``python -m simulations``: replay the traces through policies.

Example::

    python -m simulations --all --policy zeus powerbandit --seeds 1-10 --jobs 2 --out sim-out
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from optimizer_server.policy.base import ClusterPrior
from optimizer_server.policy.registry import POLICY_NAMES
from powerbandit.cli.argtypes import at_least_1, fraction_0_1, positive_int, slowdown_factor
from powerbandit.cli.errors import UserError, run_command
from simulations.backend import BackendFactory
from simulations.baselines import BASELINES
from simulations.engine import SimResult, simulate
from simulations.progress import Progress
from simulations.report import print_table, write_plots, write_runs_csv, write_summary_json
from simulations.scenarios import (
    SCENARIOS,
    drifted,
    leave_one_out_prior,
    simulate_alternating,
    simulate_alternating_separately,
    simulate_concurrent,
    simulate_drift,
)
from simulations.traces import CANONICAL, GPUS, TraceError, TraceJob, TraceSet

ALL_POLICIES: tuple[str, ...] = (*BASELINES, *POLICY_NAMES)
BUDGET_POLICIES: tuple[str, ...] = ("default", "oracle", "powerbandit")
"""Policies that honour a slowdown budget (``--max-slowdown``)."""
BUDGET_SCENARIOS: tuple[str, ...] = ("trace", "leave-one-out")


def parse_seeds(text: str) -> list[int]:
    """``"1-10"``, ``"3"``, ``"1,4,7-9"`` -> list of seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
            seeds.extend(range(int(lo), int(hi) + 1))
        else:
            seeds.append(int(part))
    if not seeds:
        raise argparse.ArgumentTypeError(f"no seeds in {text!r}")
    return seeds


def seeds_argument(text: str) -> list[int]:
    """``--seeds``: :func:`parse_seeds` with a message that says what is accepted."""
    try:
        return parse_seeds(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of seeds; use numbers and ranges such as 3, 1-10 or 1,4,7-9"
        ) from None


def parse_targets(items: Sequence[str]) -> dict[str, float]:
    """``["cifar100=0.5", "squad=83.0"]`` -> ``{"cifar100": 0.5, "squad": 83.0}``."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in CANONICAL:
            raise argparse.ArgumentTypeError(f"--target wants WORKLOAD=VALUE with WORKLOAD in {list(CANONICAL)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--target {item}: {value!r} is not a number") from None
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to ``parser``."""
    sel = parser.add_argument_group("what to simulate")
    sel.add_argument("--trace-dir", default=None, help="trace directory [POWERBANDIT_TRACE_DIR, default: the copy shipped with powerbandit]")
    sel.add_argument("--all", action="store_true", help="the 24 canonical jobs (the default selection)")
    sel.add_argument("--gpu", nargs="+", choices=GPUS, default=None, help="GPU models")
    sel.add_argument("--workload", nargs="+", choices=tuple(CANONICAL), default=None, help="workloads")
    sel.add_argument("--target", nargs="+", default=[], metavar="WORKLOAD=VALUE", help="target metric overrides")
    sel.add_argument("--eta", type=fraction_0_1, default=0.5,
                     help="energy/time trade-off in [0, 1]: 1 = energy only, 0 = time only (default 0.5)")  # fmt: skip
    sel.add_argument("--beta", type=at_least_1, default=2.0, help="early-stop multiple, >= 1 (default 2)")
    sel.add_argument("--seeds", type=seeds_argument, default=[1], help="seeds, e.g. 1-10 (default 1)")
    sel.add_argument(
        "--policy", nargs="+", choices=ALL_POLICIES, default=["zeus", "powerbandit"], help="policies to compare"
    )
    sel.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default="trace",
        help="trace replay; leave-one-out: trace replay with a cluster prior learned from the other workloads "
        "only; or a synthetic scenario: drift, concurrent, alternating (GPU pairs)",
    )
    sel.add_argument("--recurrences", type=positive_int, default=None, help="override the number of recurrences")
    sel.add_argument(
        "--max-slowdown",
        type=slowdown_factor,
        default=None,
        metavar="FACTOR",
        help="a slowdown budget instead of --eta, e.g. 1.1: minimise energy with runs at most 10%% slower than "
        "the default configuration's expected time; regret against the cheapest configuration within it "
        "(policies default, oracle, powerbandit; trace scenario)",
    )
    sel.add_argument(
        "--via-server",
        nargs="?",
        const="embedded",
        default=None,
        metavar="ADDRESS",
        help="take decisions from a real server over gRPC (ADDRESS, or an embedded one on a temporary SQLite "
        "file when none is given); trace scenario only, sequential",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None, help="directory for runs.csv, summary.json, plots")
    out.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    out.add_argument("--jobs", type=positive_int, default=1, help="parallel processes (default 1)")
    out.add_argument("--quiet", action="store_true", help="no table, no progress bar")


@dataclass(frozen=True)
class Task:
    """One simulation to run (picklable for worker processes)."""

    scenario: str
    jobs: tuple[TraceJob, ...]
    policy: str
    seed: int
    recurrences: int | None = None
    max_slowdown: float = 0.0
    prior: ClusterPrior | None = None  # the leave-one-out scenario's cluster prior


def run_task(task: Task, backend_factory: BackendFactory | None = None) -> SimResult:
    """Run one :class:`Task`."""
    job = task.jobs[0]
    if task.scenario == "drift":
        return simulate_drift(job, task.policy, task.seed, backend_factory=backend_factory)
    if task.scenario == "concurrent":
        return simulate_concurrent(job, task.policy, task.seed, backend_factory=backend_factory)
    if task.scenario == "alternating":
        return simulate_alternating(job, task.jobs[1], task.policy, task.seed, backend_factory=backend_factory)
    if task.scenario == "alternating-separate":
        return simulate_alternating_separately(
            job, task.jobs[1], task.policy, task.seed, backend_factory=backend_factory
        )
    return simulate(
        job,
        task.policy,
        task.seed,
        recurrences=task.recurrences,
        backend_factory=backend_factory,
        max_slowdown=task.max_slowdown,
        prior=task.prior,
    )


def _run_chunk(tasks: list[Task]) -> list[SimResult]:
    return [run_task(t) for t in tasks]


def build_tasks(args: argparse.Namespace, traces: TraceSet) -> list[Task]:
    """Every (job, policy, seed) the arguments select."""
    if args.max_slowdown is not None:
        unsupported = [p for p in args.policy if p not in BUDGET_POLICIES]
        if unsupported:
            raise argparse.ArgumentTypeError(
                f"--max-slowdown: policy {', '.join(unsupported)} has no slowdown budget; use {', '.join(BUDGET_POLICIES)}"
            )
        if args.scenario not in BUDGET_SCENARIOS:
            raise argparse.ArgumentTypeError(
                f"--max-slowdown works with --scenario {' or '.join(BUDGET_SCENARIOS)}, not {args.scenario}"
            )
    jobs = traces.jobs(args.gpu, args.workload, parse_targets(args.target), args.eta, args.beta)
    groups: list[tuple[TraceJob, ...]]
    if args.scenario in ("alternating", "alternating-separate"):
        by_workload: dict[str, list[TraceJob]] = {}
        for j in jobs:
            by_workload.setdefault(j.workload, []).append(j)
        groups = [(js[i], js[i + 1]) for js in by_workload.values() for i in range(len(js) - 1)]
    else:
        groups = [(j,) for j in jobs]
    if args.scenario == "drift":
        usable = []
        for (j,) in groups:
            try:
                drifted(j).oracle()
                usable.append((j,))
            except ValueError:
                print(f"simulate: skipping {j.name} for drift: after the drift no batch size reaches the "
                      "target on every seed, so there is no oracle to measure regret against", file=sys.stderr)  # fmt: skip
        groups = usable
    priors: dict[str, ClusterPrior | None] = {}
    if args.scenario == "leave-one-out":
        # every workload of the trace teaches the others, whatever the selection
        cluster = traces.jobs(None, None, parse_targets(args.target), args.eta, args.beta)
        priors = {group[0].name: leave_one_out_prior(group[0], cluster) for group in groups}
    return [
        Task(
            args.scenario, group, policy, seed, args.recurrences, args.max_slowdown or 0.0, priors.get(group[0].name)
        )
        for group in groups
        for policy in args.policy
        for seed in args.seeds
    ]


def run_tasks(
    tasks: Sequence[Task], jobs: int = 1, quiet: bool = False, backend_factory: BackendFactory | None = None
) -> list[SimResult]:
    """Run ``tasks`` (in ``jobs`` processes when > 1), results in task order."""
    results: list[SimResult | None] = [None] * len(tasks)
    with Progress(len(tasks), "simulating", delay_s=1.0 if not quiet else float("inf")) as bar:
        if jobs <= 1 or backend_factory is not None:
            for i, task in enumerate(tasks):
                results[i] = run_task(task, backend_factory)
                bar.advance()
        else:
            size = max(1, len(tasks) // (jobs * 8))
            chunks = [list(range(i, min(i + size, len(tasks)))) for i in range(0, len(tasks), size)]
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                futures = {pool.submit(_run_chunk, [tasks[i] for i in idx]): idx for idx in chunks}
                for future in as_completed(futures):
                    for i, result in zip(futures[future], future.result(), strict=True):
                        results[i] = result
                    bar.advance(len(futures[future]))
    return [r for r in results if r is not None]


def run(args: argparse.Namespace, backend_factory: BackendFactory | None = None) -> int:
    """Run the simulations the arguments ask for; returns the exit code."""
    try:
        traces = TraceSet(args.trace_dir)
        tasks = build_tasks(args, traces)
    except (OSError, TraceError, argparse.ArgumentTypeError) as err:  # missing, unreadable or malformed input
        raise UserError(str(err), exit_code=2) from None
    if not tasks:
        raise UserError("nothing selected", exit_code=2)
    start = time.perf_counter()
    if getattr(args, "via_server", None) and backend_factory is None:
        if args.scenario != "trace":
            raise UserError("--via-server supports the trace scenario only", exit_code=2)
        from simulations.server_backend import server_backends, trace_profiles

        address = None if args.via_server == "embedded" else args.via_server
        with server_backends(address, trace_profiles(traces)) as factory:
            results = run_tasks(tasks, 1, args.quiet, factory)
    else:
        results = run_tasks(tasks, args.jobs, args.quiet, backend_factory)
    elapsed = time.perf_counter() - start
    summaries = [r.summary() for r in results]
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_runs_csv(results, args.out / "runs.csv")
        summaries = write_summary_json(results, args.out / "summary.json")
        if not args.no_plots:
            write_plots(results, args.policy, args.out)
    if not args.quiet:
        print_table(summaries, args.policy, sys.stdout)
        print(f"{len(results)} simulations in {elapsed:.1f} s" + (f"; outputs in {args.out}" if args.out else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simulations``."""
    parser = argparse.ArgumentParser(prog="python -m simulations", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(lambda: run(args))
