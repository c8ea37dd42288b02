"""Token authentication with scopes, TLS, the loopback rule, and Prometheus metrics."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import pytest

from client_sdk.client import OptimizerClient, OptimizerClientError
from optimizer_server.auth import TokenAuth
from optimizer_server.errors import InvalidArgumentError
from optimizer_server.server import EmbeddedServer, RunningServer, ServerConfig
from tests.helpers import gpu_pb, self_signed_certificate, small_job

TOKENS = """
# token                prefixes
team-a-secret-1        team-a/
team-b-secret-2        team-b/ shared/
admin-secret-3         *
"""


@pytest.fixture
def secured(tmp_path: Path):  # noqa: ANN201 - yields an EmbeddedServer
    with EmbeddedServer(f"sqlite:///{tmp_path / 'auth.db'}", auth=TokenAuth.parse(TOKENS), metrics_port=0) as server:
        yield server


def _code(exc: pytest.ExceptionInfo[OptimizerClientError]) -> str:
    return exc.value.code.name


def test_tokens_and_scopes(secured: EmbeddedServer) -> None:
    with OptimizerClient(secured.address, token="") as anonymous, pytest.raises(OptimizerClientError) as info:
        anonymous.list_jobs()
    assert _code(info) == "UNAUTHENTICATED" and "Bearer" in info.value.details
    with OptimizerClient(secured.address, token="team-a-secret-X") as wrong, pytest.raises(OptimizerClientError) as info:
        wrong.list_jobs()
    assert _code(info) == "UNAUTHENTICATED"
    with (
        OptimizerClient(secured.address, token="team-a-secret-1") as a,
        OptimizerClient(secured.address, token="team-b-secret-2") as b,
        OptimizerClient(secured.address, token="admin-secret-3") as admin,
    ):
        a.register_job(small_job("team-a/job"))
        b.register_job(small_job("team-b/job"))
        with pytest.raises(OptimizerClientError) as info:
            a.register_job(small_job("team-b/other"))
        assert _code(info) == "PERMISSION_DENIED" and "team-a/" in info.value.details
        for call in (lambda: b.get_job("team-a/job"), lambda: b.delete_job("team-a/job")):
            with pytest.raises(OptimizerClientError) as info:
                call()
            assert _code(info) == "PERMISSION_DENIED"
        run = a.suggest("team-a/job", _gpu_info())
        with pytest.raises(OptimizerClientError) as info:
            b.complete_run("team-a/job", run.run_id, energy_j=1, time_s=1, epochs=1, reached_target=True)
        assert _code(info) == "PERMISSION_DENIED"
        assert [j.spec.job_id for j in a.list_jobs()] == ["team-a/job"]
        assert [j.spec.job_id for j in admin.list_jobs()] == ["team-a/job", "team-b/job"]
        assert a.get_job("team-a/job").in_flight_runs == 1  # the refused completion changed nothing


def _gpu_info():  # noqa: ANN201, N802 - the SDK's GpuInfo for small_job's table
    from client_sdk.gpu import GpuInfo

    g = gpu_pb()
    return GpuInfo(g.model, g.count, g.min_power_limit_w, g.max_power_limit_w, tuple(g.power_limits_w), True)


def test_health_stays_open_with_auth(secured: EmbeddedServer) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(secured.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="")).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_without_tokens_only_loopback(tmp_path: Path) -> None:
    config = ServerConfig(db_url=f"sqlite:///{tmp_path / 'x.db'}", listen="0.0.0.0:0", auth=TokenAuth())
    with pytest.raises(InvalidArgumentError, match="without authentication"):
        RunningServer(config)
    with pytest.raises(InvalidArgumentError, match="at least 8"):
        TokenAuth.parse("short")


def test_tokens_come_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tokens"
    path.write_text(TOKENS)
    assert TokenAuth.from_environment(str(path)).enabled
    monkeypatch.setenv("POWERBANDIT_AUTH_TOKENS", "env-token-1234 team-c/")
    assert TokenAuth.from_environment().authenticate([("authorization", "Bearer env-token-1234")]).prefixes == (
        "team-c/",
    )
    monkeypatch.delenv("POWERBANDIT_AUTH_TOKENS")
    with pytest.raises(InvalidArgumentError, match="cannot read"):
        TokenAuth.from_environment(str(tmp_path / "missing"))


def test_tls(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    with EmbeddedServer(f"sqlite:///{tmp_path / 'tls.db'}", tls_cert=str(cert), tls_key=str(key)) as server:
        with OptimizerClient(server.address, root_cert=str(cert)) as client:
            client.register_job(small_job("tls/job"))
            assert client.get_job("tls/job").spec.job_id == "tls/job"
        with OptimizerClient(server.address, timeout_s=3) as plaintext, pytest.raises(OptimizerClientError):
            plaintext.get_job("tls/job")


def test_metrics_endpoint(secured: EmbeddedServer) -> None:
    with OptimizerClient(secured.address, token="admin-secret-3") as admin:
        admin.register_job(small_job("team-a/job"))
        admin.suggest("team-a/job", _gpu_info())
        with pytest.raises(OptimizerClientError):
            admin.get_job("nope")
    port = secured.running.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'powerbandit_rpc_total{code="OK",method="RegisterJob"} 1.0' in text
    assert 'powerbandit_rpc_total{code="NOT_FOUND",method="GetJob"} 1.0' in text
    assert "powerbandit_rpc_latency_seconds_bucket" in text
    assert "powerbandit_store_transaction_seconds_count" in text
    assert 'powerbandit_jobs{scope="store"} 1.0' in text
    assert 'powerbandit_runs{scope="store",state="in_flight"} 1.0' in text
    assert "powerbandit_runs_in_flight" not in text and "_created" not in text
