"""Measure the web dashboard's page load time against a store of many jobs (default 1,000).

    python benchmarks/dashboard_load.py [--jobs 1000] [--runs-per-job 8] [--db /tmp/dash.db] [--json]

1. Fills a SQLite store (or reuses ``--db`` when it already holds the jobs) through the optimizer
   service: ``--jobs`` jobs of the built-in synthetic workload, each with ``--runs-per-job``
   runs (suggest, power profile when asked, complete), on two GPU models.
2. Starts ``powerbandit serve`` on it and ``powerbandit dashboard`` against that server, both as
   separate processes, as an operator would.
3. Opens the pages in headless Chromium (DevTools over a pipe) and reads, from the page itself,
   the milliseconds from navigation start to the first complete render (``data-first-load-ms``):
   the cluster page cold (the dashboard has read nothing yet: one ``ListJobs`` and a ``GetJob``
   per job for the energy-over-time curves), the cluster page again (warm: one ``ListJobs``,
   runs from the dashboard's cache), and one job page. Also the ``/api/cluster`` time alone.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from optimizer_server.policy.base import JobSpec  # noqa: E402
from optimizer_server.service import OptimizerService, RunGpu  # noqa: E402
from optimizer_server.store.open import open_store  # noqa: E402
from powerbandit.cli.demo import synthetic_job  # noqa: E402


def fill(db: Path, jobs: int, runs_per_job: int, seed: int = 1) -> float:
    """Create the jobs and their runs directly through the service; returns the seconds it took."""
    started = time.perf_counter()
    trace = synthetic_job()
    rng = random.Random(seed)
    limits = tuple(sorted(trace.power_limits))
    gpus = [RunGpu(model, 1, limits[0], limits[-1], limits) for model in ("Bench A100", "Bench H100")]
    store = open_store(f"sqlite:///{db}")
    service = OptimizerService(store)
    try:
        for j in range(jobs):
            spec = JobSpec(f"team-{j % 10}/job-{j:04d}", trace.batch_sizes, trace.default_batch_size,
                           trace.target_metric, trace.max_epochs, seed=j + 1)  # fmt: skip
            service.register_job(spec)
            for _ in range(runs_per_job):
                gpu = gpus[rng.random() < 0.3]
                run = service.suggest(spec.job_id, gpu).run
                b = run.batch_size
                limit = run.power_limit_w
                if limit == 0:  # asked to profile: every limit, one step each
                    points = [(p, trace.power[b][p].average_power_w, trace.power[b][p].time_per_epoch_s) for p in limits]
                    limit, _ = service.report_profile(spec.job_id, run.run_id, 1.0, points)
                point = trace.power[b][limit]
                epochs = rng.choice(trace.target_epochs[b])
                reached = epochs is not None
                epochs = epochs if reached else trace.max_epochs
                time_s = point.time_per_epoch_s * epochs
                service.complete_run(spec.job_id, run.run_id, energy_j=point.average_power_w * time_s, time_s=time_s,
                                     epochs=float(epochs), reached_target=reached, power_limit_w=limit)  # fmt: skip
    finally:
        store.close()
    return time.perf_counter() - started


def spawn(args: list[str], pattern: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m powerbandit ARGS`` and wait for a line matching ``pattern`` (its address)."""
    proc = subprocess.Popen([sys.executable, "-m", "powerbandit", *args], cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(pattern, line)
        if match:
            return proc, match.group(1)
    proc.kill()
    raise RuntimeError(f"powerbandit {' '.join(args)} did not start")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def page_load_ms(browser: Any, url: str) -> tuple[int, str]:
    """Milliseconds from navigation start to the page's first complete render, and what it showed."""
    browser.navigate(url)
    browser.wait_for("document.body && document.body.dataset.firstLoadMs", timeout_s=300)
    return int(browser.evaluate("document.body.dataset.firstLoadMs")), browser.evaluate("document.body.dataset.loaded")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--runs-per-job", type=int, default=8)
    parser.add_argument("--db", type=Path, help="SQLite file to fill (reused when it already holds the jobs)")
    parser.add_argument("--repeats", type=int, default=3, help="warm page loads to take the median of")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from tests.test_dashboard_browser import Browser, find_chromium

    chromium = find_chromium()
    if chromium is None:
        print("error: no Chromium installed (apt-get install chromium)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "dash.db"
        fill_s = None
        if not db.exists():
            fill_s = fill(db, args.jobs, args.runs_per_job)
        server, address = spawn(["serve", "--db", f"sqlite:///{db}", "--listen", f"127.0.0.1:{free_port()}"],
                                r"serving on (\S+)")  # fmt: skip
        dashboard, url = spawn(["dashboard", "--server", address, "--listen", "127.0.0.1:0"], r"dashboard on (\S+)")
        browser = Browser(chromium, width=1280, height=1000, timeout_s=300)
        try:
            cold_ms, shown = page_load_ms(browser, url)
            warm = [page_load_ms(browser, url)[0] for _ in range(args.repeats)]
            api = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                body = json.loads(urllib.request.urlopen(url + "api/cluster", timeout=300).read())
                api.append((time.perf_counter() - t) * 1000)
            job_id = body["jobs"][len(body["jobs"]) // 2]["job_id"]
            job_ms, runs = page_load_ms(browser, f"{url}job?id={job_id}")
        finally:
            browser.close()
            for proc in (dashboard, server):
                proc.terminate()
                proc.wait(timeout=30)
    result = {
        "jobs": int(shown),
        "runs_per_job": args.runs_per_job,
        "fill_s": round(fill_s, 1) if fill_s is not None else None,
        "cluster_page_cold_ms": cold_ms,
        "cluster_page_warm_ms_median": statistics.median(warm),
        "api_cluster_warm_ms_median": round(statistics.median(api)),
        "api_cluster_bytes": len(json.dumps(body)),
        "job_page_ms": job_ms,
        "job_page_runs": int(runs),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>30}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
