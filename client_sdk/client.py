"""``OptimizerClient``: the SDK's connection to the powerbandit server.

>>> client = OptimizerClient("127.0.0.1:50051")                      # doctest: +SKIP
>>> job = Job("team-a/resnet50", batch_sizes=[64, 128, 256], default_batch_size=128,
...           target_metric=0.65, max_epochs=100)                   # doctest: +SKIP
>>> with client.run(job, gpu=NvmlGpu()) as run:                      # doctest: +SKIP
...     train(batch_size=run.batch_size, on_step=run.step, on_epoch=run.epoch_end)

Without a ``with`` block (framework callbacks, wrappers): ``run = client.start_run(job, gpu=gpu)``,
then ``run.complete(metric)`` or ``run.fail(reason)``. Failed calls raise the typed errors of
:mod:`client_sdk.errors` (all subclasses of :class:`OptimizerClientError`).

**Fail-open.** By default a run whose server cannot be reached raises :class:`OptimizerClientError`
before training starts. With ``OptimizerClient(..., fail_open=True)`` or ``POWERBANDIT_FAIL_OPEN=1``
an unreachable server (``UNAVAILABLE`` or ``DEADLINE_EXCEEDED`` at register or suggest, after the
client's retries) does not stop training: the run trains at the job's *default configuration* (its
default batch size, the GPU's power limit left as it is), energy and time are still measured
(``run.offline_result``), one warning is logged, and nothing is reported. A server lost in the
middle of a run is handled the same way: one warning, the remaining reports skipped. Any other
error (a refused token, an invalid job) still raises.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from client_sdk.errors import (  # re-exported: `from client_sdk.client import OptimizerClientError` works
    UNREACHABLE_CODES,
    AlreadyExistsError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    OptimizerClientError,
    PermissionDeniedError,
    ResourceExhaustedError,
    ServerError,
    ServerUnavailableError,
    error_for_status,
)
from client_sdk.gpu import Gpu, GpuInfo
from powerbandit.v1 import optimizer_pb2 as pb
from powerbandit.v1 import optimizer_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from client_sdk.run import TrainingRun

log = logging.getLogger("powerbandit.sdk")

__all__ = [
    "FAIL_OPEN_ENV",
    "UNREACHABLE_CODES",
    "AlreadyExistsError",
    "ConflictError",
    "InvalidRequestError",
    "Job",
    "NotFoundError",
    "OptimizerClient",
    "OptimizerClientError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "ServerError",
    "ServerUnavailableError",
]

FAIL_OPEN_ENV = "POWERBANDIT_FAIL_OPEN"
"""Environment variable turning fail-open on (``1``, ``true``, ``yes``, ``on``) when the client does not say."""

def fail_open_from_environment() -> bool:
    """Whether ``POWERBANDIT_FAIL_OPEN`` turns fail-open on; a value that is neither on nor off is a
    ``ValueError`` (a mistyped switch must not silently leave training without its fallback)."""
    value = os.environ.get(FAIL_OPEN_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"{FAIL_OPEN_ENV}={value!r} is neither on (1, true, yes, on) nor off (0, false, no, off)")


# How a run's power limit was applied (client_sdk.gpu.Gpu.power_limit_control) -> its enum value.
_CONTROL_TO_PB = {
    "": pb.POWER_LIMIT_CONTROL_UNSPECIFIED,
    "nvml": pb.POWER_LIMIT_CONTROL_NVML,
    "agent": pb.POWER_LIMIT_CONTROL_AGENT,
    "none": pb.POWER_LIMIT_CONTROL_NONE,
    "simulated": pb.POWER_LIMIT_CONTROL_SIMULATED,
}

# Retry transient failures (server restarting, replica failover). Suggest and CompleteRun are
# idempotent (request ids, identical reports), so retrying them is safe.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "powerbandit.v1.OptimizerService"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "3s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


@dataclass(frozen=True)
class Job:
    """A recurring training job as the user describes it (see ``JobSpec`` in the .proto)."""

    job_id: str
    batch_sizes: Sequence[int]
    default_batch_size: int
    target_metric: float
    max_epochs: int
    eta: float = 0.5
    beta: float = 2.0
    higher_is_better: bool = True
    policy: str = ""
    window: int = 0
    seed: int = 0
    max_slowdown: float | None = None  # a slowdown budget instead of eta, e.g. 1.1 (see JobSpec in the .proto)

    def to_pb(self) -> pb.JobSpec:
        """This job as its protobuf message."""
        return pb.JobSpec(
            job_id=self.job_id,
            batch_sizes=list(self.batch_sizes),
            default_batch_size=self.default_batch_size,
            target_metric=self.target_metric,
            metric_direction=(
                pb.METRIC_DIRECTION_HIGHER_IS_BETTER
                if self.higher_is_better
                else pb.METRIC_DIRECTION_LOWER_IS_BETTER
            ),
            max_epochs=self.max_epochs,
            # with a slowdown budget the default eta is not sent (the budget implies eta 1)
            eta=None if self.max_slowdown is not None and self.eta == 0.5 else self.eta,
            beta=self.beta,
            policy=self.policy,
            window=self.window,
            seed=self.seed,
            max_slowdown=self.max_slowdown,
        )

    def reached(self, metric: float) -> bool:
        """Whether ``metric`` meets the target."""
        return metric >= self.target_metric if self.higher_is_better else metric <= self.target_metric


def gpu_info_to_pb(info: GpuInfo) -> pb.GpuInfo:
    """The SDK's :class:`GpuInfo` as the message ``Suggest`` takes."""
    return pb.GpuInfo(
        model=info.model,
        count=info.count,
        min_power_limit_w=info.min_power_limit_w,
        max_power_limit_w=info.max_power_limit_w,
        power_limits_w=list(info.power_limits_w),
    )


