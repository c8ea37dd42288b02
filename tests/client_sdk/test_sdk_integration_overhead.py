"""Opt-in (``pytest -m benchmark``): ``benchmarks/integration_overhead.py`` runs briefly and prints JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.benchmark


def test_integration_overhead_prints_a_number_per_integration() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "integration_overhead.py"), "--epochs", "2", "--steps", "5",
         "--repeats", "1", "--json"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    for name in ("plain loop (client.start_run)", "PyTorch helper (train_with_powerbandit)"):
        assert results[name]["with_s"] > 0 and "overhead_per_epoch_ms" in results[name]
    assert results["powerbandit run (per run)"]["with_s"] > results["powerbandit run (per run)"]["without_s"]
    assert 0 < results["energy window begin+end (per window)"]["overhead_us"] < 10_000
