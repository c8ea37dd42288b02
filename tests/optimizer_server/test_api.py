"""The gRPC API through a raw generated stub: happy paths, idempotency, and every bad input."""

from __future__ import annotations

import math

import grpc
import pytest

from optimizer_server.server import EmbeddedServer
from powerbandit.v1 import optimizer_pb2 as pb
from powerbandit.v1 import optimizer_pb2_grpc as pb_grpc
from tests.helpers import gpu_pb, small_job

Code = grpc.StatusCode


def register(stub: pb_grpc.OptimizerServiceStub, job_id: str = "team/job", **overrides: object) -> pb.JobSpec:
    return stub.RegisterJob(pb.RegisterJobRequest(spec=small_job(job_id, **overrides).to_pb())).spec


def suggest(stub: pb_grpc.OptimizerServiceStub, job_id: str = "team/job", **kw: object) -> pb.SuggestResponse:
    return stub.Suggest(pb.SuggestRequest(job_id=job_id, gpu=gpu_pb(), **kw))


def complete(
    stub: pb_grpc.OptimizerServiceStub, run_id: str, job_id: str = "team/job", **kw: object
) -> pb.Run:
    values = {"energy_j": 1000.0, "time_s": 10.0, "epochs": 5.0, "reached_target": True}
    values.update(kw)
    return stub.CompleteRun(pb.CompleteRunRequest(job_id=job_id, run_id=run_id, **values)).run


def expect(code: grpc.StatusCode, call: object, *args: object) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)  # type: ignore[operator]
    assert info.value.code() == code, info.value.details()
    assert info.value.details()
    return info.value.details()


def snapshot(stub: pb_grpc.OptimizerServiceStub, job_id: str = "team/job") -> bytes:
    job = stub.GetJob(pb.GetJobRequest(job_id=job_id)).job
    job.ClearField("outlook")  # derived text; the rest must not change
    return job.SerializeToString(deterministic=True)


def test_register_is_idempotent_and_refuses_a_different_spec(stub: pb_grpc.OptimizerServiceStub) -> None:
    first = stub.RegisterJob(pb.RegisterJobRequest(spec=small_job().to_pb()))
    again = stub.RegisterJob(pb.RegisterJobRequest(spec=small_job().to_pb()))
    assert first.created and not again.created
    assert first.spec == again.spec
    assert first.spec.eta == 0.5 and first.spec.beta == 2.0 and first.spec.policy == "powerbandit"
    details = expect(
        Code.ALREADY_EXISTS, stub.RegisterJob, pb.RegisterJobRequest(spec=small_job(max_epochs=30).to_pb())
    )
    assert "max_epochs" in details and "20" in details and "30" in details


def test_server_chooses_a_seed_and_keeps_it(stub: pb_grpc.OptimizerServiceStub) -> None:
    spec = stub.RegisterJob(pb.RegisterJobRequest(spec=small_job(seed=0).to_pb())).spec
    assert spec.seed != 0
    again = stub.RegisterJob(pb.RegisterJobRequest(spec=small_job(seed=0).to_pb()))
    assert not again.created and again.spec.seed == spec.seed


