"""``ApiClient``: typed calls to ``powerbandit.v1.OptimizerService``, one method per RPC.

The low-level half of the SDK's connection: a channel (TLS, token, retries), each RPC with its
request built from plain values and its failure mapped to the typed errors of
:mod:`client_sdk.errors`. :class:`client_sdk.client.OptimizerClient` adds the runs on top of it;
:class:`client_sdk.run.TrainingRun` makes its calls through it.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import grpc

from client_sdk.errors import error_for_status
from client_sdk.gpu import GpuInfo
from client_sdk.job import Job
from powerbandit.proto_conversion import gpu_info_to_pb, power_limit_control_to_pb, profile_measurements_to_pb
from powerbandit.v1 import optimizer_pb2 as pb
from powerbandit.v1 import optimizer_pb2_grpc as pb_grpc

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


class ApiClient:
    """Typed calls to ``powerbandit.v1.OptimizerService``; errors become ``OptimizerClientError``.

    ``token``: bearer token for servers with authentication (default: ``POWERBANDIT_TOKEN``).
    ``tls``: use TLS, verifying the server with the system roots, or with ``root_cert`` (a PEM
    file path) when given (``root_cert`` implies TLS; default from ``POWERBANDIT_TLS_ROOT_CERT``).
    ``fail_open``: let runs train at the job's default configuration when the server cannot be
    reached (see :mod:`client_sdk.client`; default from ``POWERBANDIT_FAIL_OPEN``, else off).
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
            measurements=profile_measurements_to_pb(measurements),
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
            power_limit_control=power_limit_control_to_pb(power_limit_control),
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
            power_limit_control=power_limit_control_to_pb(power_limit_control),
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

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