class OptimizerClient:
    """Typed calls to ``powerbandit.v1.OptimizerService``; errors become :class:`OptimizerClientError`.

    ``token``: bearer token for servers with authentication (default: ``POWERBANDIT_TOKEN``).
    ``tls``: use TLS, verifying the server with the system roots, or with ``root_cert`` (a PEM
    file path) when given (``root_cert`` implies TLS; default from ``POWERBANDIT_TLS_ROOT_CERT``).
    ``fail_open``: let runs train at the job's default configuration when the server cannot be
    reached (see the module docstring; default from ``POWERBANDIT_FAIL_OPEN``, else off).
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 30.0,
        token: str | None = None,
        tls: bool = False,
        root_cert: str | None = None,
        fail_open: bool | None = None,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.fail_open = fail_open_from_environment() if fail_open is None else fail_open
        token = token if token is not None else os.environ.get("POWERBANDIT_TOKEN") or None
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        root_cert = root_cert or os.environ.get("POWERBANDIT_TLS_ROOT_CERT") or None
        # what a pickled copy needs to open its own channel (Lightning's ddp_spawn pickles callbacks into
        # the processes it spawns; the token goes with it, as it would through the environment)
        self._settings = {"timeout_s": timeout_s, "token": token or "", "tls": tls, "root_cert": root_cert,
                          "fail_open": self.fail_open}  # fmt: skip
        options = [("grpc.service_config", _SERVICE_CONFIG), ("grpc.enable_retries", 1)]
        if tls or root_cert:
            roots = Path(root_cert).read_bytes() if root_cert else None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self.stub = pb_grpc.OptimizerServiceStub(self._channel)

    def __getstate__(self) -> dict[str, object]:
        return {"address": self.address, **self._settings}

    def __setstate__(self, state: dict[str, object]) -> None:
        settings = dict(state)
        address = str(settings.pop("address"))
        self.__init__(address, **settings)  # type: ignore[misc,arg-type]

    def _call(self, method: str, request: object) -> object:
        try:
            return getattr(self.stub, method)(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_for_status(method, exc.code(), exc.details() or "", self.address) from None

    # --------------------------------------------------------------------------------- calls
    def register_job(self, job: Job) -> pb.RegisterJobResponse:
        """Create the job (idempotent for an identical spec)."""
        return self._call("RegisterJob", pb.RegisterJobRequest(spec=job.to_pb()))  # type: ignore[return-value]

    def suggest(self, job_id: str, gpu: GpuInfo, request_id: str | None = None) -> pb.SuggestResponse:
        """Start a run; retried calls with the same ``request_id`` return the same run."""
        request = pb.SuggestRequest(
            job_id=job_id, gpu=gpu_info_to_pb(gpu), request_id=request_id or uuid.uuid4().hex
        )
        return self._call("Suggest", request)  # type: ignore[return-value]

    def report_profile(
        self,
        job_id: str,
        run_id: str,
        steps_per_epoch: float,
        measurements: Sequence[tuple[float, float, float]],
    ) -> pb.ReportProfileResponse:
        """Report ``(power limit W, average power W, seconds per step)`` per profiled limit."""
        request = pb.ReportProfileRequest(
            job_id=job_id,
            run_id=run_id,
            steps_per_epoch=steps_per_epoch,
            measurements=[
                pb.ProfileMeasurement(power_limit_w=p, average_power_w=w, time_per_step_s=s)
                for p, w, s in measurements
            ],
        )
        return self._call("ReportProfile", request)  # type: ignore[return-value]

    def report_progress(
        self,
        job_id: str,
        run_id: str,
        epochs: float,
        energy_j: float,
        time_s: float,
        metric: float | None = None,
    ) -> pb.ReportProgressResponse:
        """Report cumulative progress; the answer says whether to stop."""
        request = pb.ReportProgressRequest(
            job_id=job_id, run_id=run_id, epochs=epochs, energy_j=energy_j, time_s=time_s
        )
        if metric is not None:
            request.metric = metric
        return self._call("ReportProgress", request)  # type: ignore[return-value]

    def complete_run(
        self,
        job_id: str,
        run_id: str,
        *,
        energy_j: float,
        time_s: float,
        epochs: float,
        reached_target: bool,
        power_limit_w: float = 0.0,
        final_metric: float | None = None,
        power_limit_control: str = "",
    ) -> pb.CompleteRunResponse:
        """End a run that trained (``power_limit_control``: "nvml", "agent", "none", "simulated" or "")."""
        request = pb.CompleteRunRequest(
            job_id=job_id,
            run_id=run_id,
            energy_j=energy_j,
            time_s=time_s,
            epochs=epochs,
            reached_target=reached_target,
            power_limit_w=power_limit_w,
            power_limit_control=_CONTROL_TO_PB[power_limit_control],
        )
        if final_metric is not None and math.isfinite(final_metric):
            request.final_metric = final_metric
        return self._call("CompleteRun", request)  # type: ignore[return-value]

    def fail_run(
        self,
        job_id: str,
        run_id: str,
        reason: str,
        energy_j: float = 0.0,
        time_s: float = 0.0,
        epochs: float = 0.0,
        power_limit_control: str = "",
        power_limit_w: float = 0.0,
    ) -> pb.FailRunResponse:
        """End a run that crashed (not counted against its configuration).

        ``power_limit_w``: the per-GPU limit in force when it failed (0: the one suggested).
        """
        request = pb.FailRunRequest(
            job_id=job_id,
            run_id=run_id,
            reason=reason[:2000],
            energy_j=energy_j,
            time_s=time_s,
            epochs=epochs,
            power_limit_control=_CONTROL_TO_PB[power_limit_control],
            power_limit_w=power_limit_w,
        )
        return self._call("FailRun", request)  # type: ignore[return-value]

    def heartbeat(self, job_id: str, run_id: str) -> pb.HeartbeatResponse:
        """Renew a run's lease."""
        return self._call("Heartbeat", pb.HeartbeatRequest(job_id=job_id, run_id=run_id))  # type: ignore[return-value]

    def get_job(self, job_id: str, max_runs: int = 0, window_start_unix_s: float = 0.0) -> pb.Job:
        """The job with its arms, best configuration, profiles, run groups and runs.

        ``max_runs`` > 0: only the most recent ones; 0: every run (the server sends them a page at
        a time; they are gathered here, oldest first).
        """
        request = pb.GetJobRequest(job_id=job_id, max_runs=max_runs, window_start_unix_s=window_start_unix_s)
        response = self._call("GetJob", request)
        job: pb.Job = response.job  # type: ignore[attr-defined]
        while response.next_page_token:  # type: ignore[attr-defined]
            request.page_token = response.next_page_token  # type: ignore[attr-defined]
            response = self._call("GetJob", request)
            job.runs.extend(response.job.runs)  # type: ignore[attr-defined]
        return job

    def list_jobs(self, prefix: str = "", window_start_unix_s: float = 0.0) -> list[pb.Job]:
        """Every job whose id starts with ``prefix`` (all pages), with run groups but no runs.

        ``window_start_unix_s``: run groups mark the finished runs that ended at or after it.
        """
        jobs: list[pb.Job] = []
        token = ""
        while True:
            response = self._call(
                "ListJobs",
                pb.ListJobsRequest(
                    job_id_prefix=prefix, page_size=500, page_token=token, window_start_unix_s=window_start_unix_s
                ),
            )
            jobs.extend(response.jobs)  # type: ignore[attr-defined]
            token = response.next_page_token  # type: ignore[attr-defined]
            if not token:
                return jobs

    def delete_job(self, job_id: str) -> None:
        """Delete a job and its history."""
        self._call("DeleteJob", pb.DeleteJobRequest(job_id=job_id))

    # --------------------------------------------------------------------------------- runs
    def run(
        self,
        job: Job,
        gpu: Gpu | None = None,
        *,
        steps_per_epoch: int | None = None,
        register: bool = True,
        heartbeat: bool = True,
        profile: bool = True,
    ) -> TrainingRun:
        """A context manager for one run of ``job``: suggestion in, measurements out.

        Entering the block calls :meth:`TrainingRun.start`; leaving it completes the run, or
        fails it when the block raised (see :meth:`start_run` for the explicit form).

        ``gpu`` defaults to the NVML GPU of this machine (raising a clear error where there is
        none; pass a :class:`~client_sdk.replay.ReplayGpu` for a dry run). With fail-open on, an
        unreachable server makes it an offline run at the job's default configuration. ``profile=False``:
        the caller reports no steps (a wrapper around a command), so a run asked to profile power
        limits runs at the limit in force instead and reports that limit.
        """
        from client_sdk.run import TrainingRun

        if gpu is None:
            from client_sdk.nvml import NvmlGpu

            gpu = NvmlGpu()
        unreachable: OptimizerClientError | None = None
        if register:
            try:
                self.register_job(job)
            except OptimizerClientError as exc:
                if not (self.fail_open and exc.unreachable):
                    raise
                unreachable = exc  # the run trains offline; it says so once, when it starts
        return TrainingRun(
            self, job, gpu, steps_per_epoch=steps_per_epoch, heartbeat=heartbeat, unreachable=unreachable,
            profile=profile,
        )  # fmt: skip

    def start_run(
        self,
        job: Job,
        gpu: Gpu | None = None,
        *,
        steps_per_epoch: int | None = None,
        register: bool = True,
        heartbeat: bool = True,
        profile: bool = True,
    ) -> TrainingRun:
        """Start one run of ``job`` now and return it; end it with ``run.complete(metric)`` or ``run.fail(reason)``.

        The explicit form of :meth:`run` for code that cannot wrap training in a ``with`` block
        (framework callbacks, wrappers): it registers the job, asks for a configuration and applies
        its power limit. Raises the typed errors of :mod:`client_sdk.errors` (with fail-open on, an
        unreachable server makes an offline run instead).
        """
        return self.run(
            job, gpu, steps_per_epoch=steps_per_epoch, register=register, heartbeat=heartbeat, profile=profile
        ).start()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> OptimizerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