def test_suggest_complete_get_cycle(stub: pb_grpc.OptimizerServiceStub) -> None:
    register(stub)
    first = suggest(stub)
    assert first.batch_size == 64  # the default batch size comes first
    assert list(first.profile_power_limits_w) == [300, 200, 100] and first.power_limit_w == 0  # highest first
    assert first.profile_stop_ratio == 1.25  # stop past the cheapest
    assert first.max_power_w == 300 and first.eta == 0.5 and math.isinf(first.max_cost)
    profile = stub.ReportProfile(
        pb.ReportProfileRequest(
            job_id="team/job",
            run_id=first.run_id,
            steps_per_epoch=100,
            measurements=[
                pb.ProfileMeasurement(power_limit_w=100, average_power_w=95, time_per_step_s=0.2),
                pb.ProfileMeasurement(power_limit_w=200, average_power_w=180, time_per_step_s=0.12),
                pb.ProfileMeasurement(power_limit_w=300, average_power_w=250, time_per_step_s=0.11),
            ],
        )
    )
    # epoch cost = 0.5 * P * t + 0.5 * 300 * t with t = 100 * step time
    costs = {100: 0.5 * 95 * 20 + 150 * 20, 200: 0.5 * 180 * 12 + 150 * 12, 300: 0.5 * 250 * 11 + 150 * 11}
    assert profile.power_limit_w == min(costs, key=costs.get)
    assert profile.epoch_cost == pytest.approx(min(costs.values()))
    run = complete(stub, first.run_id, energy_j=2000.0, time_s=100.0)
    assert run.state == pb.RUN_STATE_COMPLETED
    assert run.cost == pytest.approx(0.5 * 2000 + 0.5 * 300 * 100)
    assert run.power_limit_w == profile.power_limit_w and run.profiled
    job = stub.GetJob(pb.GetJobRequest(job_id="team/job")).job
    assert job.completed_runs == 1 and job.in_flight_runs == 0 and len(job.runs) == 1
    assert job.best_batch_size == 64 and job.best_power_limit_w == profile.power_limit_w
    assert [a.batch_size for a in job.arms] == [32, 64, 128]
    assert job.profiles[0].gpu_model == "NVIDIA A40" and len(job.profiles[0].points) == 3
    assert job.max_cost == pytest.approx(2 * run.cost)
    assert job.outlook.startswith("next run on NVIDIA A40")
    # a later run of the same batch size on the same GPU model reuses the stored profile
    for _ in range(6):
        nxt = suggest(stub)
        if nxt.batch_size == 64:
            assert nxt.power_limit_w == profile.power_limit_w and not nxt.profile_power_limits_w
            break
        complete(stub, nxt.run_id, reached_target=False, epochs=20, energy_j=1e6, time_s=1e4)
    else:
        pytest.fail("the policy never came back to the only batch size that reached the target")


def test_complete_twice_counts_once(stub: pb_grpc.OptimizerServiceStub) -> None:
    register(stub)
    run_id = suggest(stub).run_id
    complete(stub, run_id)
    complete(stub, run_id)  # retry of the same report
    job = stub.GetJob(pb.GetJobRequest(job_id="team/job")).job
    assert job.completed_runs == 1
    assert sum(a.observations for a in job.arms) == 1
    different = pb.CompleteRunRequest(
        job_id="team/job", run_id=run_id, energy_j=2000, time_s=10, epochs=5, reached_target=True
    )
    expect(Code.FAILED_PRECONDITION, stub.CompleteRun, different)
    expect(
        Code.FAILED_PRECONDITION,
        stub.FailRun,
        pb.FailRunRequest(job_id="team/job", run_id=run_id, reason="x"),
    )


def test_suggest_with_request_id_returns_the_same_run(stub: pb_grpc.OptimizerServiceStub) -> None:
    register(stub)
    a = suggest(stub, request_id="retry-1")
    b = suggest(stub, request_id="retry-1")
    assert a.run_id == b.run_id
    assert a == b and b.profile_stop_ratio == 1.25  # the stored run's answer, every field
    assert stub.GetJob(pb.GetJobRequest(job_id="team/job")).job.in_flight_runs == 1


def test_fail_run_is_not_evidence_and_is_idempotent(stub: pb_grpc.OptimizerServiceStub) -> None:
    register(stub)
    run_id = suggest(stub).run_id
    stub.FailRun(pb.FailRunRequest(job_id="team/job", run_id=run_id, reason="CUDA OOM", energy_j=5, time_s=1))
    again = stub.FailRun(pb.FailRunRequest(job_id="team/job", run_id=run_id, reason="CUDA OOM"))
    assert again.run.state == pb.RUN_STATE_FAILED and again.run.reason == "CUDA OOM"
    job = stub.GetJob(pb.GetJobRequest(job_id="team/job")).job
    assert job.failed_runs == 1 and sum(a.observations for a in job.arms) == 0
    assert suggest(stub).batch_size == 64  # still the untried default: the crash taught nothing
    expect(Code.FAILED_PRECONDITION, complete, stub, run_id)


