"""``--via-server`` takes every decision from the real gRPC server and must match the in-process run."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from client_sdk.client import OptimizerClient
from optimizer_server.server import EmbeddedServer
from powerbandit.cli.demo import synthetic_job
from simulations.engine import simulate
from simulations.server_backend import ServerBackend
from tests.helpers import TRACE_DIR


def _decisions(result) -> list[tuple]:  # noqa: ANN001 - a SimResult
    return [(a.recurrence, a.attempt, a.batch_size, a.power_limit, a.epochs, a.cost, a.reached) for a in result.attempts]


@pytest.mark.parametrize("policy", ["powerbandit", "zeus"])
def test_via_server_matches_in_process_on_a_small_job(server: EmbeddedServer, policy: str) -> None:
    job = synthetic_job()
    local = simulate(job, policy, seed=3, recurrences=25)
    with OptimizerClient(server.address) as client:
        remote = simulate(
            job,
            policy,
            seed=3,
            recurrences=25,
            backend_factory=lambda spec: ServerBackend(client, spec, lambda _spec, _gpu, b: job.power[b]),
        )
        (stored,) = client.list_jobs(f"{job.name}/{policy}/3")
    assert _decisions(remote) == _decisions(local)
    assert len(local.attempts) >= 25
    assert stored.completed_runs == len(local.attempts)  # every attempt went through the server


@pytest.mark.traces
def test_cli_via_server_writes_the_same_runs(tmp_path: Path) -> None:
    outputs = {}
    for mode in ("local", "server"):
        out = tmp_path / mode
        args = ["--gpu", "a40", "--workload", "squad", "--policy", "powerbandit", "zeus", "--seeds", "1-2"]
        args += ["--trace-dir", str(TRACE_DIR), "--no-plots", "--quiet", "--out", str(out)]
        if mode == "server":
            args.append("--via-server")
        done = subprocess.run([sys.executable, "-m", "simulations", *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        with open(out / "runs.csv", newline="") as f:
            outputs[mode] = [
                {k: row[k] for k in ("policy", "seed", "recurrence", "attempt", "batch_size", "power_limit", "cost")}
                for row in csv.DictReader(f)
            ]
    assert outputs["local"] and outputs["server"] == outputs["local"]
