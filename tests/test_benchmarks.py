"""Opt-in (``pytest -m benchmark``): ``benchmarks/load.py`` runs briefly and prints its numbers."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.benchmark

LOAD = REPO_ROOT / "benchmarks" / "load.py"


def load(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the load script; fails the test on a non-zero exit."""
    done = subprocess.run(
        [sys.executable, str(LOAD), *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_load_against_a_spawned_sqlite_server_prints_json_numbers(tmp_path: Path) -> None:
    done = load(
        "--start-server", f"sqlite:///{tmp_path / 'bench.db'}", "--cycles", "60", "--seconds", "20",
        "--concurrency", "4", "--jobs", "2", "--json", "--token-env", "BENCH_TOKEN",
        "--server-env", "POWERBANDIT_LEASE_S=120",
        env={"BENCH_TOKEN": "not-checked-by-a-server-without-auth"},
    )  # fmt: skip
    s = json.loads(done.stdout)
    assert s["cycles"] == 60 and not s["errors"], s
    assert s["cycles_per_s"] > 0
    for name in ("Suggest", "CompleteRun", "cycle"):
        lat = s["latency_ms"][name]
        assert lat["count"] == 60 and 0 < lat["p50"] <= lat["p99"] and math.isfinite(lat["p99"]), lat


def test_load_against_the_bare_server_prints_a_table() -> None:
    done = load("--bare", "--cycles", "200", "--seconds", "20", "--concurrency", "8")
    assert re.search(r"bare: 200 cycles in [\d.]+ s = [\d.]+ cycles/s", done.stdout), done.stdout
    for name in ("Suggest", "CompleteRun", "cycle"):
        assert re.search(rf"^\s+{name}\s+200\s+[\d.]+\s+[\d.]+", done.stdout, re.M), done.stdout


def test_load_stops_at_the_time_bound() -> None:
    done = load("--bare", "--cycles", "100000000", "--seconds", "1", "--concurrency", "2", "--json")
    s = json.loads(done.stdout)
    assert 0 < s["cycles"] < 100000000 and s["elapsed_s"] < 5, s


def test_compare_bare_alternates_rounds_and_reports_the_share(tmp_path: Path) -> None:
    done = load(
        "--start-server", f"sqlite:///{tmp_path / 'bench.db'}", "--compare-bare", "--concurrency", "2", "4",
        "--rounds", "2", "--seconds", "0.5", "--cycles", "1000000", "--jobs", "2", "--json",
    )  # fmt: skip
    out = json.loads(done.stdout)
    assert [(m["label"], m["concurrency"]) for m in out["measurements"]] == [
        ("sqlite x1", 2), ("bare", 2), ("sqlite x1", 4), ("bare", 4)
    ]
    for m in out["measurements"]:
        assert len(m["rounds"]) == 2 and all(r["cycles"] > 0 and not r["errors"] for r in m["rounds"])
    for c, concurrency in zip(out["comparisons"], (2, 4), strict=True):
        assert c["concurrency"] == concurrency and len(c["real_rounds"]) == len(c["bare_rounds"]) == 2
        assert c["real_share_of_bare"] == round(c["real_cycles_per_s"] / c["bare_cycles_per_s"], 3)
