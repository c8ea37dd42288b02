"""Running the gRPC server: the optimizer service plus health checking and reflection.

:func:`serve_forever` is what ``powerbandit serve`` runs (graceful shutdown on SIGTERM/SIGINT:
health goes NOT_SERVING, in-flight RPCs get a grace period, the store closes). :class:`EmbeddedServer`
runs the same server on a background thread, for the demo, the simulator's ``--via-server`` mode
and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from optimizer_server.auth import TokenAuth
from optimizer_server.errors import InvalidArgumentError
from optimizer_server.grpc_service import OptimizerServicer
from optimizer_server.metrics import Metrics
from optimizer_server.service import DEFAULT_LEASE_S, OptimizerService
from optimizer_server.store.base import Store, open_store
from powerbandit.v1 import optimizer_pb2, optimizer_pb2_grpc

log = logging.getLogger("powerbandit.server")

SERVICE_NAME = optimizer_pb2.DESCRIPTOR.services_by_name["OptimizerService"].full_name
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass
class ServerConfig:
    """How to run the server.

    ``auth``: the token checker; ``None`` reads tokens from ``auth_tokens_file`` or the environment
    (see :mod:`optimizer_server.auth`). Without tokens the server refuses to listen beyond loopback
    unless ``allow_unauthenticated_remote`` is set. ``tls_cert``/``tls_key``: PEM files for TLS.
    ``metrics_port``: serve Prometheus metrics on ``metrics_host:metrics_port`` (None: off).
    """

    db_url: str = "sqlite:///powerbandit.db"
    listen: str = "127.0.0.1:50051"
    lease_s: float = DEFAULT_LEASE_S
    sweep_interval_s: float = 30.0
    grace_s: float = 10.0
    auth: TokenAuth | None = None
    auth_tokens_file: str | None = None
    allow_unauthenticated_remote: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"


def is_loopback(listen: str) -> bool:
    """Whether ``host:port`` listens on the loopback interface only."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RunningServer:
    """A started gRPC server with its service, health servicer and lease sweeper."""

    def __init__(self, config: ServerConfig, store: Store | None = None) -> None:
        self.config = config
        self.auth = config.auth if config.auth is not None else TokenAuth.from_environment(config.auth_tokens_file)
        if not self.auth.enabled and not is_loopback(config.listen) and not config.allow_unauthenticated_remote:
            raise InvalidArgumentError(
                f"refusing to listen on {config.listen} without authentication: configure tokens "
                "(--auth-tokens-file or POWERBANDIT_AUTH_TOKENS_FILE / POWERBANDIT_AUTH_TOKENS), listen on "
                "127.0.0.1, or pass --allow-unauthenticated-remote"
            )
        if bool(config.tls_cert) != bool(config.tls_key):
            raise InvalidArgumentError("TLS needs both --tls-cert and --tls-key")
        self.store = store if store is not None else open_store(config.db_url)
        self.service = OptimizerService(self.store, lease_s=config.lease_s)
        self.metrics = Metrics(self.store)
        self.store.transaction_observer = self.metrics.store_latency.observe
        self.metrics_port: int | None = None
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        optimizer_pb2_grpc.add_OptimizerServiceServicer_to_server(
            OptimizerServicer(self.service, self.auth, self.metrics), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, reflection.SERVICE_NAME, health.SERVICE_NAME), self.server
        )
        self.port = 0
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind and start; returns the bound port (useful with port 0)."""
        if self.config.tls_cert and self.config.tls_key:
            try:
                key = Path(self.config.tls_key).read_bytes()
                cert = Path(self.config.tls_cert).read_bytes()
            except OSError as exc:
                raise InvalidArgumentError(f"cannot read the TLS certificate or key: {exc}") from exc
            credentials = grpc.ssl_server_credentials([(key, cert)])
            self.port = self.server.add_secure_port(self.config.listen, credentials)
        else:
            self.port = self.server.add_insecure_port(self.config.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        await self.server.start()
        if self.config.metrics_port is not None:
            self.metrics_port = self.metrics.serve(self.config.metrics_port, self.config.metrics_host)
            log.info("metrics on http://%s:%d/metrics", self.config.metrics_host, self.metrics_port)
        if self.auth.enabled:
            log.info("authentication: bearer tokens required")
        else:
            log.warning("authentication: OFF (no tokens configured); listening on %s only", self.config.listen)
        log.info("TLS: %s", "on" if self.config.tls_cert else "off")
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._sweeper = asyncio.create_task(self._sweep())
        log.info("serving on %s (store %s)", self.address, self.config.db_url)
        return self.port

    @property
    def address(self) -> str:
        """``host:port`` clients should dial."""
        host = self.config.listen.rsplit(":", 1)[0]
        if host in ("", "0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            try:
                expired = await self.store.submit(self.service.expire_lapsed_runs)
                if expired:
                    log.info("expired %d runs whose lease lapsed", expired)
            except Exception:  # keep sweeping; the next round may succeed
                log.exception("lease sweep failed")

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, let in-flight RPCs finish, close the store."""
        grace = self.config.grace_s if grace_s is None else grace_s
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.server.stop(grace)
        self.metrics.close()
        self.store.close()
        log.info("server stopped")


async def serve_forever(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    running = RunningServer(config)
    await running.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutdown requested; draining for up to %.0f s", config.grace_s)
    await running.stop()


class EmbeddedServer:
    """The real server on a background thread and event loop. Use as a context manager.

    >>> with EmbeddedServer("sqlite:///tmp.db") as server:   # doctest: +SKIP
    ...     client = OptimizerClient(server.address)
    """

    def __init__(self, db_url: str, listen: str = "127.0.0.1:0", **config: Any) -> None:
        self.config = ServerConfig(db_url=db_url, listen=listen, **config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="powerbandit-server", daemon=True)
        self._running: RunningServer | None = None

    def start(self) -> EmbeddedServer:
        """Start serving; returns self once the port is bound."""
        self._thread.start()

        async def boot() -> RunningServer:
            running = RunningServer(self.config)
            await running.start()
            return running

        self._running = asyncio.run_coroutine_threadsafe(boot(), self._loop).result(timeout=30)
        return self

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        assert self._running is not None, "server not started"
        return self._running.address

    @property
    def running(self) -> RunningServer:
        """The running server (its port, metrics port, service)."""
        assert self._running is not None, "server not started"
        return self._running

    @property
    def service(self) -> OptimizerService:
        """The in-process service (for tests that check the store directly)."""
        assert self._running is not None, "server not started"
        return self._running.service

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop serving and join the thread."""
        if self._running is not None:
            asyncio.run_coroutine_threadsafe(self._running.stop(grace_s), self._loop).result(timeout=30)
            self._running = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
