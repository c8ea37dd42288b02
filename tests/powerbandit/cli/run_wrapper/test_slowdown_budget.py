"""``powerbandit run --max-slowdown``: a job with a slowdown budget, registered from the wrapper's flags.

The wrapper runs as ``python -m powerbandit run`` with the server extra blocked (a slim install)
against the real server (EmbeddedServer over SQLite); the registered spec is read back over gRPC.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from client_sdk.client import OptimizerClient
from client_sdk.errors import NotFoundError
from optimizer_server.server import EmbeddedServer
from powerbandit.v1 import optimizer_pb2 as pb
from tests.helpers import BLOCK_SERVER_EXTRA, REPO_ROOT, SPEC, _env, _runs, _wrapper


def _registered_spec(server: EmbeddedServer) -> pb.JobSpec | None:
    with OptimizerClient(server.address, timeout_s=10) as client:
        try:
            return client.get_job("team/wrapped", max_runs=1).spec
        except NotFoundError:
            return None


def _wrap(server: EmbeddedServer, files: dict[str, Path], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_wrapper(server, files, *flags), env=_env(files), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.mark.parametrize("eta", [[], ["--eta", "1"]])
def test_the_wrapper_registers_a_job_with_a_slowdown_budget(
    server: EmbeddedServer, files: dict[str, Path], eta: list[str]
) -> None:
    done = _wrap(server, files, *SPEC, "--max-slowdown", "1.1", *eta)
    assert done.returncode == 0, done.stderr
    spec = _registered_spec(server)
    assert spec is not None
    assert spec.HasField("max_slowdown") and spec.max_slowdown == pytest.approx(1.1)
    assert spec.eta == 1.0  # a budget minimises energy
    (run,) = _runs(server)
    assert run.state == pb.RUN_STATE_COMPLETED


def test_without_a_budget_the_job_keeps_its_eta(server: EmbeddedServer, files: dict[str, Path]) -> None:
    done = _wrap(server, files, *SPEC, "--eta", "0.25")
    assert done.returncode == 0, done.stderr
    spec = _registered_spec(server)
    assert spec is not None and not spec.HasField("max_slowdown") and spec.eta == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([*SPEC, "--max-slowdown", "1.1", "--eta", "0.3"],
         "error: --max-slowdown 1.1 and --eta 0.3 are alternatives: a slowdown budget minimises energy (eta 1)"),
        (["--max-slowdown", "1.1"],
         "error: to describe the job with --max-slowdown give all of --batch-sizes, --default-batch-size, "
         "--target-metric and --max-epochs (missing: --batch-sizes, --default-batch-size, --target-metric, "
         "--max-epochs)"),
        ([*SPEC, "--max-slowdown", "0.9"], "argument --max-slowdown: 0.9 is below 1: a slowdown budget is a factor "
                                           ">= 1, e.g. 1.1 (at most 10 % slower)"),
        ([*SPEC, "--max-slowdown", "101"], "argument --max-slowdown: 101 is above 100"),
        ([*SPEC, "--max-slowdown", "nan"], "argument --max-slowdown: 'nan' is not a finite number"),
        ([*SPEC, "--eta", "1.5"], "argument --eta: 1.5 is outside [0, 1]"),
    ],
)  # fmt: skip
def test_budget_mistakes_are_one_usage_line_and_register_nothing(
    server: EmbeddedServer, files: dict[str, Path], flags: list[str], message: str
) -> None:
    done = _wrap(server, files, *flags)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert _registered_spec(server) is None  # refused before the server was asked for anything
    assert not files["record"].exists()  # the command never ran


def test_run_help_documents_the_budget() -> None:
    done = subprocess.run([sys.executable, "-c", BLOCK_SERVER_EXTRA, "run", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    text = " ".join(done.stdout.split())
    assert done.returncode == 0, done.stderr
    assert "--max-slowdown FACTOR" in text and "e.g. 1.1" in text and "another --eta is refused" in text