def test_progress_says_when_to_stop(stub: pb_grpc.OptimizerServiceStub) -> None:
    register(stub)
    first = suggest(stub).run_id
    complete(stub, first, energy_j=1000.0, time_s=10.0)  # cost 0.5*1000 + 0.5*300*10 = 2000
    run_id = suggest(stub).run_id

    def progress(
        epochs: float, energy: float, time_s: float, metric: float | None = None
    ) -> pb.ReportProgressResponse:
        request = pb.ReportProgressRequest(
            job_id="team/job", run_id=run_id, epochs=epochs, energy_j=energy, time_s=time_s
        )
        if metric is not None:
            request.metric = metric
        return stub.ReportProgress(request)

    keep = progress(1, 100.0, 1.0, 0.5)
    assert not keep.stop and keep.cost == pytest.approx(200.0)
    # beta x the best cost is the cap; an unproven batch size may be held to a tighter bound
    assert 2000.0 < keep.max_cost <= 4000.0
    reached = progress(2, 200.0, 2.0, 0.95)
    assert reached.stop and reached.reason == pb.STOP_REASON_TARGET_REACHED
    over = progress(3, 5000.0, 20.0)
    assert over.stop and over.reason == pb.STOP_REASON_COST_BOUND and "bound" in over.message
    maxed = progress(20, 300.0, 3.0)
    assert maxed.stop and maxed.reason == pb.STOP_REASON_MAX_EPOCHS


def test_an_exploration_whose_profile_rules_it_out_is_called_off(stub: pb_grpc.OptimizerServiceStub) -> None:
    register(stub)

    def profile(run_id: str, time_per_step_s: float) -> None:
        measurements = [
            pb.ProfileMeasurement(power_limit_w=limit, average_power_w=0.8 * limit, time_per_step_s=time_per_step_s)
            for limit in (100.0, 200.0, 300.0)
        ]
        stub.ReportProfile(
            pb.ReportProfileRequest(job_id="team/job", run_id=run_id, steps_per_epoch=100, measurements=measurements)
        )

    first = suggest(stub)
    assert first.batch_size == 64 and first.profile_power_limits_w
    profile(first.run_id, 0.1)  # 10 s per epoch
    complete(stub, first.run_id, energy_j=10 * 2400.0, time_s=100.0, epochs=10)
    trial = suggest(stub)
    assert trial.batch_size != 64 and trial.phase == pb.PHASE_EXPLORE and trial.profile_power_limits_w
    profile(trial.run_id, 0.5)  # an epoch takes 5x as long: it cannot pay off
    verdict = stub.ReportProgress(
        pb.ReportProgressRequest(job_id="team/job", run_id=trial.run_id, epochs=1, energy_j=12000.0, time_s=50.0)
    )
    assert verdict.stop and verdict.reason == pb.STOP_REASON_EXPLORATION_CALLED_OFF
    assert f"batch size {trial.batch_size}" in verdict.message and verdict.cost < verdict.max_cost
    run = complete(stub, trial.run_id, energy_j=12000.0, time_s=50.0, epochs=1, reached_target=False)
    assert run.reason.startswith("exploration_called_off: ") and verdict.message in run.reason
    arms = {arm.batch_size: arm for arm in stub.GetJob(pb.GetJobRequest(job_id="team/job")).job.arms}
    assert arms[trial.batch_size].status == "called off" and arms[trial.batch_size].observations == 0
    assert arms[64].observations == 1  # the default's run is the only evidence about epochs
    # the next recurrences do not run it again
    for _ in range(5):
        again = suggest(stub)
        assert again.batch_size != trial.batch_size
        stub.FailRun(pb.FailRunRequest(job_id="team/job", run_id=again.run_id, reason="test: not run"))


