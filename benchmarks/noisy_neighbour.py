"""Does one job with many runs in flight slow the other jobs? Other jobs' Suggest latency, with and
without a big job holding ``--in-flight`` unfinished runs while it keeps suggesting.

Runs the real server (embedded, durable SQLite) in this process; rounds alternate between a quiet
and a noisy store so that drift of the machine's speed hits both alike. Prints medians per setting::

    python benchmarks/noisy_neighbour.py --in-flight 10000 --rounds 3

The big job's runs are written straight into the store (one transaction), as if 10,000 clients had
been suggested runs and never reported back; ``--max-runs-in-flight`` is raised above that.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import grpc

from optimizer_server.server import EmbeddedServer
from optimizer_server.store.base import RunRecord
from powerbandit.v1 import optimizer_pb2 as pb
from powerbandit.v1 import optimizer_pb2_grpc as pb_grpc

GPU = pb.GpuInfo(model="A40", count=1, min_power_limit_w=100, max_power_limit_w=300, power_limits_w=[100, 200, 300])


def spec(job_id: str) -> pb.JobSpec:
    return pb.JobSpec(job_id=job_id, batch_sizes=[32, 64, 128], default_batch_size=64, target_metric=0.9, max_epochs=20)


def one_round(in_flight: int, calls: int, hogs: int) -> list[float]:
    """Suggest latencies (s) of two small jobs while ``hogs`` clients hammer the big job."""
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(f"sqlite:///{Path(tmp) / 'noisy.db'}", max_runs_in_flight=in_flight + 1000)
        with server, grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.OptimizerServiceStub(channel)
            for job_id in ("big", "small-0", "small-1"):
                stub.RegisterJob(pb.RegisterJobRequest(spec=spec(job_id)))
            now = time.time()
            with server.service.store.job_transaction("big") as tx:
                for i in range(in_flight):
                    tx.insert_run(RunRecord(
                        run_id=f"big-{i}", job_id="big", state="in_flight", batch_size=64, power_limit_w=300.0,
                        profile_power_limits_w=(), phase="exploit", explanation="", gpu_model="A40", gpu_count=1,
                        max_power_w=300.0, created_unix_s=now, lease_expires_unix_s=now + 3600, request_id=f"q{i}",
                    ))  # fmt: skip
            stop = threading.Event()

            def hog() -> None:
                with grpc.insecure_channel(server.address) as ch:
                    s = pb_grpc.OptimizerServiceStub(ch)
                    while not stop.is_set():
                        run = s.Suggest(pb.SuggestRequest(job_id="big", gpu=GPU))
                        s.FailRun(pb.FailRunRequest(job_id="big", run_id=run.run_id, reason="benchmark"))

            threads = [threading.Thread(target=hog, daemon=True) for _ in range(hogs)]
            for t in threads:
                t.start()
            latencies = []
            try:
                for i in range(calls):
                    started = time.perf_counter()
                    run = stub.Suggest(pb.SuggestRequest(job_id=f"small-{i % 2}", gpu=GPU))
                    latencies.append(time.perf_counter() - started)
                    stub.FailRun(pb.FailRunRequest(job_id=f"small-{i % 2}", run_id=run.run_id, reason="benchmark"))
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=30)
    return latencies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--in-flight", type=int, default=10_000, help="runs in flight of the big job (default 10000)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per setting (default 3)")
    p.add_argument("--calls", type=int, default=300, help="small-job Suggest calls per round (default 300)")
    p.add_argument("--hogs", type=int, default=8, help="clients suggesting on the big job (default 8)")
    args = p.parse_args()
    results: dict[int, list[float]] = {0: [], args.in_flight: []}
    for _ in range(args.rounds):
        for n in results:
            results[n].append(statistics.median(one_round(n, args.calls, args.hogs)))
    for n, medians in results.items():
        print(f"big job with {n:>6} runs in flight: other jobs' Suggest median "
              f"{statistics.median(medians) * 1e3:.2f} ms (rounds: {', '.join(f'{m * 1e3:.2f}' for m in medians)})")  # fmt: skip
    quiet, noisy = (statistics.median(v) for v in results.values())
    print(f"noisy/quiet: {noisy / quiet:.2f}x")


if __name__ == "__main__":
    main()
