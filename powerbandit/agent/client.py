"""A client of the node agent: :class:`AgentClient` (used by the SDK's ``NvmlGpu`` and the CLI)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import grpc

from powerbandit.agent.v1 import agent_pb2 as pb
from powerbandit.agent.v1 import agent_pb2_grpc as pb_grpc

__all__ = ["AGENT_SOCKET_ENV", "DEFAULT_SOCKET", "AgentClient", "AgentError", "agent_socket_from_env"]

#: Where the agent listens unless told otherwise.
DEFAULT_SOCKET = "/run/powerbandit/agent.sock"
#: Environment variable naming the agent's socket for the SDK and the CLI.
AGENT_SOCKET_ENV = "POWERBANDIT_AGENT_SOCKET"


def agent_socket_from_env() -> str | None:
    """``POWERBANDIT_AGENT_SOCKET`` when set, else the default socket when it exists, else ``None``."""
    path = os.environ.get(AGENT_SOCKET_ENV)
    if path:
        return path
    return DEFAULT_SOCKET if os.path.exists(DEFAULT_SOCKET) else None


class AgentError(RuntimeError):
    """The agent refused or could not be reached; ``code`` is the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class AgentClient:
    """Talks to the agent on the Unix socket ``socket_path``. Methods raise :class:`AgentError`."""

    def __init__(self, socket_path: str, timeout_s: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(f"unix:{socket_path}")
        self._stub = pb_grpc.AgentServiceStub(self._channel)

    def _call(self, method: str, request: object) -> object:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = exc.details() if hasattr(exc, "details") else str(exc)
            if code == grpc.StatusCode.UNAVAILABLE:
                details = f"the powerbandit agent at {self.socket_path} is not reachable ({details})"
            raise AgentError(code, details or code.name) from None

    def set_power_limit(
        self,
        gpus: Sequence[str],
        power_limit_w: float,
        lease_s: float,
        *,
        lease_id: str = "",
        holder_scope: int = pb.HOLDER_SCOPE_UNSPECIFIED,
        validate_only: bool = False,
    ) -> pb.SetPowerLimitResponse:
        """Set ``power_limit_w`` on ``gpus`` (UUIDs or indices) under a lease of ``lease_s`` seconds."""
        request = pb.SetPowerLimitRequest(
            gpus=list(gpus),
            power_limit_w=power_limit_w,
            lease_s=lease_s,
            lease_id=lease_id,
            holder_scope=holder_scope,
            validate_only=validate_only,
        )
        return self._call("SetPowerLimit", request)  # type: ignore[return-value]

    def renew(self, lease_id: str, lease_s: float) -> pb.RenewLeaseResponse:
        """Extend a lease to ``lease_s`` seconds from now."""
        return self._call("RenewLease", pb.RenewLeaseRequest(lease_id=lease_id, lease_s=lease_s))  # type: ignore[return-value]

    def release(self, lease_id: str) -> pb.ReleaseLeaseResponse:
        """End a lease (its GPUs get their original limits back)."""
        return self._call("ReleaseLease", pb.ReleaseLeaseRequest(lease_id=lease_id))  # type: ignore[return-value]

    def status(self) -> pb.GetStatusResponse:
        """Every GPU of the node."""
        return self._call("GetStatus", pb.GetStatusRequest())  # type: ignore[return-value]

    def watch_connection(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        """Call ``callback`` (on a gRPC thread) with the channel's state now and at each change.

        The connection to the agent stays open between calls, so a stopped or restarted agent shows at
        once as a change away from ``READY``.
        """
        self._channel.subscribe(callback, try_to_connect=False)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()
