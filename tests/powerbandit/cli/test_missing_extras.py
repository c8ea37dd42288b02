"""A slim install (no ``[server]`` extra): the commands that need it say so in one line and exit 1;
the others (``report``, ``jobs list``, ``dashboard``) work.

Each command runs as a subprocess in which the extra's modules cannot be imported (an import hook,
as in ``tests.helpers.BLOCK_SERVER_EXTRA``, or a ``sys.modules`` entry set to None), against a
real server on 127.0.0.1 with a registered job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from client_sdk.client import OptimizerClient
from optimizer_server.server import EmbeddedServer
from powerbandit.cli.extras import SERVER_EXTRA_INSTALL
from tests.helpers import BLOCK_SERVER_EXTRA, REPO_ROOT, dashboard_url, small_job

MATPLOTLIB_MISSING = """
import sys
sys.modules["matplotlib"] = None  # as if matplotlib were not installed
sys.argv = ["powerbandit", *sys.argv[1:]]
from powerbandit.cli.main import main
main()
"""

DASHBOARD_IMPORTS_SLIM = """
import argparse, importlib.abc, sys
BLOCKED = {"numpy", "matplotlib", "grpc_reflection", "prometheus_client", "optimizer_server.server"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED or name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
from powerbandit.cli.dashboard import cli, server  # all that `powerbandit dashboard` imports to serve
parser = argparse.ArgumentParser(prog="powerbandit")
cli.add_arguments(parser.add_subparsers(dest="command"))
print(parser.parse_args(["dashboard", "--listen", "[::1]:0"]).listen)
from powerbandit.addresses import parse_listen
print(parse_listen("127.0.0.1:0").is_loopback, parse_listen("0.0.0.0:8080").is_loopback)
try:
    parser.parse_args(["dashboard", "--listen", "127.0.0.1:99999"])
except SystemExit as exc:
    print("exit", exc.code)
print(sorted(name for name in BLOCKED if name in sys.modules))
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


def test_the_dashboard_imports_and_checks_its_listen_address_without_the_server_extra(tmp_path: Path) -> None:
    """``--listen`` is checked by :func:`powerbandit.addresses.parse_listen` (standard library only),
    not by the server's, which imports grpc_reflection and the policies (numpy)."""
    done = slim(tmp_path, program=DASHBOARD_IMPORTS_SLIM)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[::1]:0", "True False", "exit 2", "[]"], done.stdout
    assert "argument --listen: invalid listen address '127.0.0.1:99999': the port must be a number" in done.stderr


def test_the_dashboard_serves_slim(server: EmbeddedServer, tmp_path: Path) -> None:
    """``powerbandit dashboard`` needs no server extra: it starts, serves the cluster and a job, stops on SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCK_SERVER_EXTRA, "dashboard", "--server", server.address, "--listen", "127.0.0.1:0"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "POWERBANDIT_DASHBOARD_TOKEN": ""},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = dashboard_url(proc)
        with urllib.request.urlopen(url + "/api/cluster", timeout=30) as response:
            assert [row["job_id"] for row in json.loads(response.read())["jobs"]] == ["team/slim"]
        with urllib.request.urlopen(url + "/api/job?id=team/slim", timeout=30) as response:
            assert json.loads(response.read())["spec"]["job_id"] == "team/slim"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "Traceback" not in err and "server extra" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
