"""Bounded load on the optimizer: suggest+complete cycles, throughput and latency per RPC.

    python benchmarks/load.py --address 127.0.0.1:50051 [--address ...] [options]
    python benchmarks/load.py --start-server sqlite:////tmp/load.db [--replicas 2] [options]
    python benchmarks/load.py --bare [options]
    python benchmarks/load.py --start-server sqlite:////tmp/load.db --compare-bare --concurrency 16 64

Each cycle is ``Suggest`` then ``CompleteRun`` on one of ``--jobs`` shared jobs (registered
first, under a fresh ``--job-prefix``). ``--concurrency`` cycles are in flight at once (asyncio
tasks on grpc.aio channels, split round-robin over the addresses). The run stops after
``--cycles`` cycles or ``--seconds`` seconds, whichever comes first, and prints cycles/s and
p50/p99 latency per RPC and per cycle (``--json``: one JSON object instead).

* ``--start-server DB_URL`` spawns ``--replicas`` ``python -m powerbandit serve`` processes on
  that database (each on its own port, with ``--server-env KEY=VALUE`` added to their
  environment) and stops them at the end.
* ``--bare`` spawns ``benchmarks/bare_server.py`` (same messages, no work) instead, to see how
  much of the time is the transport and the Python gRPC stack.
* ``--token-env NAME`` sends ``authorization: Bearer $NAME`` with every call.
* ``--compare-bare`` (with ``--start-server``) also spawns the bare server and measures both in
  one run: for each ``--concurrency`` value, ``--rounds`` rounds (default 3) that each load the
  real server and then the bare one for ``--seconds``. Alternating rounds and taking the median
  keeps a slow patch of the machine from landing on one side only. It prints one table per
  round and a comparison (median cycles/s, the real service's share of the bare rate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from powerbandit.v1 import optimizer_pb2 as pb  # noqa: E402
from powerbandit.v1 import optimizer_pb2_grpc as pb_grpc  # noqa: E402

SERVING = re.compile(r"serving on (\S+:\d+)")
GPU = pb.GpuInfo(
    model="NVIDIA A40", count=1, min_power_limit_w=100, max_power_limit_w=300, power_limits_w=[100, 200, 300]
)
RPCS = ("Suggest", "CompleteRun")


# ------------------------------------------------------------------------------ server processes
class ServerProcess:
    """A server subprocess that logs ``serving on HOST:PORT`` on stderr once it listens."""

    def __init__(
        self, argv: Sequence[str], env: dict[str, str] | None = None, start_timeout_s: float = 60.0
    ) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="powerbandit-load-", suffix=".log", delete=False)  # noqa: SIM115
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        self.address = self._wait(start_timeout_s)

    def _wait(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = SERVING.search(Path(self.log.name).read_text(errors="replace"))
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        log = Path(self.log.name).read_text(errors="replace")
        self.stop()
        raise RuntimeError(f"server {' '.join(self.argv)} did not start; its log:\n{log}")

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 20 s; removes the log unless the server failed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        if self.proc.returncode in (0, -signal.SIGTERM):
            Path(self.log.name).unlink(missing_ok=True)
        else:
            print(f"server exited with {self.proc.returncode}; log kept at {self.log.name}", file=sys.stderr)


def real_server(db_url: str, env: dict[str, str]) -> ServerProcess:
    """``python -m powerbandit serve`` on ``db_url`` and a free loopback port."""
    argv = [sys.executable, "-m", "powerbandit", "serve", "--db", db_url, "--listen", "127.0.0.1:0"]
    return ServerProcess(argv, env)  # default INFO logging, as deployed (its log goes to a temp file)


def bare_server(env: dict[str, str]) -> ServerProcess:
    """``benchmarks/bare_server.py`` on a free loopback port."""
    return ServerProcess([sys.executable, str(REPO_ROOT / "benchmarks" / "bare_server.py")], env)


# -------------------------------------------------------------------------------------- load
@dataclass
class Results:
    """Latencies (seconds) per RPC and per cycle, and what went wrong."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in (*RPCS, "cycle")})
    errors: dict[str, int] = field(default_factory=dict)
    error_examples: list[str] = field(default_factory=list)
    cycles: int = 0
    elapsed_s: float = 0.0

    def error(self, method: str, exc: grpc.RpcError) -> None:
        code = exc.code()  # type: ignore[attr-defined]
        key = f"{method}:{code.name if code else 'UNKNOWN'}"
        self.errors[key] = self.errors.get(key, 0) + 1
        if len(self.error_examples) < 5:
            self.error_examples.append(f"{key} {exc.details()}")  # type: ignore[attr-defined]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


