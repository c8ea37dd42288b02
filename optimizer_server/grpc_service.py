"""The gRPC layer: validate, translate, call :class:`OptimizerService`, map errors to status codes.

Records become messages through :mod:`powerbandit.proto_conversion` (the one conversion module).

Domain errors become status codes in exactly one place (:data:`STATUS_OF`). Each handler runs on
the server's event loop and awaits one ``*_async`` method of :class:`OptimizerService`, which
decides how the work is executed (see :mod:`optimizer_server.service`); the servicer never sees
the store.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from optimizer_server import validation as v
from optimizer_server.auth import TokenAuth, authorize, current_principal
from optimizer_server.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OptimizerError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from optimizer_server.metrics import Metrics
from optimizer_server.rate_limited_log import RateLimitedLog
from optimizer_server.service import JobView, OptimizerService
from optimizer_server.store.base import RunRecord
from powerbandit.proto_conversion import (
    arm_to_pb,
    group_to_pb,
    phase_to_pb,
    power_limit_control_from_pb,
    profile_to_pb,
    run_to_pb,
    spec_to_pb,
    stop_reason_to_pb,
)
from powerbandit.v1 import optimizer_pb2 as pb
from powerbandit.v1 import optimizer_pb2_grpc as pb_grpc

log = logging.getLogger("powerbandit.server.grpc")

STATUS_OF: dict[type[OptimizerError], grpc.StatusCode] = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
}

def power_limit_control_of(value: int) -> str:
    """The stored name of a ``PowerLimitControl`` value; an unknown number is INVALID_ARGUMENT."""
    try:
        return power_limit_control_from_pb(value).value
    except ValueError:
        raise InvalidArgumentError(
            f"power_limit_control {value} is not a PowerLimitControl value (0-4); "
            "build requests from protos/powerbandit/v1/optimizer.proto"
        ) from None


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])

SERVICE_DESCRIPTOR = pb.DESCRIPTOR.services_by_name["OptimizerService"]


@dataclass(frozen=True)
class UndecodableRequest:
    """What a request body that does not parse as its message becomes (answered INVALID_ARGUMENT)."""

    message_type: str
    error: str


def _lenient(parse: Callable[[bytes], Message], message_type: str) -> Callable[[bytes], Any]:
    """A request deserializer that never raises: a body that does not parse becomes an
    :class:`UndecodableRequest`, which the handler answers with INVALID_ARGUMENT (grpc would answer
    UNKNOWN and log a traceback per request)."""

    def deserialize(body: bytes) -> Any:
        try:
            return parse(body)
        except Exception as exc:  # DecodeError, and anything else a parser may raise on garbage
            return UndecodableRequest(message_type, str(exc) or type(exc).__name__)

    return deserialize


def add_servicer_to_server(servicer: OptimizerServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` for every method of ``OptimizerService``, with lenient deserializers."""
    handlers = {}
    for method in SERVICE_DESCRIPTOR.methods:
        request_cls = getattr(pb, method.input_type.name)
        response_cls = getattr(pb, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=_lenient(request_cls.FromString, method.input_type.full_name),
            response_serializer=response_cls.SerializeToString,
        )
    # as the generated add_..._to_server does: registered methods are matched by gRPC's core, not
    # looked up in Python per call (the generic handler alone cost a quarter of the throughput)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_DESCRIPTOR.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE_DESCRIPTOR.full_name, handlers)


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status code of a domain error (INTERNAL for anything unexpected)."""
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


def rpc(handler: Handler) -> Handler:
    """Wrap an RPC handler: authenticate the caller, map domain errors to statuses, count it.

    The caller's :class:`~optimizer_server.auth.Principal` is in ``current_principal`` while the
    handler runs; handlers call :func:`~optimizer_server.auth.authorize` with the job id.
    """

    @functools.wraps(handler)
    async def wrapper(self: OptimizerServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        token = None
        try:
            token = current_principal.set(self.auth.authenticate(context.invocation_metadata()))
            if isinstance(request, UndecodableRequest):
                self.undecodable_log.warning(
                    "%s: undecodable request body (%s)", handler.__name__, request.error[:200]
                )
                raise InvalidArgumentError(
                    f"the request body is not a valid {request.message_type} message ({request.error}); "
                    "build requests from protos/powerbandit/v1/optimizer.proto"
                )
            return await handler(self, request, context)
        except OptimizerError as exc:
            code = status_for(exc)
            await context.abort(code, str(exc))
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unexpected error in %s", handler.__name__)
            await context.abort(code, "internal error; see the server log")
        finally:
            if token is not None:
                current_principal.reset(token)
            if self.metrics is not None:
                self.metrics.observe_rpc(handler.__name__, code, time.perf_counter() - started)

    return wrapper  # type: ignore[return-value]


RUNS_PAGE_BYTES = 3 * 1024 * 1024
"""Serialized runs per GetJob answer at most: with the job's other fields, under the 4 MiB limit."""


