"""``--via-server``: the simulation's decisions come from a real server, over gRPC, through the SDK.

:class:`ServerBackend` registers the simulated job on the server, asks ``Suggest`` for every run
(with the GPU the trace describes), reports the profile the run measured (``ReportProfile``, from
the trace) and completes the run (``CompleteRun``). The server stores everything and runs the same
policy code, with the same per-decision random generator, so the decisions must equal those of the
in-process simulation for the same seed; ``tests/simulations/test_via_server.py`` checks that.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace

from client_sdk.client import Job, OptimizerClient
from client_sdk.gpu import GpuInfo
from optimizer_server.policy.base import SuggestContext
from powerbandit.domain import Decision, JobSpec, Observation, Phase, ProfilePoint, StopReason
from powerbandit.proto_conversion import decision_from_pb, stop_reason_from_pb
from powerbandit.v1 import optimizer_pb2 as pb
from simulations.backend import BackendFactory
from simulations.engine import measured_points
from simulations.traces import CANONICAL, TraceSet

ProfileSource = Callable[[JobSpec, str, int], Mapping[float, ProfilePoint]]
"""``(job spec, gpu model, batch size) -> measured profile``: what a profiling run would measure."""


def trace_profiles(traces: TraceSet) -> ProfileSource:
    """Profiles from the published traces; the workload is the part of the job id before ``@``."""

    def lookup(spec: JobSpec, gpu: str, batch_size: int) -> Mapping[float, ProfilePoint]:
        w = CANONICAL[spec.job_id.split("@", 1)[0]]
        return traces.power[gpu][(w.dataset, w.network, w.optimizer)][batch_size]

    return lookup

class ServerBackend:
    """A :class:`~simulations.backend.DecisionBackend` backed by a powerbandit server."""

    def __init__(self, client: OptimizerClient, spec: JobSpec, profile_source: ProfileSource) -> None:
        self.client = client
        self.spec = spec
        self.profile_source = profile_source
        self.job_id = f"{spec.job_id}/{uuid.uuid4().hex[:8]}"  # a fresh job per simulation
        client.register_job(Job.from_spec(spec, job_id=self.job_id))
        self._run_id = ""
        self._profiling = False
        self._answer = pb.SuggestResponse()  # the latest suggestion: what its run profiles, and how
        self._max_cost = math.inf

    def suggest(self, context: SuggestContext) -> Decision:
        """``Suggest`` for a run on the context's GPU (one GPU, the trace's power limits)."""
        limits = tuple(context.power_limits_w)
        gpu = GpuInfo(context.gpu_model, 1, min(limits), max(limits), limits, True)
        answer = self.client.suggest(self.job_id, gpu, request_id=uuid.uuid4().hex)
        self._run_id = answer.run_id
        self._profiling = bool(answer.profile_power_limits_w)
        self._answer = answer
        self._max_cost = answer.max_cost
        decision = decision_from_pb(answer)
        if decision.phase == Phase.UNSPECIFIED:  # a server that does not say (or a newer phase): exploration
            decision = replace(decision, phase=Phase.EXPLORE)
        return decision

    def cost_bound(self, batch_size: int | None = None) -> float:
        """The bound the server sent with the suggestion (computed for the run's batch size)."""
        return self._max_cost

    def call_off(self, batch_size: int, context: SuggestContext, energy_j: float, time_s: float) -> str | None:
        """Report the profile and the first epoch, as a training run does; the server's answer says
        whether the policy calls the run off."""
        self._report_profile(context.gpu_model, batch_size)
        verdict = self.client.report_progress(self.job_id, self._run_id, 1.0, energy_j, time_s)
        if verdict.stop and stop_reason_from_pb(verdict.reason) is StopReason.EXPLORATION_CALLED_OFF:
            return verdict.message
        return None

    def _report_profile(self, gpu_model: str, batch_size: int) -> None:
        """``ReportProfile`` with what the trace says a profiling run measures (once per run): the
        limits the suggestion listed up to where it stops, as the engine accounts them (every limit
        when none is known)."""
        if not self._profiling:
            return
        points = self.profile_source(self.spec, gpu_model, batch_size)
        answer = self._answer
        measured = measured_points(
            points, tuple(answer.profile_power_limits_w), answer.profile_stop_ratio, answer.eta, answer.max_power_w
        )
        measurements = [(p, pt.average_power_w, pt.time_per_epoch_s) for p, pt in measured.items()]
        self.client.report_profile(self.job_id, self._run_id, 1.0, measurements)
        self._profiling = False

    def observe(self, observation: Observation) -> None:
        """Report the run's profile (when it profiled and has not yet) and complete it."""
        if observation.epochs > 0:
            self._report_profile(observation.gpu_model, observation.batch_size)
        self.client.complete_run(
            self.job_id,
            self._run_id,
            energy_j=observation.energy_j,
            time_s=observation.time_s,
            epochs=observation.epochs,
            reached_target=observation.reached_target,
            power_limit_w=observation.power_limit_w,
        )

    def close(self) -> None:
        """Nothing to release (the client belongs to the caller)."""


@contextmanager
def server_backends(address: str | None, profile_source: ProfileSource) -> Iterator[BackendFactory]:
    """A backend factory for ``address``, or for an embedded server on a temporary SQLite file."""
    if address:
        with OptimizerClient(address) as client:
            yield lambda spec: ServerBackend(client, spec, profile_source)
        return
    import tempfile

    from optimizer_server.server import EmbeddedServer

    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedServer(f"sqlite:///{tmp}/simulate.db") as server,
        OptimizerClient(server.address) as client,
    ):
        yield lambda spec: ServerBackend(client, spec, profile_source)
