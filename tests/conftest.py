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

REPO_ROOT = Path(__file__).resolve().parent.parent
TRACE_DIR = REPO_ROOT.parent / "shared" / "traces" / "zeus_nsdi23"

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
def server(db_url: str) -> Iterator[EmbeddedServer]:
    """The real server on an ephemeral loopback port, stopped after the test."""
    with EmbeddedServer(db_url) as running:
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