def test_a_trial_profiles_only_the_limits_its_neighbour_found_worth_it(stub: pb_grpc.OptimizerServiceStub) -> None:
    register(stub)

    def profile(run_id: str, seconds_per_step: dict[float, float]) -> pb.ReportProfileResponse:
        measurements = [
            pb.ProfileMeasurement(power_limit_w=limit, average_power_w=0.9 * limit, time_per_step_s=step_s)
            for limit, step_s in seconds_per_step.items()
        ]
        return stub.ReportProfile(
            pb.ReportProfileRequest(job_id="team/job", run_id=run_id, steps_per_epoch=100, measurements=measurements)
        )

    first = suggest(stub)
    assert first.batch_size == 64 and list(first.profile_power_limits_w) == [300, 200, 100]
    # 100 W triples the step time: an epoch there costs 2.4x the best (200 W)
    assert profile(first.run_id, {100.0: 0.3, 200.0: 0.1, 300.0: 0.09}).power_limit_w == 200.0
    complete(stub, first.run_id, energy_j=10 * 1800.0, time_s=100.0, epochs=10)
    trial = suggest(stub)
    assert trial.batch_size in (32, 128) and trial.power_limit_w == 0
    assert list(trial.profile_power_limits_w) == [300, 200]
    assert "profiling 2 of 3 power limits" in trial.explanation
    # the run measures what it was told to; that is the batch size's profile from then on
    assert profile(trial.run_id, {200.0: 0.12, 300.0: 0.1}).power_limit_w in (200.0, 300.0)
    complete(stub, trial.run_id, energy_j=10 * 2000.0, time_s=110.0, epochs=10)
    job = stub.GetJob(pb.GetJobRequest(job_id="team/job")).job
    stored = {p.batch_size: sorted(pt.power_limit_w for pt in p.points) for p in job.profiles}
    assert stored == {64: [100, 200, 300], trial.batch_size: [200, 300]}


def test_heartbeat_list_delete(stub: pb_grpc.OptimizerServiceStub) -> None:
    for name in ("a/1", "a/2", "b/1"):
        register(stub, name)
    run_id = suggest(stub, "a/1").run_id
    assert stub.Heartbeat(pb.HeartbeatRequest(job_id="a/1", run_id=run_id)).lease_expires_unix_s > 0
    listed = stub.ListJobs(pb.ListJobsRequest(job_id_prefix="a/"))
    assert [j.spec.job_id for j in listed.jobs] == ["a/1", "a/2"] and not listed.next_page_token
    page = stub.ListJobs(pb.ListJobsRequest(page_size=2))
    assert len(page.jobs) == 2 and page.next_page_token
    rest = stub.ListJobs(pb.ListJobsRequest(page_size=2, page_token=page.next_page_token))
    assert [j.spec.job_id for j in rest.jobs] == ["b/1"]
    stub.DeleteJob(pb.DeleteJobRequest(job_id="a/1"))
    expect(Code.NOT_FOUND, stub.GetJob, pb.GetJobRequest(job_id="a/1"))
    # a completion for a run of a deleted job is refused cleanly
    expect(Code.NOT_FOUND, complete, stub, run_id, "a/1")
    expect(Code.NOT_FOUND, stub.DeleteJob, pb.DeleteJobRequest(job_id="a/1"))


BAD_SPECS = [
    ("empty job id", {"job_id": ""}, Code.INVALID_ARGUMENT),
    ("eta above 1", {"eta": 1.5}, Code.INVALID_ARGUMENT),
    ("eta below 0", {"eta": -0.1}, Code.INVALID_ARGUMENT),
    ("eta NaN", {"eta": math.nan}, Code.INVALID_ARGUMENT),
    ("beta below 1", {"beta": 0.5}, Code.INVALID_ARGUMENT),
    ("no batch sizes", {"batch_sizes": ()}, Code.INVALID_ARGUMENT),
    ("negative batch size", {"batch_sizes": (-32, 64)}, Code.INVALID_ARGUMENT),
    ("duplicate batch sizes", {"batch_sizes": (64, 64, 128)}, Code.INVALID_ARGUMENT),
    ("default not a batch size", {"default_batch_size": 100}, Code.INVALID_ARGUMENT),
    ("zero max epochs", {"max_epochs": 0}, Code.INVALID_ARGUMENT),
    ("NaN target", {"target_metric": math.nan}, Code.INVALID_ARGUMENT),
    ("unknown policy", {"policy": "random"}, Code.INVALID_ARGUMENT),
    ("overlong job id", {"job_id": "x" * 201}, Code.INVALID_ARGUMENT),
    ("control characters in id", {"job_id": "a\x00b"}, Code.INVALID_ARGUMENT),
    (
        "too many batch sizes",
        {"batch_sizes": tuple(range(1, 100)), "default_batch_size": 1},
        Code.INVALID_ARGUMENT,
    ),
]


