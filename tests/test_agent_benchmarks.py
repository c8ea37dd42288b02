"""The agent's measurement scripts run for real (simulated GPUs): benchmarks/agent_restore.py and gpu_check --agent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_agent_restore_benchmark_reports_numbers() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/agent_restore.py", "--trials", "3", "--calls", "20", "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["trials"] == 3 and 0 <= result["restore_s"]["median"] <= result["restore_s"]["max"] < 2.0
    assert 0 < result["set_power_limit_ms"]["median"] <= result["set_power_limit_ms"]["p99"]
    assert result["agent_memory_kib"]["VmRSS"] > 0


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_gpu_check_agent_mode_on_simulated_gpus() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--agent", "--simulate"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "as nobody" in done.stdout and "original 300 W back" in done.stdout and "== OK" in done.stdout
