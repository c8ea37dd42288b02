"""Running the gRPC server: the optimizer service plus health checking and reflection.

:func:`serve_forever` is what ``powerbandit serve`` runs (graceful shutdown on SIGTERM/SIGINT:
health goes NOT_SERVING, in-flight RPCs get a grace period, the store closes). :class:`EmbeddedServer`
runs the same server on a background thread, for the demo, the simulator's ``--via-server`` mode
and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sqlite3
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from optimizer_server.auth import TokenAuth
from optimizer_server.errors import InvalidArgumentError
from optimizer_server.grpc_service import OptimizerServicer, add_servicer_to_server
from optimizer_server.metrics import Metrics
from optimizer_server.policy import PolicyRegistry, default_registry
from optimizer_server.service import DEFAULT_LEASE_S, DEFAULT_MAX_RUNS_IN_FLIGHT, OptimizerService
from optimizer_server.store.base import Store
from optimizer_server.store.open import open_store
from powerbandit.addresses import ListenAddress, ListenAddressError
from powerbandit.addresses import parse_listen as check_listen
from powerbandit.v1 import optimizer_pb2

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
    ``policies``: the policies jobs may name (built here: the default registry).
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
    max_runs_in_flight: int = DEFAULT_MAX_RUNS_IN_FLIGHT
    db_timeout_s: float | None = None  # PostgreSQL: wait for a pooled connection (None: the store's 3 s)
    policies: PolicyRegistry = field(default_factory=default_registry)


def parse_listen(listen: str) -> ListenAddress:
    """Check a listen address ``HOST:PORT`` (what ``serve --listen`` and :class:`EmbeddedServer` take).

    The port must be 0 (any free port) to 65535; the host an IP address or a name that resolves.
    Raises :class:`InvalidArgumentError` naming the address and what is wrong with it (the words of
    :func:`powerbandit.addresses.parse_listen`, which checks it without the server extra).
    """
    try:
        return check_listen(listen)
    except ListenAddressError as exc:
        raise InvalidArgumentError(str(exc)) from None


def is_loopback(listen: str) -> bool:
    """Whether ``host:port`` listens on the loopback interface only (False for an invalid address)."""
    try:
        return parse_listen(listen).is_loopback
    except InvalidArgumentError:
        return False


class ListenError(OSError):
    """The server cannot bind its listen address (in use, not a local address, not permitted)."""


def _tls_credentials(cert_path: str | None, key_path: str | None) -> grpc.ServerCredentials | None:
    """Server credentials from PEM files (``None`` without TLS); a file that is not a usable PEM
    certificate or key is an :class:`InvalidArgumentError` naming it (gRPC would only say "Failed
    to bind")."""
    if not (cert_path and key_path):
        return None
    try:
        key = Path(key_path).read_bytes()
        cert = Path(cert_path).read_bytes()
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read the TLS certificate or key: {exc}") from exc
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        raise InvalidArgumentError(
            f"--tls-cert {cert_path} and --tls-key {key_path} are not a PEM certificate and its private key "
            f"({exc.reason or exc})"
        ) from None
    return grpc.ssl_server_credentials([(key, cert)])


def _check_port_free(address: ListenAddress, listen: str) -> None:
    """Raise :class:`ListenError` saying why ``address`` cannot be bound (in use, not local, not permitted).

    gRPC reports only "Failed to bind"; a plain socket bound the way gRPC binds (SO_REUSEADDR, no
    SO_REUSEPORT) tells which. Port 0 always binds.
    """
    if address.port == 0:
        return
    failures: list[OSError] = []
    infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ListenError(
                        f"cannot listen on {listen}: port {address.port} is already in use (is another "
                        "powerbandit server running there? stop it or choose another port)"
                    ) from None
                failures.append(exc)
    if failures and len(failures) == len(infos):  # e.g. not an address of this machine, or a port < 1024
        raise ListenError(f"cannot listen on {listen}: {failures[0].strerror}")


def open_store_checked(url: str, *, create: bool = True, timeout_s: float | None = None) -> Store:
    """:func:`open_store`, with a user's mistakes as :class:`InvalidArgumentError` naming the URL.

    ``create=False`` (commands that read an existing store: ``db upgrade``, ``jobs rebuild``)
    refuses a SQLite file that does not exist instead of creating an empty database. A file that
    is not a SQLite database is refused either way.
    """
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    if path and not create and path != ":memory:" and not Path(path).exists():
        raise InvalidArgumentError(
            f"no database at {url} (file {Path(path).resolve()} does not exist); check --db, or start "
            "`powerbandit serve --db URL` once to create it"
        )
    try:
        return open_store(url, timeout_s=timeout_s)
    except sqlite3.DatabaseError as exc:
        raise InvalidArgumentError(f"cannot use {url} as a powerbandit database: {exc}") from None


class RunningServer:
    """A started gRPC server with its service, health servicer and lease sweeper."""

    def __init__(self, config: ServerConfig, store: Store | None = None) -> None:
        self.config = config
        self.listen = parse_listen(config.listen)
        self.auth = (
            config.auth if config.auth is not None else TokenAuth.from_environment(config.auth_tokens_file)
        )
        if not self.auth.enabled and not self.listen.is_loopback and not config.allow_unauthenticated_remote:
            raise InvalidArgumentError(
                f"refusing to listen on {config.listen} without authentication: configure tokens "
                "(--auth-tokens-file or POWERBANDIT_AUTH_TOKENS_FILE / POWERBANDIT_AUTH_TOKENS), listen on "
                "127.0.0.1, or pass --allow-unauthenticated-remote"
            )
        if config.max_runs_in_flight < 1:
            raise InvalidArgumentError(f"--max-runs-in-flight must be >= 1, got {config.max_runs_in_flight}")
        if config.db_timeout_s is not None and not config.db_timeout_s > 0:
            raise InvalidArgumentError(f"--db-timeout-s must be > 0, got {config.db_timeout_s}")
        if bool(config.tls_cert) != bool(config.tls_key):
            raise InvalidArgumentError("TLS needs both --tls-cert and --tls-key")
        self.store = store if store is not None else open_store_checked(config.db_url, timeout_s=config.db_timeout_s)
        self.service = OptimizerService(
            self.store, config.policies, lease_s=config.lease_s, max_runs_in_flight=config.max_runs_in_flight
        )
        self.metrics = Metrics(self.store)
        self.store.transaction_observer = self.metrics.store_latency.observe
        self.service.run_observer = self.metrics.observe_finished_run
        self.metrics_port: int | None = None
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # gRPC sets SO_REUSEPORT by default: a second server on the same port would start
                # and share the traffic. Off, binding a port in use fails.
                ("grpc.so_reuseport", 0),
            ]
        )
        add_servicer_to_server(OptimizerServicer(self.service, self.auth, self.metrics), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, reflection.SERVICE_NAME, health.SERVICE_NAME), self.server
        )
        self.port = 0
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind and start; returns the bound port (useful with port 0).

        Raises :class:`ListenError` when the address cannot be bound (a port in use included).
        """
        try:
            await self._start()
        except BaseException:
            # a half-started server must not outlive the event loop (gRPC then warns from __del__)
            await self.server.stop(None)
            self.metrics.close()
            self.store.close()
            raise
        if self.config.metrics_port is not None:
            log.info("metrics on http://%s:%d/metrics", self.config.metrics_host, self.metrics_port)
        if self.auth.enabled:
            log.info("authentication: bearer tokens required")
        else:
            log.warning("authentication: OFF (no tokens configured); listening on %s only", self.address)
        log.info("TLS: %s", "on" if self.config.tls_cert else "off")
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._sweeper = asyncio.create_task(self._sweep())
        log.info("serving on %s (store %s)", self.address, self.config.db_url)
        return self.port

    async def _start(self) -> None:
        listen = self.listen.with_port(self.listen.port)
        _check_port_free(self.listen, self.config.listen)
        credentials = _tls_credentials(self.config.tls_cert, self.config.tls_key)
        if self.config.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve(self.config.metrics_port, self.config.metrics_host)
            except OSError as exc:
                raise ListenError(
                    f"cannot serve metrics on {self.config.metrics_host}:{self.config.metrics_port} "
                    f"(--metrics-port): {exc.strerror or exc}; choose another port, or -1 for no metrics"
                ) from None
        try:
            if credentials is not None:
                self.port = self.server.add_secure_port(listen, credentials)
            else:
                self.port = self.server.add_insecure_port(listen)
        except RuntimeError as exc:  # gRPC: "Failed to bind to address ..." (e.g. taken since the check)
            raise ListenError(f"cannot listen on {self.config.listen}: {exc}") from None
        if self.port == 0:
            raise ListenError(f"cannot listen on {self.config.listen}")
        await self.server.start()

    @property
    def address(self) -> str:
        """``host:port`` clients should dial (the bound port; loopback for a wildcard host)."""
        if self.listen.host in ("0.0.0.0", "::"):
            return f"127.0.0.1:{self.port}"
        return self.listen.with_port(self.port)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            try:
                expired = await self.service.expire_lapsed_runs_async()
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
        parse_listen(listen)  # a bad address fails here, before any thread starts
        self.config = ServerConfig(db_url=db_url, listen=listen, **config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="powerbandit-server", daemon=True)
        self._running: RunningServer | None = None

    def start(self) -> EmbeddedServer:
        """Start serving; returns self once the port is bound.

        Raises what :class:`RunningServer` raises (:class:`ListenError` for a port in use,
        :class:`InvalidArgumentError` for a bad address or database), with the thread stopped.
        """
        self._thread.start()

        async def boot() -> RunningServer:
            running = RunningServer(self.config)
            await running.start()  # a failed start stops the server and closes the store itself
            return running

        try:
            self._running = asyncio.run_coroutine_threadsafe(boot(), self._loop).result(timeout=30)
        except BaseException:
            self._stop_loop()
            raise
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
        """Stop serving, stop the loop and join its thread, then release the server.

        The order matters: gRPC's asyncio layer shuts itself down when its last server object is
        freed, removing its event-loop reader and closing that reader's socket. Freed here while
        the loop thread still ran, the loop could be dispatching that reader at the same moment and
        log ``OSError: [Errno 9] Bad file descriptor``. So the server is freed only once the loop
        has stopped.
        """
        running = self._running
        if running is not None:
            asyncio.run_coroutine_threadsafe(running.stop(grace_s), self._loop).result(timeout=30)
        self._stop_loop()
        self._running = None
        del running  # the last reference: gRPC shuts down now, with no loop running

    def _stop_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