@pytest.mark.parametrize(("what", "overrides", "code"), BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_specs_are_refused(
    stub: pb_grpc.OptimizerServiceStub, what: str, overrides: dict, code: Code
) -> None:
    overrides = dict(overrides)  # shared between parametrised runs: never mutate
    job_id = overrides.pop("job_id", "bad/job")
    spec = small_job(job_id, **overrides).to_pb()
    expect(code, stub.RegisterJob, pb.RegisterJobRequest(spec=spec))
    assert not stub.ListJobs(pb.ListJobsRequest()).jobs


def test_missing_spec_is_refused(stub: pb_grpc.OptimizerServiceStub) -> None:
    expect(Code.INVALID_ARGUMENT, stub.RegisterJob, pb.RegisterJobRequest())


def _bad_run_calls(run_id: str) -> list[tuple[str, str, object, Code]]:
    good_gpu = gpu_pb()
    nan = math.nan
    return [
        ("Suggest", "unknown job", pb.SuggestRequest(job_id="nope", gpu=good_gpu), Code.NOT_FOUND),
        ("Suggest", "empty job id", pb.SuggestRequest(job_id="", gpu=good_gpu), Code.INVALID_ARGUMENT),
        ("Suggest", "missing gpu", pb.SuggestRequest(job_id="team/job"), Code.INVALID_ARGUMENT),
        ("Suggest", "zero gpus", pb.SuggestRequest(job_id="team/job", gpu=pb.GpuInfo(model="X", count=0, min_power_limit_w=100, max_power_limit_w=300)), Code.INVALID_ARGUMENT),
        ("Suggest", "range inverted", pb.SuggestRequest(job_id="team/job", gpu=pb.GpuInfo(model="X", count=1, min_power_limit_w=300, max_power_limit_w=100)), Code.INVALID_ARGUMENT),
        ("Suggest", "limit outside range", pb.SuggestRequest(job_id="team/job", gpu=pb.GpuInfo(model="X", count=1, min_power_limit_w=100, max_power_limit_w=300, power_limits_w=[50])), Code.INVALID_ARGUMENT),
        ("CompleteRun", "unknown run", pb.CompleteRunRequest(job_id="team/job", run_id="nope", energy_j=1, time_s=1, epochs=1), Code.NOT_FOUND),
        ("CompleteRun", "unknown job", pb.CompleteRunRequest(job_id="nope", run_id=run_id, energy_j=1, time_s=1, epochs=1), Code.NOT_FOUND),
        ("CompleteRun", "empty run id", pb.CompleteRunRequest(job_id="team/job", run_id="", energy_j=1, time_s=1, epochs=1), Code.INVALID_ARGUMENT),
        ("CompleteRun", "negative energy", pb.CompleteRunRequest(job_id="team/job", run_id=run_id, energy_j=-1, time_s=1, epochs=1), Code.INVALID_ARGUMENT),
        ("CompleteRun", "NaN energy", pb.CompleteRunRequest(job_id="team/job", run_id=run_id, energy_j=nan, time_s=1, epochs=1), Code.INVALID_ARGUMENT),
        ("CompleteRun", "negative time", pb.CompleteRunRequest(job_id="team/job", run_id=run_id, energy_j=1, time_s=-5, epochs=1), Code.INVALID_ARGUMENT),
        ("CompleteRun", "NaN time", pb.CompleteRunRequest(job_id="team/job", run_id=run_id, energy_j=1, time_s=nan, epochs=1), Code.INVALID_ARGUMENT),
        ("CompleteRun", "infinite epochs", pb.CompleteRunRequest(job_id="team/job", run_id=run_id, energy_j=1, time_s=1, epochs=math.inf), Code.INVALID_ARGUMENT),
        ("CompleteRun", "negative power limit", pb.CompleteRunRequest(job_id="team/job", run_id=run_id, energy_j=1, time_s=1, epochs=1, power_limit_w=-3), Code.INVALID_ARGUMENT),
        ("ReportProgress", "NaN energy", pb.ReportProgressRequest(job_id="team/job", run_id=run_id, epochs=1, energy_j=nan, time_s=1), Code.INVALID_ARGUMENT),
        ("ReportProgress", "unknown run", pb.ReportProgressRequest(job_id="team/job", run_id="nope", epochs=1, energy_j=1, time_s=1), Code.NOT_FOUND),
        ("ReportProfile", "no measurements", pb.ReportProfileRequest(job_id="team/job", run_id=run_id, steps_per_epoch=10), Code.INVALID_ARGUMENT),
        ("ReportProfile", "zero steps", pb.ReportProfileRequest(job_id="team/job", run_id=run_id, steps_per_epoch=0, measurements=[pb.ProfileMeasurement(power_limit_w=100, average_power_w=90, time_per_step_s=0.1)]), Code.INVALID_ARGUMENT),
        ("ReportProfile", "negative power", pb.ReportProfileRequest(job_id="team/job", run_id=run_id, steps_per_epoch=10, measurements=[pb.ProfileMeasurement(power_limit_w=100, average_power_w=-90, time_per_step_s=0.1)]), Code.INVALID_ARGUMENT),
        ("FailRun", "unknown run", pb.FailRunRequest(job_id="team/job", run_id="nope"), Code.NOT_FOUND),
        ("FailRun", "overlong reason", pb.FailRunRequest(job_id="team/job", run_id=run_id, reason="x" * 5000), Code.INVALID_ARGUMENT),
        ("Heartbeat", "unknown run", pb.HeartbeatRequest(job_id="team/job", run_id="nope"), Code.NOT_FOUND),
        ("GetJob", "unknown job", pb.GetJobRequest(job_id="nope"), Code.NOT_FOUND),
        ("GetJob", "negative max_runs", pb.GetJobRequest(job_id="team/job", max_runs=-1), Code.INVALID_ARGUMENT),
        ("ListJobs", "page too large", pb.ListJobsRequest(page_size=5000), Code.INVALID_ARGUMENT),
        ("DeleteJob", "empty id", pb.DeleteJobRequest(job_id=""), Code.INVALID_ARGUMENT),
    ]  # fmt: skip


def test_every_bad_run_call_is_refused_without_state_change(stub: pb_grpc.OptimizerServiceStub) -> None:
    register(stub)
    run_id = suggest(stub).run_id
    before = snapshot(stub)
    for method, what, request, code in _bad_run_calls(run_id):
        with pytest.raises(grpc.RpcError) as info:
            getattr(stub, method)(request)
        assert info.value.code() == code, f"{method} {what}: {info.value.code()} {info.value.details()}"
        assert info.value.details(), f"{method} {what}: no message"
        assert snapshot(stub) == before, f"{method} {what} changed the job"


def test_a_batch_size_not_in_the_job_cannot_be_reported() -> None:
    """The API never takes a batch size from the client: runs carry the suggested one."""
    fields = {f.name for f in pb.CompleteRunRequest.DESCRIPTOR.fields}
    assert "batch_size" not in fields


def test_health_and_reflection(server: EmbeddedServer) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="powerbandit.v1.OptimizerService")).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for a in answers for s in a.list_services_response.service}
        assert "powerbandit.v1.OptimizerService" in names