async def run_load(
    addresses: Sequence[str],
    *,
    cycles: int,
    seconds: float,
    concurrency: int,
    jobs: int,
    job_prefix: str,
    token: str | None,
    register: bool = True,
) -> Results:
    """Register the jobs, then run bounded suggest+complete cycles with ``concurrency`` in flight."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    stubs = [pb_grpc.OptimizerServiceStub(c) for c in channels]
    job_ids = [f"{job_prefix}/job-{i}" for i in range(jobs)]
    results = Results()
    try:
        if register:
            for job_id in job_ids:
                spec = pb.JobSpec(job_id=job_id, batch_sizes=[32, 64, 128, 256], default_batch_size=64,
                                  target_metric=0.9, max_epochs=20, seed=1)  # fmt: skip
                await stubs[0].RegisterJob(pb.RegisterJobRequest(spec=spec), metadata=metadata, timeout=30)
        for channel in channels:  # connect every channel before the clock starts
            await asyncio.wait_for(channel.channel_ready(), timeout=30)

        started = 0
        start = time.perf_counter()
        deadline = start + seconds

        async def worker(index: int) -> None:
            nonlocal started
            stub = stubs[index % len(stubs)]
            while started < cycles and time.perf_counter() < deadline:
                n = started
                started += 1
                job_id = job_ids[n % len(job_ids)]
                t0 = time.perf_counter()
                try:
                    run = await stub.Suggest(
                        pb.SuggestRequest(job_id=job_id, gpu=GPU), metadata=metadata, timeout=60
                    )
                except grpc.RpcError as exc:
                    results.error("Suggest", exc)
                    continue
                t1 = time.perf_counter()
                request = pb.CompleteRunRequest(
                    job_id=job_id, run_id=run.run_id, energy_j=1000.0 + n % 997, time_s=10.0 + n % 13,
                    epochs=float(1 + n % 9), reached_target=n % 5 != 0,
                )  # fmt: skip
                try:
                    await stub.CompleteRun(request, metadata=metadata, timeout=60)
                except grpc.RpcError as exc:
                    results.error("CompleteRun", exc)
                    continue
                t2 = time.perf_counter()
                results.latencies["Suggest"].append(t1 - t0)
                results.latencies["CompleteRun"].append(t2 - t1)
                results.latencies["cycle"].append(t2 - t0)
                results.cycles += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        results.elapsed_s = time.perf_counter() - start
    finally:
        for channel in channels:
            await channel.close()
    return results


def summary(results: Results, label: str, concurrency: int, addresses: int) -> dict[str, Any]:
    """The numbers as a JSON-able dict (latencies in milliseconds)."""
    out: dict[str, Any] = {
        "label": label,
        "concurrency": concurrency,
        "addresses": addresses,
        "cycles": results.cycles,
        "elapsed_s": round(results.elapsed_s, 3),
        "cycles_per_s": round(results.cycles / results.elapsed_s, 1) if results.elapsed_s > 0 else 0.0,
        "errors": results.errors,
        "error_examples": results.error_examples,
        "latency_ms": {},
    }
    for name, values in results.latencies.items():
        out["latency_ms"][name] = {
            "count": len(values),
            "p50": round(percentile(values, 50) * 1e3, 2),
            "p99": round(percentile(values, 99) * 1e3, 2),
            "mean": round(statistics.fmean(values) * 1e3, 2) if values else float("nan"),
            "max": round(max(values) * 1e3, 2) if values else float("nan"),
        }
    return out


def print_table(s: dict[str, Any]) -> None:
    """One human-readable summary table."""
    print(
        f"{s['label']}: {s['cycles']} cycles in {s['elapsed_s']:.2f} s = {s['cycles_per_s']:.1f} cycles/s "
        f"({s['concurrency']} in flight, {s['addresses']} address(es))"
    )
    print(f"  {'rpc':<12} {'count':>7} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'max ms':>9}")
    for name, lat in s["latency_ms"].items():
        print(
            f"  {name:<12} {lat['count']:>7} {lat['p50']:>9.2f} {lat['p99']:>9.2f} {lat['mean']:>9.2f} {lat['max']:>9.2f}"
        )
    if s["errors"]:
        print(f"  errors: {s['errors']}  e.g. {s['error_examples'][:2]}")


def parse_env_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings as a dict."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--server-env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--address", action="append", help="host:port of a running server (repeat for replicas)"
    )
    target.add_argument("--start-server", metavar="DB_URL", help="spawn `powerbandit serve --db DB_URL`")
    target.add_argument("--bare", action="store_true", help="spawn benchmarks/bare_server.py (no work)")
    p.add_argument("--replicas", type=int, default=1, help="with --start-server: servers on the database (1)")
    p.add_argument("--cycles", type=int, default=2000, help="stop after this many cycles (2000)")
    p.add_argument("--seconds", type=float, default=10.0, help="or after this many seconds (10)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[16],
                   help="cycles in flight at once (16); several values: one measurement each")  # fmt: skip
    p.add_argument("--jobs", type=int, default=8, help="shared jobs the cycles spread over (8)")
    p.add_argument("--job-prefix", default=None, help="job id prefix (default: load-<random>)")
    p.add_argument("--token-env", metavar="NAME", help="send `authorization: Bearer $NAME` with every call")
    p.add_argument("--server-env", metavar="KEY=VALUE", action="append", default=[],
                   help="environment of spawned servers (repeatable)")  # fmt: skip
    p.add_argument("--compare-bare", action="store_true",
                   help="with --start-server: also measure the bare server, in alternating rounds")  # fmt: skip
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds per concurrency (1; 3 with --compare-bare): the median is reported")  # fmt: skip
    p.add_argument("--label", default=None, help="name of this run in the output")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p


def compare(real: dict[str, Any], bare: dict[str, Any]) -> dict[str, Any]:
    """The median rates of alternating rounds of the real and the bare server, and their ratio."""
    real_rate = statistics.median(r["cycles_per_s"] for r in real["rounds"])
    bare_rate = statistics.median(r["cycles_per_s"] for r in bare["rounds"])
    return {
        "concurrency": real["concurrency"],
        "real_cycles_per_s": real_rate,
        "bare_cycles_per_s": bare_rate,
        "real_share_of_bare": round(real_rate / bare_rate, 3) if bare_rate else float("nan"),
        "real_rounds": [r["cycles_per_s"] for r in real["rounds"]],
        "bare_rounds": [r["cycles_per_s"] for r in bare["rounds"]],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (1 when no cycle completed)."""
    args = build_parser().parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (3 if args.compare_bare else 1)
    if (
        args.cycles < 1 or args.seconds <= 0 or min(args.concurrency) < 1 or args.jobs < 1
        or args.replicas < 1 or rounds < 1
    ):  # fmt: skip
        raise SystemExit("--cycles, --seconds, --concurrency, --jobs, --replicas and --rounds must be positive")
    if args.compare_bare and not args.start_server:
        raise SystemExit("--compare-bare needs --start-server DB_URL (the real server to compare)")
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise SystemExit(f"--token-env {args.token_env}: that environment variable is empty or unset")
    env = parse_env_pairs(args.server_env)
    servers: list[ServerProcess] = []
    bare: ServerProcess | None = None
    measured: list[dict[str, Any]] = []  # per (target, concurrency): the summary of each round
    comparisons: list[dict[str, Any]] = []
    job_prefix = args.job_prefix or f"load-{uuid.uuid4().hex[:8]}"
    try:
        if args.bare:
            servers.append(bare_server(env))
            label = args.label or "bare"
        elif args.start_server:
            for _ in range(args.replicas):
                servers.append(real_server(args.start_server, env))
            label = args.label or f"{args.start_server.split(':', 1)[0]} x{args.replicas}"
        else:
            label = args.label or ",".join(args.address)
        if args.compare_bare:
            bare = bare_server(env)
        addresses = [s.address for s in servers] or args.address
        targets = [(label, addresses)] + ([("bare", [bare.address])] if bare is not None else [])
        for concurrency in args.concurrency:
            per_target: dict[str, dict[str, Any]] = {
                name: {"label": name, "concurrency": concurrency, "rounds": []}
                for name, _ in targets
            }
            for round_index in range(rounds):
                for name, target in targets:
                    results = asyncio.run(
                        run_load(
                            target,
                            cycles=args.cycles,
                            seconds=args.seconds,
                            concurrency=concurrency,
                            jobs=args.jobs,
                            job_prefix=job_prefix,
                            token=token,
                        )
                    )
                    round_label = name if rounds == 1 else f"{name} (round {round_index + 1}/{rounds})"
                    s = summary(results, round_label, concurrency, len(target))
                    per_target[name]["rounds"].append(s)
                    if not args.json:
                        print_table(s)
            measured.extend(per_target.values())
            if bare is not None:
                comparisons.append(compare(per_target[label], per_target["bare"]))
    finally:
        for server in [*servers, *([bare] if bare is not None else [])]:
            server.stop()
    total = sum(r["cycles"] for entry in measured for r in entry["rounds"])
    if args.json:
        if len(measured) == 1 and rounds == 1:
            print(json.dumps(measured[0]["rounds"][0]))
        else:
            print(json.dumps({"measurements": measured, "comparisons": comparisons}))
    elif comparisons:
        print(f"\nmedian of {rounds} alternating rounds of {args.seconds:g} s each:")
        print(f"  {'in flight':>9} {'real cycles/s':>14} {'bare cycles/s':>14} {'real/bare':>10}")
        for c in comparisons:
            print(
                f"  {c['concurrency']:>9} {c['real_cycles_per_s']:>14.1f} {c['bare_cycles_per_s']:>14.1f}"
                f" {c['real_share_of_bare']:>10.1%}"
            )
    return 0 if total > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
