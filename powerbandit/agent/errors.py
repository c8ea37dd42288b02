"""The agent's domain errors; :func:`powerbandit.agent.daemon.status_of` maps each to one gRPC code."""

from __future__ import annotations

__all__ = [
    "AgentDomainError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
]


class AgentDomainError(Exception):
    """Base class: the message is for the caller and says what to do."""


class InvalidArgumentError(AgentDomainError):
    """A field of the request is malformed or out of range (nothing was changed)."""


class PermissionDeniedError(AgentDomainError):
    """The caller (by its socket peer credentials) may not do this."""


class FailedPreconditionError(AgentDomainError):
    """The node's state forbids it now (GPU held by another process, MIG mode, device refusal)."""


class NotFoundError(AgentDomainError):
    """No such lease."""
