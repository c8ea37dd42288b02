"""Property-based fuzzing of every RPC against a live server (SQLite), with hypothesis.

Two kinds of tests share one server per module:

* per RPC, requests built from the message descriptors with random and adversarial values (NaN,
  infinities, negatives, huge numbers, unicode, empty and overlong ids, unknown enum values,
  oversize repeated fields), mixed with ids of jobs and runs that exist;
* a :class:`~hypothesis.stateful.RuleBasedStateMachine` interleaving valid and invalid calls on a
  few job and run ids in any order (complete before progress, fail after complete, delete then
  report, a run's id under another job, retried request ids...).

Every answer must be a response or a documented client-error status (never ``INTERNAL`` or
``UNKNOWN``), the server must keep answering health checks, and afterwards every job must pass
:func:`check_invariants`. Derandomized and bounded so that the module runs in well under 30 s.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as _descriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)

from optimizer_server.server import EmbeddedServer
from powerbandit.v1 import optimizer_pb2 as pb
from powerbandit.v1 import optimizer_pb2_grpc as pb_grpc

FD = _descriptor.FieldDescriptor
Code = grpc.StatusCode

#: Statuses a bad or unlucky request may get; anything else (INTERNAL, UNKNOWN...) is a server bug.
ALLOWED_CODES = frozenset(
    {
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.ALREADY_EXISTS,
        Code.FAILED_PRECONDITION,
        Code.RESOURCE_EXHAUSTED,
        Code.OUT_OF_RANGE,
    }
)
CALL_TIMEOUT_S = 15.0

JOB_POOL = ["fuzz/a", "fuzz/b", "fuzz/ü-日本-🚀", "j" * 200]
SERVICE = pb.DESCRIPTOR.services_by_name["OptimizerService"]
METHODS = [m.name for m in SERVICE.methods]

#: CI: derandomized and bounded. ``POWERBANDIT_FUZZ_EXAMPLES=N`` runs N random examples per test instead.
DEEP_EXAMPLES = int(os.environ.get("POWERBANDIT_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=DEEP_EXAMPLES or 150,
    deadline=None,
    derandomize=not DEEP_EXAMPLES,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------------- the server
class Live:
    """The module's server, a stub on it and the run ids it handed out."""

    def __init__(self, server: EmbeddedServer) -> None:
        self.server = server
        self.channel = grpc.insecure_channel(
            server.address, options=[("grpc.max_send_message_length", 16 * 1024 * 1024)]
        )
        self.stub = pb_grpc.OptimizerServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.runs: list[tuple[str, str]] = []  # (job_id, run_id) of every suggested run
        self.lock = threading.Lock()

    def call(self, method: str, request: Message) -> Any | None:
        """Call ``method``; the response, or None after an allowed error status (else fail)."""
        try:
            response = getattr(self.stub, method)(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            assert code in ALLOWED_CODES, (
                f"{method} answered {code.name}: {exc.details()!r}\nrequest: {request!r}"  # type: ignore[attr-defined]
            )
            assert exc.details(), f"{method} answered {code.name} without a message"  # type: ignore[attr-defined]
            return None
        if method == "Suggest":
            with self.lock:
                self.runs.append((request.job_id, response.run_id))  # type: ignore[attr-defined]
        return response

    def assert_healthy(self) -> None:
        """The server still answers health checks with SERVING."""
        answer = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    def all_jobs(self) -> list[pb.Job]:
        """Every job, through ListJobs pages and GetJob (with all runs)."""
        ids: list[str] = []
        token = ""
        for _ in range(10_000):
            page = self.stub.ListJobs(
                pb.ListJobsRequest(page_size=50, page_token=token), timeout=CALL_TIMEOUT_S
            )
            ids += [j.spec.job_id for j in page.jobs]
            token = page.next_page_token
            if not token:
                break
        assert len(ids) == len(set(ids)), f"ListJobs pages repeat jobs: {ids}"
        jobs = []
        for job_id in ids:
            try:
                jobs.append(self.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=CALL_TIMEOUT_S).job)
            except grpc.RpcError as exc:  # deleted meanwhile is the only acceptable error
                assert exc.code() == Code.NOT_FOUND, exc  # type: ignore[attr-defined]
        return jobs


