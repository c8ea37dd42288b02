"""The cheap benchmark scripts still run against today's code (they build on the simulator's options)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT


@pytest.mark.traces
def test_sim_speed_runs_the_canonical_jobs_and_prints_its_timing() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "sim_speed.py"), "--seeds", "1", "--jobs", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"48 simulations, \d+ runs, --jobs 1: [\d.]+ s wall\n", done.stdout), done.stdout


def test_power_settle_reads_a_counter_series_as_the_sdk_would() -> None:
    from benchmarks.power_settle import analyse

    # a counter that moves every 100 ms (an H200's), at 500 W throughout
    series = [(0.0, 0)] + [(0.037 + 0.1 * k, 50_000 * (k + 1)) for k in range(40)]
    result = analyse(series, settle_s=0.5)
    assert result["steady_w"] == 500.0 and result["period_ms"] == 100.0
    assert result["first_periods_w"] == [500.0, 500.0, 500.0]
    # two plain reads misread a window by up to one period each: sd = period / (window * sqrt(6))
    for window_s, want_pct in ((0.25, 14.2), (0.5, 7.4), (1.0, 3.9), (2.0, 2.0)):
        assert result[f"window_{window_s:g}s_error_sd_pct"] == pytest.approx(want_pct, abs=0.4)


def test_power_settle_without_a_gpu_says_so() -> None:
    from benchmarks.power_settle import main

    assert main([]) == 1


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU node: the session would run for real")
def test_gpu_session_without_a_gpu_says_so_in_one_line() -> None:
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "benchmarks" / "gpu_session.sh")], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "no NVIDIA GPU here (nvidia-smi is missing or finds none): run this on a GPU node"
