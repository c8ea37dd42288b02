"""The agent process: a credential-stamping relay in front of a private gRPC server.

gRPC's Python server does not expose a connection's socket, so it cannot read ``SO_PEERCRED``
itself. The agent therefore listens on the public socket with a small relay: for each accepted
connection it reads the peer credentials from the kernel, opens a connection to the private gRPC
socket (in a directory only root can enter) from a freshly bound, unguessable abstract address, and
records ``address -> credentials``. The servicer looks the caller up by ``context.peer()``, which is
that address; a request's own fields never identify anyone. Bytes are relayed unchanged.

The servicer (:class:`AgentServicer`) only translates: protobuf in, :class:`LeaseManager` call,
protobuf out, and domain errors to status codes in one place (:func:`status_of`).
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import logging
import os
import secrets
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from client_sdk.devices.access import DeviceBackend
from powerbandit.agent.entitlement import Caller, peer_credentials
from powerbandit.agent.errors import (
    AgentDomainError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from powerbandit.agent.leases import HolderWatchdog, Journal, Lease, LeaseManager
from powerbandit.agent.v1 import agent_pb2 as pb
from powerbandit.agent.v1 import agent_pb2_grpc as pb_grpc

__all__ = ["AgentConfig", "AgentServer", "AgentServicer", "status_of"]

log = logging.getLogger("powerbandit.agent")
T = TypeVar("T")

_STATUS = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
}


#: Connections relayed at once (two threads each); more are closed at once (a local flood stays bounded).
MAX_CONNECTIONS = 256


def status_of(exc: AgentDomainError) -> grpc.StatusCode:
    """The gRPC status code of a domain error."""
    return _STATUS.get(type(exc), grpc.StatusCode.FAILED_PRECONDITION)


@dataclass
class AgentConfig:
    """Settings of one agent process (see ``powerbandit agent serve --help``)."""

    socket_path: str = "/run/powerbandit/agent.sock"
    socket_mode: int = 0o660
    socket_group: str | None = None
    state_dir: str = "/var/lib/powerbandit-agent"
    min_w: float | None = None
    max_w: float | None = None
    allow_uids: list[int] = field(default_factory=list)
    allow_gids: list[int] = field(default_factory=list)
    entitlement_mode: str = "env-or-context"
    poll_s: float = 0.2


class _Relay:
    """Accepts on the public socket and relays each connection to the private one (module docstring)."""

    def __init__(self, public_path: str, private_path: str, mode: int, group: str | None) -> None:
        self.private_path = private_path
        self._token = secrets.token_hex(12)
        self._count = 0
        self._peers: dict[str, Caller] = {}
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._closing = False
        self.public_path = public_path
        path = Path(public_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_socket():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(public_path)
            except OSError:
                path.unlink()  # a stale socket of a previous agent
            else:
                raise OSError(f"another agent is already listening on {public_path}")
            finally:
                probe.close()
        elif path.exists():
            raise OSError(f"{public_path} exists and is not a socket; refusing to replace it")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # never world-accessible between bind and chmod
        try:
            self._listener.bind(public_path)
        finally:
            os.umask(old_umask)
        if group:
            os.chown(public_path, -1, _gid_of(group))
        os.chmod(public_path, mode)
        self._listener.listen(128)
        self._thread = threading.Thread(target=self._accept_loop, name="powerbandit-agent-relay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def caller(self, peer: str) -> Caller | None:
        """The credentials recorded for a gRPC peer string (``unix-abstract:...``)."""
        with self._lock:
            return self._peers.get(peer)

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                if self._closing:
                    return
                continue
            try:
                self._relay(conn)
            except OSError as exc:
                log.warning("dropping a connection: %s", exc)
                conn.close()

    def _relay(self, conn: socket.socket) -> None:
        creds = peer_credentials(conn)
        with self._lock:
            if len(self._peers) >= MAX_CONNECTIONS:
                log.warning("refusing a connection from pid %d uid %d: %d connections open",
                            creds.pid, creds.uid, MAX_CONNECTIONS)  # fmt: skip
                conn.close()
                return
            self._count += 1
            name = f"powerbandit-agent-{self._token}-{self._count}"
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.bind("\0" + name)
            upstream.connect(self.private_path)
        except OSError:
            upstream.close()
            raise
        key = "unix-abstract:" + name
        with self._lock:
            self._peers[key] = creds
            self._conns.update((conn, upstream))
        remaining = [2]

        def finished() -> None:  # the second direction to end closes both sockets
            with self._lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                self._forget(key, conn, upstream)

        for src, dst in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=self._pump, args=(src, dst, finished), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, finished: Callable[[], None]) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        finished()

    def _forget(self, key: str, *socks: socket.socket) -> None:
        with self._lock:
            self._peers.pop(key, None)
            for s in socks:
                self._conns.discard(s)
                s.close()

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for s in self._conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.public_path)


def _gid_of(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"no group {group!r} on this host (--socket-group)") from None


def _lease_pb(lease: Lease) -> pb.Lease:
    return pb.Lease(
        lease_id=lease.lease_id,
        gpu_uuids=list(lease.uuids),
        power_limit_w=lease.power_limit_w,
        holder_pid=lease.holder_pid,
        holder_uid=lease.holder_uid,
        expires_unix_s=lease.expires_unix_s,
    )


class AgentServicer(pb_grpc.AgentServiceServicer):
    """gRPC in, :class:`LeaseManager` call, gRPC out."""

    def __init__(self, manager: LeaseManager, who: Callable[[str], Caller | None], backend_kind: str) -> None:
        self.manager = manager
        self._who = who
        self._backend_kind = backend_kind

    def _handle(self, context: Any, fn: Callable[[Caller], T]) -> T:
        caller = self._who(context.peer())
        if caller is None:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "the caller could not be identified: connect through the agent's public socket",
            )
        try:
            return fn(caller)
        except AgentDomainError as exc:
            context.abort(status_of(exc), str(exc))
            raise  # unreachable: abort raises

    def SetPowerLimit(self, request: pb.SetPowerLimitRequest, context: Any) -> pb.SetPowerLimitResponse:
        def call(caller: Caller) -> pb.SetPowerLimitResponse:
            lease, applied = self.manager.set_limit(
                caller,
                list(request.gpus),
                request.power_limit_w,
                request.lease_s,
                lease_id=request.lease_id,
                parent_holds=request.holder_scope == pb.HOLDER_SCOPE_PARENT,
                validate_only=request.validate_only,
            )
            return pb.SetPowerLimitResponse(
                lease=_lease_pb(lease),
                applied=[pb.AppliedLimit(uuid=u, index=i, power_limit_w=mw / 1000) for i, u, mw in applied],
            )

        return self._handle(context, call)

    def RenewLease(self, request: pb.RenewLeaseRequest, context: Any) -> pb.RenewLeaseResponse:
        return self._handle(
            context,
            lambda caller: pb.RenewLeaseResponse(
                lease=_lease_pb(self.manager.renew(caller, request.lease_id, request.lease_s))
            ),
        )

    def ReleaseLease(self, request: pb.ReleaseLeaseRequest, context: Any) -> pb.ReleaseLeaseResponse:
        return self._handle(
            context, lambda caller: pb.ReleaseLeaseResponse(released=self.manager.release(caller, request.lease_id))
        )

    def GetStatus(self, request: pb.GetStatusRequest, context: Any) -> pb.GetStatusResponse:
        def call(_caller: Caller) -> pb.GetStatusResponse:
            gpus = []
            for row in self.manager.status():
                info, lease = row.info, row.lease
                gpus.append(
                    pb.GpuStatus(
                        uuid=info.uuid,
                        index=info.index,
                        model=info.name,
                        min_limit_w=(info.min_limit_mw or 0) / 1000,
                        max_limit_w=(info.max_limit_mw or 0) / 1000,
                        default_limit_w=(info.default_limit_mw or 0) / 1000,
                        current_limit_w=row.current_limit_mw / 1000,
                        original_limit_w=(row.original_limit_mw or 0) / 1000,
                        holder_pid=lease.holder_pid if lease else 0,
                        holder_uid=lease.holder_uid if lease else 0,
                        expires_unix_s=lease.expires_unix_s if lease else 0.0,
                        lease_id=lease.lease_id if lease else "",
                        mig_enabled=info.mig_enabled,
                    )
                )
            p = self.manager.policy
            return pb.GetStatusResponse(
                gpus=gpus, operator_min_w=p.min_w or 0.0, operator_max_w=p.max_w or 0.0, backend=self._backend_kind
            )

        return self._handle(context, call)


class AgentServer:
    """Journal recovery, lease manager, watchdog, private gRPC server and public relay, started together."""

    def __init__(self, config: AgentConfig, backend: DeviceBackend) -> None:
        self.config = config
        self.backend = backend
        state = Path(config.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o700)  # the private gRPC socket lives here: only the agent's user may connect
        # One agent per state directory: a second one would "recover" the live agent's GPUs.
        self._lock_fd = os.open(state / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise OSError(f"another agent is running with the state directory {state}") from None
        self.journal = Journal(state / "originals.json")
        self.watchdog: HolderWatchdog | None = None
        self.manager = LeaseManager(
            backend,
            self.journal,
            min_w=config.min_w,
            max_w=config.max_w,
            allow_uids=config.allow_uids,
            allow_gids=config.allow_gids,
            entitlement_mode=config.entitlement_mode,
            on_new_holder=lambda pid: self.watchdog.wake(pid) if self.watchdog else None,
        )
        self._private_path = str(state / "grpc.sock")
        self._server: grpc.Server | None = None
        self._relay: _Relay | None = None

    def start(self) -> list[str]:
        """Restore what a previous agent left, then serve. Returns the uuids restored at start-up."""
        restored = self.manager.recover()
        if restored:
            log.warning("restored %d GPU(s) a previous agent left changed: %s", len(restored), restored)
        self.watchdog = HolderWatchdog(self.manager, self.config.poll_s)
        self.watchdog.start()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._private_path)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="agent-rpc"))
        self._relay = _Relay(
            self.config.socket_path, self._private_path, self.config.socket_mode, self.config.socket_group
        )
        pb_grpc.add_AgentServiceServicer_to_server(
            AgentServicer(self.manager, self._relay.caller, self.backend.kind), self._server
        )
        self._server.add_insecure_port("unix:" + self._private_path)
        self._server.start()
        self._relay.start()
        log.info("powerbandit agent ready on %s (%d GPU(s), %s)", self.config.socket_path,
                 len(self.manager.status()), self.backend.kind)  # fmt: skip
        return restored

    def stop(self) -> None:
        """Stop accepting, restore every GPU, and shut down."""
        if self._relay is not None:
            self._relay.close()
        self.manager.restore_all("agent shutting down")
        if self.watchdog is not None:
            self.watchdog.stop()
        if self._server is not None:
            self._server.stop(grace=1).wait(2)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._private_path)
        self.backend.close()
        os.close(self._lock_fd)  # releases the state directory

    @contextlib.contextmanager
    def running(self) -> Iterator[AgentServer]:
        """``start()`` and, on leaving, ``stop()``."""
        self.start()
        try:
            yield self
        finally:
            self.stop()


def serve_forever(config: AgentConfig, backend: DeviceBackend, on_ready: Callable[[], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT; every GPU gets its original limit back before returning.

    ``on_ready`` is called once the agent serves (a caller cleans up after a failed start only before it).
    """
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, f: stop.set())
    with AgentServer(config, backend).running():
        if on_ready is not None:
            on_ready()
        print(f"powerbandit agent: listening on {config.socket_path}", flush=True)
        while not stop.wait(3600):
            pass
    log.info("powerbandit agent stopped; every GPU it changed has its original limit back")
