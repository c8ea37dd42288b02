"""Typed SDK errors: one exception class per family of gRPC status codes.

Every failed call to the server raises a subclass of :class:`OptimizerClientError` (so an existing
``except OptimizerClientError`` keeps catching everything), chosen by its status code, so callers
catch what they can handle instead of parsing messages::

    try:
        run = client.start_run(job, gpu=gpu)
    except ServerUnavailableError:          # UNAVAILABLE, DEADLINE_EXCEEDED: retry later, or fail-open
        ...
    except InvalidRequestError as exc:      # INVALID_ARGUMENT, OUT_OF_RANGE: fix the job spec
        print(exc.details)

=============================  ==========================================================
class                          status codes
=============================  ==========================================================
:class:`NotFoundError`         ``NOT_FOUND`` (unknown job or run)
:class:`InvalidRequestError`   ``INVALID_ARGUMENT``, ``OUT_OF_RANGE``
:class:`AlreadyExistsError`    ``ALREADY_EXISTS`` (another spec under the same job id)
:class:`ConflictError`         ``FAILED_PRECONDITION``, ``ABORTED`` (e.g. a report on a finished run)
:class:`PermissionDeniedError` ``PERMISSION_DENIED``, ``UNAUTHENTICATED`` (token missing, wrong, out of scope)
:class:`ResourceExhaustedError` ``RESOURCE_EXHAUSTED`` (too many runs in flight, rate limits)
:class:`ServerUnavailableError` ``UNAVAILABLE``, ``DEADLINE_EXCEEDED`` (what fail-open tolerates)
:class:`ServerError`           anything else (``INTERNAL``, ``UNKNOWN``, ``UNIMPLEMENTED``, ...)
=============================  ==========================================================
"""

from __future__ import annotations

import grpc

__all__ = [
    "UNREACHABLE_CODES",
    "AlreadyExistsError",
    "ConflictError",
    "InvalidRequestError",
    "NotFoundError",
    "OptimizerClientError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "RunStateError",
    "ServerError",
    "ServerUnavailableError",
    "error_for_status",
]

#: Status codes that mean "the server cannot be reached", the ones fail-open tolerates.
UNREACHABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class OptimizerClientError(RuntimeError):
    """A call to the optimizer failed; ``code`` is the gRPC status code, ``details`` the server's message."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str, address: str) -> None:
        self.method = method
        self.code = code
        self.details = details
        self.address = address
        if code == grpc.StatusCode.UNAVAILABLE:
            hint = f"cannot reach the powerbandit server at {address} (is `powerbandit serve` running there?)"
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            hint = f"no answer from the powerbandit server at {address} in time (is it running and reachable?)"
        else:
            hint = f"{details} (server {address})"
        self.hint = hint  # what went wrong in the user's words, without the RPC's name (what the CLI prints)
        super().__init__(f"{method} failed with {code.name}: {hint}")

    def __reduce__(self) -> tuple[object, tuple[str, grpc.StatusCode, str, str]]:
        # picklable (DDP broadcasts rank 0's error to the other ranks): rebuilt from its fields
        return (type(self), (self.method, self.code, self.details, self.address))

    @property
    def unreachable(self) -> bool:
        """True when the server could not be reached or did not answer in time."""
        return self.code in UNREACHABLE_CODES


class NotFoundError(OptimizerClientError):
    """``NOT_FOUND``: the job or run does not exist (deleted, never registered, another server)."""


class InvalidRequestError(OptimizerClientError, ValueError):
    """``INVALID_ARGUMENT`` or ``OUT_OF_RANGE``: the request (job spec, measurement) was refused as invalid."""


class AlreadyExistsError(OptimizerClientError):
    """``ALREADY_EXISTS``: a job with this id exists with a different spec (the message names the field)."""


class ConflictError(OptimizerClientError):
    """``FAILED_PRECONDITION`` or ``ABORTED``: the request does not fit the state (e.g. the run has ended)."""


class PermissionDeniedError(OptimizerClientError):
    """``PERMISSION_DENIED`` or ``UNAUTHENTICATED``: the token is missing, wrong, or not valid for this job."""


class ResourceExhaustedError(OptimizerClientError):
    """``RESOURCE_EXHAUSTED``: a limit was reached (runs in flight of one job, request size, rate)."""


class ServerUnavailableError(OptimizerClientError):
    """``UNAVAILABLE`` or ``DEADLINE_EXCEEDED``: the server could not be reached or did not answer in time."""


class ServerError(OptimizerClientError):
    """Any other status (``INTERNAL``, ``UNKNOWN``, ``UNIMPLEMENTED``, ...): a server-side problem."""


class RunStateError(RuntimeError):
    """A run lifecycle call out of order: ``complete()`` twice, ``step()`` before ``start()``, ..."""


_CLASS_OF_CODE: dict[grpc.StatusCode, type[OptimizerClientError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequestError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: ConflictError,
    grpc.StatusCode.ABORTED: ConflictError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: ServerUnavailableError,
}


def error_for_status(method: str, code: grpc.StatusCode, details: str, address: str) -> OptimizerClientError:
    """The typed error for a failed call ``method`` that ended with ``code``."""
    return _CLASS_OF_CODE.get(code, ServerError)(method, code, details, address)
