"""A slim install (no ``[server]`` extra): the commands that need it say so in one line and exit 1.

Each command runs as a subprocess in which the extra's modules cannot be imported (an import hook,
as in ``tests.helpers.BLOCK_SERVER_EXTRA``, or a ``sys.modules`` entry set to None), against a
real server on 127.0.0.1 with a registered job.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from client_sdk.client import OptimizerClient
from optimizer_server.server import EmbeddedServer
from powerbandit.cli.extras import SERVER_EXTRA_INSTALL
from tests.helpers import BLOCK_SERVER_EXTRA, REPO_ROOT, small_job

MATPLOTLIB_MISSING = """
import sys
sys.modules["matplotlib"] = None  # as if matplotlib were not installed
sys.argv = ["powerbandit", *sys.argv[1:]]
from powerbandit.cli.main import main
main()
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    db = tmp_path_factory.mktemp("slim") / "slim.db"
    with EmbeddedServer(f"sqlite:///{db}") as running:
        with OptimizerClient(running.address, timeout_s=10) as client:
            client.register_job(small_job("team/slim"))
        yield running


def slim(tmp_path: Path, *args: str, program: str = BLOCK_SERVER_EXTRA) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", program, *args],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def assert_names_the_extra(done: subprocess.CompletedProcess[str], command: str, module: str) -> None:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"error: `powerbandit {command}` needs the server extra ({module} is not installed); "
        f"install it with: {SERVER_EXTRA_INSTALL}"
    ], done.stderr
    assert SERVER_EXTRA_INSTALL == "pip install 'powerbandit[server]'"


@pytest.mark.parametrize(
    ("args", "command", "module"),
    [
        (["jobs", "plot", "team/slim", "--out", "job.png"], "jobs plot", "matplotlib"),
        (["report", "--png", "report.png"], "report --png", "matplotlib"),
        (["dashboard", "--listen", "127.0.0.1:0"], "dashboard", "grpc_reflection"),
        (["dashboard"], "dashboard", "grpc_reflection"),
    ],
)
def test_commands_that_need_the_server_extra_say_which_to_install(
    server: EmbeddedServer, tmp_path: Path, args: list[str], command: str, module: str
) -> None:
    done = slim(tmp_path, *args, "--server", server.address)
    assert_names_the_extra(done, command, module)
    assert not list(tmp_path.glob("*.png"))


def test_jobs_rebuild_needs_the_server_extra(server: EmbeddedServer, tmp_path: Path) -> None:
    done = slim(tmp_path, "jobs", "rebuild", "team/slim", "--db", f"sqlite:///{tmp_path / 'any.db'}")
    assert_names_the_extra(done, "jobs rebuild", "grpc_reflection")


def test_plot_says_so_before_it_contacts_the_server(tmp_path: Path) -> None:
    done = slim(tmp_path, "jobs", "plot", "team/slim", "--out", "job.png", "--server", "127.0.0.1:1")
    assert_names_the_extra(done, "jobs plot", "matplotlib")  # not "cannot reach the server" first


def test_matplotlib_alone_missing(server: EmbeddedServer, tmp_path: Path) -> None:
    done = slim(tmp_path, "jobs", "plot", "team/slim", "--out", "job.png", "--server", server.address,
                program=MATPLOTLIB_MISSING)  # fmt: skip
    assert_names_the_extra(done, "jobs plot", "matplotlib")


def test_what_needs_no_extra_still_works_slim(server: EmbeddedServer, tmp_path: Path) -> None:
    report = slim(tmp_path, "report", "--server", server.address)
    assert report.returncode == 0 and report.stdout.startswith("powerbandit report:"), report.stderr
    listed = slim(tmp_path, "jobs", "list", "--server", server.address)
    assert listed.returncode == 0 and "team/slim" in listed.stdout, listed.stderr