def check_invariants(live: Live) -> None:
    """Health, then per job: counts, arms and runs consistent with the spec and the run log."""
    live.assert_healthy()
    for job in live.all_jobs():
        spec = job.spec
        sizes = set(spec.batch_sizes)
        label = f"job {spec.job_id!r}"
        assert sizes and spec.default_batch_size in sizes, label
        arm_sizes = [a.batch_size for a in job.arms]
        assert len(arm_sizes) == len(set(arm_sizes)), f"{label}: duplicate arms {arm_sizes}"
        assert set(arm_sizes) <= sizes, f"{label}: arms {arm_sizes} outside batch sizes {sorted(sizes)}"
        assert all(a.observations >= a.successes >= 0 for a in job.arms), f"{label}: {list(job.arms)}"
        completed = [r for r in job.runs if r.state == pb.RUN_STATE_COMPLETED]
        in_flight = [r for r in job.runs if r.state == pb.RUN_STATE_IN_FLIGHT]
        failed = [r for r in job.runs if r.state in (pb.RUN_STATE_FAILED, pb.RUN_STATE_EXPIRED)]
        assert len(completed) + len(in_flight) + len(failed) == len(job.runs), f"{label}: run without a state"
        assert job.completed_runs == len(completed), label
        assert job.in_flight_runs == len(in_flight), label
        assert job.failed_runs == len(failed), label
        observed = sum(a.observations for a in job.arms)
        if spec.window == 0:
            assert observed == len(completed), (
                f"{label}: {observed} observations for {len(completed)} completed runs"
            )
        else:  # arm summaries count only the last `window` observations of each arm
            assert observed <= len(completed), (
                f"{label}: {observed} observations > {len(completed)} completed"
            )
        successes = sum(a.successes for a in job.arms)
        if spec.window == 0:
            assert successes == sum(r.reached_target for r in completed), label
        assert len({r.run_id for r in job.runs}) == len(job.runs), f"{label}: duplicate run ids"
        for run in job.runs:
            assert run.job_id == spec.job_id, f"{label}: run {run.run_id} of job {run.job_id!r}"
            assert run.batch_size in sizes, f"{label}: run {run.run_id} batch size {run.batch_size}"
            for name in ("cost", "energy_j", "time_s", "epochs", "power_limit_w", "max_power_w"):
                value = getattr(run, name)
                assert math.isfinite(value) and value >= 0, f"{label}: run {run.run_id} {name}={value}"
            assert run.gpu_count >= 1, label
            if run.state == pb.RUN_STATE_COMPLETED:
                assert run.finished_unix_s > 0, label


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One real server on a fresh SQLite file for the whole module; stopped at its end."""
    path: Path = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    server = EmbeddedServer(f"sqlite:///{path}").start()
    live = Live(server)
    try:
        _seed(live)
        yield live
        check_invariants(live)
    finally:
        live.channel.close()
        server.stop()


def _seed(live: Live) -> None:
    """A few valid jobs with runs in every state, so that fuzzed ids hit real rows."""
    for i, job_id in enumerate(JOB_POOL):
        spec = pb.JobSpec(
            job_id=job_id, batch_sizes=[16, 32, 64], default_batch_size=32, target_metric=0.5,
            max_epochs=10, policy="zeus" if i % 2 else "powerbandit", window=1 if i == 2 else 0, seed=i + 1,
        )  # fmt: skip
        assert live.call("RegisterJob", pb.RegisterJobRequest(spec=spec)) is not None
        runs = [live.call("Suggest", pb.SuggestRequest(job_id=job_id, gpu=VALID_GPU)) for _ in range(3)]
        assert all(runs)
        live.call("CompleteRun", pb.CompleteRunRequest(job_id=job_id, run_id=runs[0].run_id, energy_j=1e4,
                                                       time_s=100, epochs=3, reached_target=True))  # fmt: skip
        live.call("FailRun", pb.FailRunRequest(job_id=job_id, run_id=runs[1].run_id, reason="seeded"))


VALID_GPU = pb.GpuInfo(
    model="NVIDIA A40", count=1, min_power_limit_w=100, max_power_limit_w=300, power_limits_w=[100, 200, 300]
)


# ------------------------------------------------------------------------------- strategies
ADVERSARIAL_FLOATS = [0.0, -0.0, -1.0, 1.0, 0.5, 1e-300, 5e-324, 1e15, 1e15 + 1, 1e16, 1e308, -1e308,
                      math.inf, -math.inf, math.nan, 2.0**31, 2.0**63, 1e6, 10_000.0, 10_000.000001]  # fmt: skip
ADVERSARIAL_TEXT = ["", " ", "x" * 200, "x" * 201, "y" * 2001, "\x00", "a\nb", "\u200b", "\ufeffid",
                    "🚀" * 200, "🚀" * 201, "../../etc/passwd", "' OR 1=1; --", "%s%n", "\U0010ffff"]  # fmt: skip

floats = st.one_of(
    st.sampled_from(ADVERSARIAL_FLOATS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0.0, max_value=1e5),
)
measurements = st.one_of(st.floats(min_value=0.0, max_value=1e5), st.sampled_from(ADVERSARIAL_FLOATS))
texts = st.one_of(
    st.sampled_from(ADVERSARIAL_TEXT), st.text(max_size=30), st.text(min_size=190, max_size=260)
)


def _int_range(field: FD) -> tuple[int, int]:
    if field.type in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return 0, 2**64 - 1
    if field.type in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return 0, 2**32 - 1
    if field.type in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return -(2**63), 2**63 - 1
    return -(2**31), 2**31 - 1


def _scalar(field: FD, live: Live | None, sane: bool) -> st.SearchStrategy[Any]:
    if field.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return st.floats(min_value=0.0, max_value=1e4) if sane else floats
    if field.type == FD.TYPE_BOOL:
        return st.booleans()
    if field.type == FD.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        if sane:
            return st.sampled_from(known)
        return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))  # open enums: any int32
    if field.type == FD.TYPE_STRING:
        if field.name == "job_id":
            return st.sampled_from(JOB_POOL) if sane else st.one_of(st.sampled_from(JOB_POOL), texts)
        if field.name == "run_id" and live is not None:
            known_runs = st.integers(0, 10**6).map(
                lambda i: live.runs[i % len(live.runs)][1] if live.runs else ""
            )
            return known_runs if sane else st.one_of(known_runs, texts)
        if field.name == "policy":
            return st.one_of(st.sampled_from(["", "zeus", "powerbandit", "ZEUS"]), texts)
        return st.text(max_size=20) if sane else texts
    if field.type == FD.TYPE_BYTES:
        return st.binary(max_size=64)
    if sane:
        return st.integers(0, 64)
    low, high = _int_range(field)
    edges = [
        v for v in (0, 1, -1, 8, 16, 32, 64, low, high, 1000, 1001, 4096, 4097, 1_000_001) if low <= v <= high
    ]
    return st.one_of(st.sampled_from(edges), st.integers(low, high), st.integers(1, 256))


def message_strategy(
    desc: _descriptor.Descriptor, live: Live | None = None, depth: int = 0
) -> st.SearchStrategy[Message]:
    """Arbitrary messages of type ``desc``: adversarial values, or plausible ones (half the time)."""
    return st.one_of(_messages(desc, live, depth, sane=True), _messages(desc, live, depth, sane=False))


def _messages(
    desc: _descriptor.Descriptor, live: Live | None, depth: int, sane: bool
) -> st.SearchStrategy[Message]:
    cls = pb.__dict__.get(desc.name)
    assert cls is not None, desc.full_name
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for field in desc.fields:
        if field.type == FD.TYPE_MESSAGE:
            if depth >= 2:
                continue
            inner = _messages(field.message_type, live, depth + 1, sane)
            if field.name == "gpu":
                inner = st.one_of(st.just(VALID_GPU), inner)
            value = st.lists(inner, max_size=3) if _repeated(field) else inner
        else:
            value = _scalar(field, live, sane)
            if _repeated(field):
                value = st.lists(value, max_size=6)
                if not sane:
                    value = st.one_of(value, st.lists(_scalar(field, live, sane), min_size=60, max_size=70))
        parts[field.name] = st.one_of(st.none(), value)
    if live is not None and "job_id" in desc.fields_by_name and "run_id" in desc.fields_by_name:
        # a run of the job it belongs to, preferably a recent one (likely still in flight)
        parts["__pair__"] = st.one_of(st.none(), st.integers(1, 8))

    def build(values: dict[str, Any]) -> Message:
        msg = cls()
        pair = values.pop("__pair__", None)
        for name, value in values.items():
            if value is None:
                continue
            if isinstance(value, Message):
                getattr(msg, name).CopyFrom(value)
            elif isinstance(value, list):
                getattr(msg, name).extend(value)
            else:
                setattr(msg, name, value)
        if pair is not None and live is not None and live.runs:
            msg.job_id, msg.run_id = live.runs[-min(pair, len(live.runs))]  # type: ignore[attr-defined]
        return msg

    return st.fixed_dictionaries(parts).map(build)


def _repeated(field: FD) -> bool:
    return bool(field.is_repeated)


batch_sizes = st.lists(st.sampled_from([1, 8, 16, 32, 64, 128, 256]), min_size=1, max_size=4, unique=True)


@st.composite
def valid_specs(draw: st.DrawFn, job_id: str) -> pb.JobSpec:
    """A spec that validation accepts (so that the job exists and runs can follow)."""
    sizes = draw(batch_sizes)
    spec = pb.JobSpec(
        job_id=job_id,
        batch_sizes=sizes,
        default_batch_size=draw(st.sampled_from(sizes)),
        target_metric=draw(st.floats(-1e6, 1e6)),
        metric_direction=draw(st.sampled_from([0, 1, 2])),
        max_epochs=draw(st.integers(1, 50)),
        policy=draw(st.sampled_from(["", "zeus", "powerbandit"])),
        window=draw(st.sampled_from([0, 0, 1, 3])),
        seed=draw(st.integers(0, 2**64 - 1)),
    )
    if draw(st.booleans()):
        spec.eta = draw(st.floats(0.0, 1.0))
    if draw(st.booleans()):
        spec.beta = draw(st.floats(1.0, 1e6))
    return spec


# --------------------------------------------------------------------------- per-RPC fuzzing
@pytest.mark.parametrize("method", METHODS)
def test_every_rpc_answers_arbitrary_requests_with_a_client_error_or_a_response(
    live: Live, method: str
) -> None:
    request_desc = SERVICE.methods_by_name[method].input_type

    @FUZZ
    @given(request=message_strategy(request_desc, live))
    def fuzz(request: Message) -> None:
        if method == "DeleteJob" and request.job_id in JOB_POOL:  # type: ignore[attr-defined]
            return  # keep the shared jobs for the other methods; deletion is covered by the state machine
        live.call(method, request)

    fuzz()
    check_invariants(live)


# --------------------------------------------------------------------------- call sequences
job_ids = st.one_of(st.sampled_from(JOB_POOL), st.sampled_from(["fuzz/other", "", "x" * 201, "\x07bell"]))


class CallSequences(RuleBasedStateMachine):
    """Valid and invalid calls on a few jobs and runs, in any order."""

    live: Live  # set by the test before running

    runs = Bundle("runs")

    def call(self, method: str, request: Message) -> Any | None:
        return self.live.call(method, request)

    @initialize(job_id=st.sampled_from(JOB_POOL), spec_seed=st.integers(0, 3))
    def ensure_a_job(self, job_id: str, spec_seed: int) -> None:
        spec = pb.JobSpec(job_id=job_id, batch_sizes=[16, 32, 64], default_batch_size=32, target_metric=0.5,
                          max_epochs=10, seed=spec_seed)  # fmt: skip
        self.call("RegisterJob", pb.RegisterJobRequest(spec=spec))

    @rule(data=st.data(), job_id=job_ids, valid=st.booleans())
    def register(self, data: st.DataObject, job_id: str, valid: bool) -> None:
        spec = data.draw(valid_specs(job_id) if valid else message_strategy(pb.JobSpec.DESCRIPTOR))
        if not valid and data.draw(st.booleans()):
            spec.job_id = job_id
        self.call("RegisterJob", pb.RegisterJobRequest(spec=spec))

    @rule(
        target=runs,
        job_id=job_ids,
        gpu=st.one_of(st.just(VALID_GPU), message_strategy(pb.GpuInfo.DESCRIPTOR)),
        request_id=st.sampled_from(["", "", "req-1", "req-2", "r" * 201]),
    )
    def suggest(self, job_id: str, gpu: pb.GpuInfo, request_id: str) -> tuple[str, str]:
        answer = self.call("Suggest", pb.SuggestRequest(job_id=job_id, gpu=gpu, request_id=request_id))
        return (job_id, answer.run_id if answer is not None else "no-such-run")

    @rule(target=runs, job_id=st.sampled_from(JOB_POOL))
    def suggest_valid(self, job_id: str) -> tuple[str, str]:
        answer = self.call("Suggest", pb.SuggestRequest(job_id=job_id, gpu=VALID_GPU))
        return (job_id, answer.run_id if answer is not None else "no-such-run")

    @rule(run=runs, other_job=st.one_of(st.none(), job_ids), energy=measurements, time_s=measurements,
          epochs=measurements, reached=st.booleans(), power=st.sampled_from([0.0, 150.0, -5.0, 1e9, math.nan]),
          metric=st.one_of(st.none(), floats))  # fmt: skip
    def complete(self, run: tuple[str, str], other_job: str | None, energy: float, time_s: float,
                 epochs: float, reached: bool, power: float, metric: float | None) -> None:  # fmt: skip
        request = pb.CompleteRunRequest(job_id=other_job or run[0], run_id=run[1], energy_j=energy, time_s=time_s,
                                        epochs=epochs, reached_target=reached, power_limit_w=power)  # fmt: skip
        if metric is not None:
            request.final_metric = metric
        first = self.call("CompleteRun", request)
        if first is not None:  # an identical retry is idempotent
            again = self.call("CompleteRun", request)
            assert again is not None and again.run == first.run

    @rule(run=runs, energy=st.floats(0, 1e7), time_s=st.floats(0, 1e4), epochs=st.floats(0, 60),
          reached=st.booleans())  # fmt: skip
    def complete_valid(
        self, run: tuple[str, str], energy: float, time_s: float, epochs: float, reached: bool
    ) -> None:
        self.call("CompleteRun", pb.CompleteRunRequest(job_id=run[0], run_id=run[1], energy_j=energy, time_s=time_s,
                                                       epochs=epochs, reached_target=reached))  # fmt: skip

    @rule(run=runs, reason=texts, energy=measurements, time_s=measurements, epochs=measurements)
    def fail(self, run: tuple[str, str], reason: str, energy: float, time_s: float, epochs: float) -> None:
        self.call("FailRun", pb.FailRunRequest(job_id=run[0], run_id=run[1], reason=reason, energy_j=energy,
                                               time_s=time_s, epochs=epochs))  # fmt: skip

    @rule(run=runs)
    def heartbeat(self, run: tuple[str, str]) -> None:
        self.call("Heartbeat", pb.HeartbeatRequest(job_id=run[0], run_id=run[1]))

    @rule(run=runs, epochs=measurements, energy=measurements, time_s=measurements,
          metric=st.one_of(st.none(), floats))  # fmt: skip
    def progress(
        self, run: tuple[str, str], epochs: float, energy: float, time_s: float, metric: float | None
    ) -> None:
        request = pb.ReportProgressRequest(
            job_id=run[0], run_id=run[1], epochs=epochs, energy_j=energy, time_s=time_s
        )
        if metric is not None:
            request.metric = metric
        self.call("ReportProgress", request)

    @rule(run=runs, steps=floats, points=st.lists(st.tuples(floats, floats, floats), min_size=0, max_size=5))
    def profile(self, run: tuple[str, str], steps: float, points: list[tuple[float, float, float]]) -> None:
        request = pb.ReportProfileRequest(
            job_id=run[0], run_id=run[1], steps_per_epoch=steps,
            measurements=[pb.ProfileMeasurement(power_limit_w=a, average_power_w=b, time_per_step_s=c)
                          for a, b, c in points],
        )  # fmt: skip
        self.call("ReportProfile", request)

    @rule(run=runs, steps=st.floats(1, 1e4), limits=st.lists(st.sampled_from([100.0, 200.0, 300.0, 150.0]),
          min_size=1, max_size=4, unique=True), power=st.floats(0, 1e4), step_s=st.floats(1e-6, 10))  # fmt: skip
    def profile_valid(
        self, run: tuple[str, str], steps: float, limits: list[float], power: float, step_s: float
    ) -> None:
        request = pb.ReportProfileRequest(
            job_id=run[0], run_id=run[1], steps_per_epoch=steps,
            measurements=[pb.ProfileMeasurement(power_limit_w=limit, average_power_w=power * limit / 300,
                                                time_per_step_s=step_s * 300 / limit) for limit in limits],
        )  # fmt: skip
        self.call("ReportProfile", request)

    @rule(job_id=job_ids, max_runs=st.sampled_from([0, 1, 2, -1, 2**31 - 1]))
    def get(self, job_id: str, max_runs: int) -> None:
        answer = self.call("GetJob", pb.GetJobRequest(job_id=job_id, max_runs=max_runs))
        if answer is not None and max_runs > 0:
            assert len(answer.job.runs) <= max_runs

    @rule(prefix=st.one_of(st.sampled_from(["", "fuzz", "fuzz/", "%", "_"]), texts),
          page_size=st.sampled_from([0, 1, 2, -1, 1000, 1001]), token=st.one_of(st.just(""), job_ids, texts))  # fmt: skip
    def list_jobs(self, prefix: str, page_size: int, token: str) -> None:
        self.call("ListJobs", pb.ListJobsRequest(job_id_prefix=prefix, page_size=page_size, page_token=token))

    @rule(job_id=job_ids, dice=st.integers(0, 3))
    def delete(self, job_id: str, dice: int) -> None:
        if job_id in JOB_POOL and dice:
            return  # delete shared jobs a quarter of the time only, so that runs get somewhere
        self.call("DeleteJob", pb.DeleteJobRequest(job_id=job_id))

    def teardown(self) -> None:
        check_invariants(self.live)


def test_call_sequences_keep_every_job_consistent(live: Live) -> None:
    CallSequences.live = live
    run_state_machine_as_test(
        CallSequences,
        settings=settings(FUZZ, max_examples=DEEP_EXAMPLES or 60, stateful_step_count=40),
    )


def test_concurrent_fuzzed_completions_are_counted_once(live: Live) -> None:
    """Threads complete, fail and retry the same runs at once; each completion is counted once."""
    job_id = "fuzz/concurrent"
    spec = pb.JobSpec(job_id=job_id, batch_sizes=[8, 16], default_batch_size=8, target_metric=1, max_epochs=5)
    live.call("RegisterJob", pb.RegisterJobRequest(spec=spec))
    runs = [live.call("Suggest", pb.SuggestRequest(job_id=job_id, gpu=VALID_GPU)).run_id for _ in range(12)]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for k, run_id in enumerate(runs):
                if (k + index) % 3 == 0:
                    live.call("FailRun", pb.FailRunRequest(job_id=job_id, run_id=run_id, reason=f"w{index}"))
                else:
                    live.call("CompleteRun", pb.CompleteRunRequest(
                        job_id=job_id, run_id=run_id, energy_j=1000.0 + k, time_s=10.0,
                        epochs=2.0 + (index % 2), reached_target=True))  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:1]
    check_invariants(live)


def test_tiny_positive_epochs_do_not_break_get_job_or_list_jobs(tmp_path: Path) -> None:
    with EmbeddedServer(f"sqlite:///{tmp_path / 'tiny.db'}") as server:
        live = Live(server)
        try:
            spec = pb.JobSpec(
                job_id="tiny", batch_sizes=[32], default_batch_size=32, target_metric=0.5, max_epochs=10
            )
            live.call("RegisterJob", pb.RegisterJobRequest(spec=spec))
            for epochs, reached in ((5.0, True), (30.0, True), (1e-200, False)):
                run = live.call("Suggest", pb.SuggestRequest(job_id="tiny", gpu=VALID_GPU))
                live.call("CompleteRun", pb.CompleteRunRequest(job_id="tiny", run_id=run.run_id, energy_j=1000.0,
                                                               time_s=10.0, epochs=epochs, reached_target=reached))  # fmt: skip
            check_invariants(live)  # ListJobs + GetJob
        finally:
            live.channel.close()