def runs_page_to_pb(job: pb.Job, runs: list[RunRecord], *, newest: bool) -> bool:
    """Append ``runs`` to ``job.runs`` while they fit :data:`RUNS_PAGE_BYTES`; whether all fitted.

    ``newest``: keep the newest runs when they do not all fit (else the oldest).
    """
    budget = RUNS_PAGE_BYTES - job.ByteSize()
    messages = []
    for run in reversed(runs) if newest else runs:
        message = run_to_pb(run)
        budget -= message.ByteSize() + 8  # field tag and length
        if budget < 0 and messages:
            break
        messages.append(message)
    job.runs.extend(reversed(messages) if newest else messages)
    return len(messages) == len(runs)


def job_to_pb(view: JobView) -> pb.Job:
    """A job view as its message (without runs: see :func:`runs_page_to_pb`)."""
    return pb.Job(
        spec=spec_to_pb(view.record.spec),
        arms=[arm_to_pb(a) for a in view.arms],
        best_batch_size=view.best_batch_size,
        best_power_limit_w=view.best_power_limit_w,
        profiles=[profile_to_pb(p) for p in view.profiles],
        completed_runs=view.counts["completed"],
        in_flight_runs=view.counts["in_flight"],
        failed_runs=view.counts["failed"] + view.counts["expired"],
        created_unix_s=view.record.created_unix_s,
        max_cost=view.max_cost,
        outlook=view.outlook,
        run_groups=[group_to_pb(g) for g in view.groups],
        run_groups_window_start_unix_s=view.window_start_unix_s,
    )


