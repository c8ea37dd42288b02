"""Shared fixtures: a real server on 127.0.0.1 (ephemeral port) over a real SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from client_sdk.client import Job, OptimizerClient
from optimizer_server.server import EmbeddedServer
from powerbandit.v1 import optimizer_pb2 as pb
from powerbandit.v1 import optimizer_pb2_grpc as pb_grpc
from simulations.traces import default_trace_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
TRACE_DIR = default_trace_dir()
"""The published traces: the copy shipped in the package, or ``$POWERBANDIT_TRACE_DIR``."""

# A small replay table: batch size -> power limit -> (average power W, seconds per epoch).
SMALL_TABLE = {
    32: {100.0: (90.0, 30.0), 200.0: (170.0, 20.0), 300.0: (240.0, 18.0)},
    64: {100.0: (95.0, 20.0), 200.0: (180.0, 12.0), 300.0: (250.0, 11.0)},
    128: {100.0: (98.0, 16.0), 200.0: (190.0, 9.0), 300.0: (260.0, 8.5)},
}


def small_job(job_id: str = "team/job", **overrides: object) -> Job:
    """A job matching :data:`SMALL_TABLE`."""
    values: dict[str, object] = {
        "job_id": job_id,
        "batch_sizes": (32, 64, 128),
        "default_batch_size": 64,
        "target_metric": 0.9,
        "max_epochs": 20,
        "seed": 7,
    }
    values.update(overrides)
    return Job(**values)  # type: ignore[arg-type]


def gpu_pb(model: str = "NVIDIA A40", count: int = 1) -> pb.GpuInfo:
    """A Suggest request's GPU field."""
    return pb.GpuInfo(
        model=model, count=count, min_power_limit_w=100, max_power_limit_w=300, power_limits_w=[100, 200, 300]
    )


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A fresh SQLite database file."""
    return f"sqlite:///{tmp_path / 'powerbandit.db'}"


@pytest.fixture
def server(any_db_url: str) -> Iterator[EmbeddedServer]:
    """The real server on an ephemeral loopback port over SQLite and over PostgreSQL, stopped after the test."""
    with EmbeddedServer(any_db_url) as running:
        yield running


@pytest.fixture
def stub(server: EmbeddedServer) -> Iterator[pb_grpc.OptimizerServiceStub]:
    """A raw generated stub (no SDK) connected to :func:`server`."""
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.OptimizerServiceStub(channel)


@pytest.fixture
def client(server: EmbeddedServer) -> Iterator[OptimizerClient]:
    """The SDK client connected to :func:`server`."""
    with OptimizerClient(server.address, timeout_s=10) as c:
        yield c


# ----------------------------------------------------------------------------------- PostgreSQL
def _postgres_bin() -> Path | None:
    import shutil

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """A throwaway PostgreSQL cluster in a temporary directory, on a free loopback port."""

    def __init__(self, root: Path) -> None:
        import os
        import socket
        import subprocess

        bindir = _postgres_bin()
        if bindir is None:
            pytest.skip("PostgreSQL is not installed (initdb not found); .ci/run installs it with apt-get")
        self.bindir = bindir
        self.data = root / "pgdata"
        self.socket_dir = root / "sock"
        self.socket_dir.mkdir()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._prefix: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
            import shutil

            shutil.chown(root, "postgres")
            shutil.chown(self.socket_dir, "postgres")
            self._prefix = ["runuser", "-u", "postgres", "--"]
        run = lambda *args: subprocess.run([*self._prefix, *args], check=True, capture_output=True, timeout=120)  # noqa: E731
        run(str(bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        opts = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        run(str(bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-w", "-l", str(root / "pg.log"), "start")
        self._run = run
        self._databases = 0

    def new_database(self) -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        self._databases += 1
        name = f"test_{self._databases}"
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stop the cluster (fast shutdown)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the test session, stopped and removed at its end."""
    import shutil
    import tempfile

    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'powerbandit[postgres]')")
    # Not under pytest's tmp_path: that is private to root, and the cluster runs as 'postgres'.
    root = Path(tempfile.mkdtemp(prefix="powerbandit-pg-"))
    try:
        server = PostgresServer(root)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def any_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of each kind (the same behaviour tests run against both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'any.db'}"
    return request.getfixturevalue("postgres_server").new_database()
