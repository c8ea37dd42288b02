"""The cheap benchmark scripts still run against today's code (they build on the simulator's options)."""

from __future__ import annotations

import re
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
