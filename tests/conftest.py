"""Shared fixtures: a real server on 127.0.0.1 (ephemeral port) over a real SQLite file."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from client_sdk.client import OptimizerClient
from optimizer_server.server import EmbeddedServer
from powerbandit.v1 import optimizer_pb2_grpc as pb_grpc
from tests.helpers import Agent, PostgresServer, start_agent, stop


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


# ---- the node agent: a real agent process on a Unix socket in a short directory
@pytest.fixture
def root() -> Iterator[Path]:
    """A short directory (Unix socket paths are limited to 107 bytes), world-traversable for `nobody`."""
    path = Path(tempfile.mkdtemp(prefix="pba-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent(root: Path) -> Iterator[Agent]:
    a = start_agent(root)
    yield a
    stop(a.proc)