class OptimizerServicer(pb_grpc.OptimizerServiceServicer):
    """Implements ``powerbandit.v1.OptimizerService`` over an :class:`OptimizerService`."""

    def __init__(self, service: OptimizerService, auth: TokenAuth | None = None, metrics: Metrics | None = None) -> None:
        self.service = service
        self.auth = auth if auth is not None else TokenAuth()
        self.metrics = metrics
        self.undecodable_log = RateLimitedLog(log)

    @rpc
    async def RegisterJob(self, request: pb.RegisterJobRequest, context: Any) -> pb.RegisterJobResponse:
        if not request.HasField("spec"):
            raise InvalidArgumentError("spec is missing")
        spec = v.job_spec(request.spec, self.service.policies)
        authorize(spec.job_id)
        spec, created = await self.service.register_job_async(spec)
        return pb.RegisterJobResponse(spec=spec_to_pb(spec), created=created)

    @rpc
    async def Suggest(self, request: pb.SuggestRequest, context: Any) -> pb.SuggestResponse:
        job_id = v.identifier(request.job_id, "job_id")
        authorize(job_id)
        gpu = v.run_gpu(request.gpu, request.HasField("gpu"))
        request_id = v.optional_identifier(request.request_id, "request_id")
        suggestion = await self.service.suggest_async(job_id, gpu, request_id)
        run, spec = suggestion.run, suggestion.spec
        return pb.SuggestResponse(
            run_id=run.run_id,
            batch_size=run.batch_size,
            power_limit_w=run.power_limit_w,
            profile_power_limits_w=list(run.profile_power_limits_w) if run.power_limit_w == 0 else [],
            profile_stop_ratio=run.profile_stop_ratio if run.power_limit_w == 0 else 0.0,
            phase=phase_to_pb(run.phase),
            explanation=run.explanation,
            max_cost=suggestion.max_cost,
            max_epochs=spec.max_epochs,
            lease_s=self.service.lease_s,
            max_power_w=run.max_power_w,
            eta=spec.eta,
        )

    @rpc
    async def ReportProfile(self, request: pb.ReportProfileRequest, context: Any) -> pb.ReportProfileResponse:
        job_id = v.identifier(request.job_id, "job_id")
        authorize(job_id)
        run_id = v.identifier(request.run_id, "run_id")
        steps = v.steps_per_epoch(request.steps_per_epoch)
        measurements = v.profile_measurements(request.measurements)
        limit, cost = await self.service.report_profile_async(job_id, run_id, steps, measurements)
        return pb.ReportProfileResponse(power_limit_w=limit, epoch_cost=cost)

    @rpc
    async def ReportProgress(
        self, request: pb.ReportProgressRequest, context: Any
    ) -> pb.ReportProgressResponse:
        job_id = v.identifier(request.job_id, "job_id")
        authorize(job_id)
        run_id = v.identifier(request.run_id, "run_id")
        epochs = v.measurement(request.epochs, "epochs")
        energy = v.measurement(request.energy_j, "energy_j")
        time_s = v.measurement(request.time_s, "time_s")
        metric = v.finite(request.metric, "metric") if request.HasField("metric") else None
        verdict = await self.service.report_progress_async(job_id, run_id, epochs, energy, time_s, metric)
        return pb.ReportProgressResponse(
            stop=verdict.stop,
            reason=stop_reason_to_pb(verdict.reason),
            message=verdict.message,
            cost=verdict.cost,
            max_cost=verdict.max_cost,
        )

    @rpc
    async def CompleteRun(self, request: pb.CompleteRunRequest, context: Any) -> pb.CompleteRunResponse:
        job_id = v.identifier(request.job_id, "job_id")
        authorize(job_id)
        run_id = v.identifier(request.run_id, "run_id")
        power = v.reported_power_limit(request.power_limit_w)
        energy_j, time_s, epochs = v.completion(
            request.energy_j, request.time_s, request.epochs, request.reached_target
        )
        run = await self.service.complete_run_async(
            job_id,
            run_id,
            energy_j=energy_j,
            time_s=time_s,
            epochs=epochs,
            reached_target=request.reached_target,
            final_metric=v.finite(request.final_metric, "final_metric")
            if request.HasField("final_metric")
            else None,
            power_limit_w=power,
            power_limit_control=power_limit_control_of(request.power_limit_control),
        )
        return pb.CompleteRunResponse(run=run_to_pb(run))

    @rpc
    async def FailRun(self, request: pb.FailRunRequest, context: Any) -> pb.FailRunResponse:
        job_id = v.identifier(request.job_id, "job_id")
        authorize(job_id)
        run_id = v.identifier(request.run_id, "run_id")
        power = v.reported_power_limit(request.power_limit_w)
        run = await self.service.fail_run_async(
            job_id,
            run_id,
            v.text(request.reason, "reason") or "failed (no reason given)",
            v.measurement(request.energy_j, "energy_j"),
            v.measurement(request.time_s, "time_s"),
            v.measurement(request.epochs, "epochs"),
            power_limit_control_of(request.power_limit_control),
            power,
        )
        return pb.FailRunResponse(run=run_to_pb(run))

    @rpc
    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        job_id = v.identifier(request.job_id, "job_id")
        authorize(job_id)
        run_id = v.identifier(request.run_id, "run_id")
        expires = await self.service.heartbeat_async(job_id, run_id)
        return pb.HeartbeatResponse(lease_expires_unix_s=expires)

    @rpc
    async def GetJob(self, request: pb.GetJobRequest, context: Any) -> pb.GetJobResponse:
        job_id = v.identifier(request.job_id, "job_id")
        authorize(job_id)
        if request.max_runs < 0:
            raise InvalidArgumentError(f"max_runs must be >= 0 (0 = all, a page at a time), got {request.max_runs}")
        after_seq = v.page_token_seq(request.page_token, "page_token")
        window_start = v.finite(request.window_start_unix_s, "window_start_unix_s", low=0.0)
        view = await self.service.get_job_async(
            job_id,
            request.max_runs,
            after_seq=after_seq,
            window_start_unix_s=window_start,
        )
        job = job_to_pb(view)
        complete = runs_page_to_pb(job, view.runs, newest=request.max_runs > 0)
        next_token = ""
        if request.max_runs == 0 and (view.more_runs or not complete):
            next_token = v.seq_page_token(view.runs[len(job.runs) - 1].seq)
        return pb.GetJobResponse(job=job, next_page_token=next_token)

    @rpc
    async def ListJobs(self, request: pb.ListJobsRequest, context: Any) -> pb.ListJobsResponse:
        prefix = v.text(request.job_id_prefix, "job_id_prefix")
        if not 0 <= request.page_size <= 1000:
            raise InvalidArgumentError(f"page_size must be in 0..1000 (0 = 100), got {request.page_size}")
        token = v.text(request.page_token, "page_token")
        window_start = v.finite(request.window_start_unix_s, "window_start_unix_s", low=0.0)
        scopes = current_principal.get().prefixes  # a scoped token sees only its own jobs
        views, next_token = await self.service.list_jobs_async(
            prefix, request.page_size or 100, token, scopes, window_start
        )
        return pb.ListJobsResponse(jobs=[job_to_pb(view) for view in views], next_page_token=next_token)

    @rpc
    async def DeleteJob(self, request: pb.DeleteJobRequest, context: Any) -> pb.DeleteJobResponse:
        job_id = v.identifier(request.job_id, "job_id")
        authorize(job_id)
        await self.service.delete_job_async(job_id)
        return pb.DeleteJobResponse()
