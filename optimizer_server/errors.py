"""Domain errors. The gRPC layer maps each to one status code (see ``grpc_errors``)."""

from __future__ import annotations


class OptimizerError(Exception):
    """Base of every error a caller can act on."""


class InvalidArgumentError(OptimizerError):
    """A request field is malformed or out of range."""


class NotFoundError(OptimizerError):
    """The job or run does not exist (or no longer exists)."""


class AlreadyExistsError(OptimizerError):
    """A job with this id exists with a different spec."""


class FailedPreconditionError(OptimizerError):
    """The request is well formed but the object is not in a state that allows it."""


class ResourceExhaustedError(OptimizerError):
    """A limit (size, count) was exceeded."""


class UnavailableError(OptimizerError):
    """The store could not be reached or is busy; retrying may succeed."""


class UnauthenticatedError(OptimizerError):
    """No valid credentials were presented."""


class PermissionDeniedError(OptimizerError):
    """The credentials are valid but do not cover this job."""
