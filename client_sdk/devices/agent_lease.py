"""The SDK's side of a node-agent lease: :class:`AgentLease` (used by :class:`client_sdk.nvml.NvmlGpu`).

One lease covers the job's GPUs (by UUID, so NVML indices inside a container do not matter). Every
limit of a run (the suggested one, or each limit of an in-run power profile) is applied under it;
it is renewed with the run's heartbeat (and, at most every third of its length, whenever the run
reads energy, so a run without heartbeats keeps it too); if the agent restarted meanwhile and no
longer knows it, the next renewal applies the limit again under the same id. Releasing it makes
the agent restore the GPUs' original limits at once.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Sequence

import grpc

from powerbandit.agent.client import AgentClient, AgentError

__all__ = ["AgentError", "AgentLease"]

_LOG = logging.getLogger("powerbandit.sdk.nvml")


class AgentLease:
    """A lease on ``gpu_uuids`` from the agent at ``socket_path``. Raises :class:`AgentError` on creation
    when the agent cannot be reached."""

    def __init__(self, socket_path: str, gpu_uuids: Sequence[str], lease_s: float) -> None:
        self.socket_path = socket_path
        self._uuids = list(gpu_uuids)
        self._lease_s = float(lease_s)
        self._client = AgentClient(socket_path)
        try:
            status = self._client.status()
        except AgentError:
            self._client.close()
            raise
        self.operator_min_w = status.operator_min_w or None
        self.operator_max_w = status.operator_max_w or None
        self.lease_id = ""
        self._watts: float | None = None
        self._renewed_at = 0.0

    def validate(self, watts: float) -> None:
        """Check that the agent would apply ``watts`` (entitlement, holders, bounds); changes nothing."""
        self._client.set_power_limit(self._uuids, watts, self._lease_s, validate_only=True)

    def apply(self, watts: float) -> None:
        """Apply ``watts`` under the lease (created on first use)."""
        lease_id = self.lease_id or f"sdk-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._client.set_power_limit(self._uuids, watts, self._lease_s, lease_id=lease_id)
        self.lease_id, self._watts, self._renewed_at = lease_id, watts, time.monotonic()

    def renew(self) -> None:
        """Extend the lease; apply the limit again when the agent lost it. Logs failures, never raises."""
        if not self.lease_id or self._watts is None:
            return
        try:
            self._client.renew(self.lease_id, self._lease_s)
            self._renewed_at = time.monotonic()
        except AgentError as exc:
            if exc.code != grpc.StatusCode.NOT_FOUND:
                _LOG.warning("Renewing agent lease %s failed: %s", self.lease_id, exc)
                return
            _LOG.warning("The agent lost lease %s (%s); applying the limit again.", self.lease_id, exc)
            try:
                self.apply(self._watts)
            except AgentError as again:
                _LOG.warning("Applying the limit again failed: %s", again)

    def renew_if_due(self) -> None:
        """Renew when a third of the lease has passed since the last renewal."""
        if self.lease_id and time.monotonic() - self._renewed_at > self._lease_s / 3:
            self.renew()

    def release(self) -> None:
        """End the lease (the agent restores the original limits). Logs failures, never raises."""
        lease_id, self.lease_id, self._watts = self.lease_id, "", None
        if not lease_id:
            return
        try:
            self._client.release(lease_id)
        except AgentError as exc:
            _LOG.warning(
                "Releasing agent lease %s failed (%s); the agent restores the limit when this process exits "
                "or the lease lapses.",
                lease_id,
                exc,
            )

    def close(self) -> None:
        """Close the connection (release first)."""
        self._client.close()
