"""How long the 24 canonical jobs x 10 seeds x {zeus, powerbandit} take (target: < 10 s, --jobs 2).

    python benchmarks/sim_speed.py [--jobs 2] [--seeds 1-10]

Measures the simulations themselves (process pool included), not the CSV/plot writing.
"""

from __future__ import annotations

import argparse
import time

from simulations.cli import add_arguments, build_tasks, parse_seeds, run_tasks
from simulations.traces import TraceSet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", type=parse_seeds, default=list(range(1, 11)))
    parser.add_argument("--trace-dir", default=None)
    opts = parser.parse_args()
    # the simulator's own parser, so that this script follows its options
    sim_parser = argparse.ArgumentParser()
    add_arguments(sim_parser)
    args = sim_parser.parse_args(["--policy", "zeus", "powerbandit", "--seeds", ",".join(map(str, opts.seeds))])
    start = time.perf_counter()
    tasks = build_tasks(args, TraceSet(opts.trace_dir))
    results = run_tasks(tasks, jobs=opts.jobs, quiet=True)
    elapsed = time.perf_counter() - start
    runs = sum(len(r.attempts) for r in results)
    print(f"{len(results)} simulations, {runs} runs, --jobs {opts.jobs}: {elapsed:.2f} s wall")


if __name__ == "__main__":
    main()
