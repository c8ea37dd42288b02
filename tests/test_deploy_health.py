"""``powerbandit health``: the container's health check, against real gRPC servers on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from optimizer_server.server import EmbeddedServer
from powerbandit.cli.health import default_address
from tests.helpers import REPO_ROOT, self_signed_certificate


def health_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m powerbandit health ARGS`` (the installed command's code, as a subprocess)."""
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("POWERBANDIT_")}
    run_env.update(env or {})
    run_env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "powerbandit", "health", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=run_env,
        check=False,
    )


@pytest.fixture
def plain_health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    """A bare gRPC server with only the health service, whose status the test sets."""
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(grace=None)


def test_serving_server_exits_0(db_url: str) -> None:
    with EmbeddedServer(db_url) as server:
        done = health_cli("--server", server.address)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"{server.address}: SERVING"
        service = health_cli("--server", server.address, "--service", "powerbandit.v1.OptimizerService")
        assert service.returncode == 0 and service.stdout.strip().endswith("SERVING")


def test_not_serving_and_unknown_service_exit_1(
    plain_health_server: tuple[str, health.HealthServicer],
) -> None:
    address, servicer = plain_health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    done = health_cli("--server", address)
    assert done.returncode == 1 and done.stdout.strip() == f"{address}: NOT_SERVING"
    unknown = health_cli("--server", address, "--service", "no.such.Service")
    assert unknown.returncode == 1
    assert (
        unknown.stderr.strip() == f"error: {address} (no.such.Service): the server does not know this service"
    )


def test_unreachable_server_is_one_error_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    done = health_cli("--server", f"127.0.0.1:{port}", "--timeout-s", "2")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith(f"error: 127.0.0.1:{port}:")
        and "Traceback" not in done.stderr
    )
    bad = health_cli("--timeout-s", "0")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --timeout-s must be positive, got 0"


def test_tls_server(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    with EmbeddedServer(f"sqlite:///{tmp_path / 'tls.db'}", tls_cert=str(cert), tls_key=str(key)) as server:
        done = health_cli("--server", server.address, "--tls-root-cert", str(cert))
        assert done.returncode == 0 and done.stdout.strip().endswith("SERVING"), done.stderr
        from_env = health_cli("--server", server.address, env={"POWERBANDIT_TLS_ROOT_CERT": str(cert)})
        assert from_env.returncode == 0, from_env.stderr
        plaintext = health_cli("--server", server.address, "--timeout-s", "2")
        assert plaintext.returncode == 1 and plaintext.stderr.startswith(f"error: {server.address}")
    missing = health_cli("--tls-root-cert", str(tmp_path / "nope.pem"))
    assert missing.returncode == 2 and "cannot read --tls-root-cert" in missing.stderr


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "127.0.0.1:50051"),
        ({"POWERBANDIT_LISTEN": "0.0.0.0:7000"}, "127.0.0.1:7000"),
        ({"POWERBANDIT_LISTEN": "[::]:7001"}, "127.0.0.1:7001"),
        ({"POWERBANDIT_LISTEN": "10.1.2.3:7002"}, "10.1.2.3:7002"),
        ({"POWERBANDIT_LISTEN": "0.0.0.0:7000", "POWERBANDIT_SERVER": "pb.example:9"}, "pb.example:9"),
    ],
)
def test_default_address_follows_the_server_environment(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    monkeypatch.delenv("POWERBANDIT_LISTEN", raising=False)
    monkeypatch.delenv("POWERBANDIT_SERVER", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert default_address() == expected


def test_health_from_the_servers_own_environment(db_url: str) -> None:
    """The image runs `powerbandit health` with no flag: the address comes from POWERBANDIT_LISTEN."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with EmbeddedServer(db_url, listen=f"127.0.0.1:{port}"):  # loopback only in tests (0.0.0.0: see above)
        done = health_cli(env={"POWERBANDIT_LISTEN": f"127.0.0.1:{port}"})
        assert done.returncode == 0 and done.stdout.strip() == f"127.0.0.1:{port}: SERVING", done.stderr
