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

from typing import TYPE_CHECKING

from client_sdk.api import FAIL_OPEN_ENV, ApiClient, fail_open_from_environment
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
)
from client_sdk.job import Job
from client_sdk.run import TrainingRun
from powerbandit.proto_conversion import gpu_info_to_pb  # re-exported: the SDK's GpuInfo as its message

if TYPE_CHECKING:
    from client_sdk.gpu import Gpu

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
    "fail_open_from_environment",
    "gpu_info_to_pb",
]


class OptimizerClient(ApiClient):
    """The SDK's connection to the server: the typed calls of :class:`~client_sdk.api.ApiClient`
    (errors become :class:`OptimizerClientError`) and the runs built on them (:meth:`run`,
    :meth:`start_run`).

    ``token``: bearer token for servers with authentication (default: ``POWERBANDIT_TOKEN``).
    ``tls``: use TLS, verifying the server with the system roots, or with ``root_cert`` (a PEM
    file path) when given (``root_cert`` implies TLS; default from ``POWERBANDIT_TLS_ROOT_CERT``).
    ``fail_open``: let runs train at the job's default configuration when the server cannot be
    reached (see the module docstring; default from ``POWERBANDIT_FAIL_OPEN``, else off).
    """

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

    def __enter__(self) -> OptimizerClient:
        return self
