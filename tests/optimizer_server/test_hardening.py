"""Defects found by attacking the service (issue: hardening), each with the test that caught it.

Real servers on 127.0.0.1 over real SQLite files; raw generated stubs, as an attacker would use.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizer_server.policy import ProfilePoint
from optimizer_server.server import EmbeddedServer
from optimizer_server.store.base import ProfileRecord
from powerbandit.v1 import optimizer_pb2 as pb
from powerbandit.v1 import optimizer_pb2_grpc as pb_grpc
from tests.helpers import gpu_pb

Code = grpc.StatusCode
TIMEOUT_S = 15.0


def spec_pb(job_id: str = "team-a/job", **fields: object) -> pb.JobSpec:
    values: dict[str, object] = {
        "job_id": job_id,
        "batch_sizes": [32, 64, 128],
        "default_batch_size": 64,
        "target_metric": 0.9,
        "max_epochs": 20,
        "seed": 3,
    }
    values.update(fields)
    return pb.JobSpec(**values)  # type: ignore[arg-type]


def code_of(call: object, *args: object, **kwargs: object) -> Code:
    """The status code a call answers (OK when it succeeds)."""
    try:
        call(*args, timeout=TIMEOUT_S, **kwargs)  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined,no-any-return]
    return Code.OK


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[EmbeddedServer, pb_grpc.OptimizerServiceStub]]:
    with EmbeddedServer(f"sqlite:///{tmp_path / 'h.db'}") as server, grpc.insecure_channel(server.address) as ch:
        yield server, pb_grpc.OptimizerServiceStub(ch)


# ------------------------------------------------------------- 1. one report must not break a job
@pytest.mark.parametrize(
    ("steps_per_epoch", "measurement", "field"),
    [
        (10.0, pb.ProfileMeasurement(power_limit_w=100, average_power_w=0.0, time_per_step_s=0.5), "average_power_w"),
        (10.0, pb.ProfileMeasurement(power_limit_w=100, average_power_w=150, time_per_step_s=1e-300), "time_per_step_s"),
        (1e-300, pb.ProfileMeasurement(power_limit_w=100, average_power_w=150, time_per_step_s=0.5), "steps_per_epoch"),
    ],
)
def test_profiles_outside_physical_ranges_are_refused_and_change_nothing(
    live: tuple[EmbeddedServer, pb_grpc.OptimizerServiceStub],
    steps_per_epoch: float,
    measurement: pb.ProfileMeasurement,
    field: str,
) -> None:
    server, stub = live
    stub.RegisterJob(pb.RegisterJobRequest(spec=spec_pb(eta=1.0)), timeout=TIMEOUT_S)
    run = stub.Suggest(pb.SuggestRequest(job_id="team-a/job", gpu=gpu_pb()), timeout=TIMEOUT_S)
    with pytest.raises(grpc.RpcError) as err:
        stub.ReportProfile(
            pb.ReportProfileRequest(
                job_id="team-a/job", run_id=run.run_id, steps_per_epoch=steps_per_epoch, measurements=[measurement]
            ),
            timeout=TIMEOUT_S,
        )
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert field in err.value.details()
    assert server.service.store.list_profiles("team-a/job") == []


@pytest.mark.parametrize(("energy_j", "time_s", "epochs"), [(0.0, 10.0, 3.0), (500.0, 0.0, 3.0), (500.0, 10.0, 0.0)])
def test_a_run_that_reached_its_target_must_report_what_it_used(
    live: tuple[EmbeddedServer, pb_grpc.OptimizerServiceStub], energy_j: float, time_s: float, epochs: float
) -> None:
    _, stub = live
    stub.RegisterJob(pb.RegisterJobRequest(spec=spec_pb(eta=1.0)), timeout=TIMEOUT_S)
    run = stub.Suggest(pb.SuggestRequest(job_id="team-a/job", gpu=gpu_pb()), timeout=TIMEOUT_S)
    request = pb.CompleteRunRequest(
        job_id="team-a/job", run_id=run.run_id, energy_j=energy_j, time_s=time_s, epochs=epochs, reached_target=True
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.CompleteRun(request, timeout=TIMEOUT_S)
    assert err.value.code() == Code.INVALID_ARGUMENT and "reached_target" in err.value.details()
    # the same numbers for a run that did not reach its target are fine (nothing was learned)
    request.reached_target = False
    stub.CompleteRun(request, timeout=TIMEOUT_S)


@pytest.mark.parametrize("policy", ["powerbandit", "zeus"])
def test_a_stored_zero_cost_profile_is_skipped_not_raised(
    live: tuple[EmbeddedServer, pb_grpc.OptimizerServiceStub], policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A database written before the edge refused 0 W profiles: the job keeps serving every caller."""
    server, stub = live
    stub.RegisterJob(pb.RegisterJobRequest(spec=spec_pb(eta=1.0, policy=policy)), timeout=TIMEOUT_S)
    stub.RegisterJob(pb.RegisterJobRequest(spec=spec_pb("team-b/other")), timeout=TIMEOUT_S)
    run = stub.Suggest(pb.SuggestRequest(job_id="team-a/job", gpu=gpu_pb()), timeout=TIMEOUT_S)
    with server.service.store.job_transaction("team-a/job") as tx:  # what an older server accepted
        tx.put_profile(ProfileRecord("NVIDIA A40", run.batch_size, {100.0: ProfilePoint(100.0, 0.0, 5.0)}, run.run_id))
    stub.CompleteRun(
        pb.CompleteRunRequest(
            job_id="team-a/job", run_id=run.run_id, energy_j=800, time_s=10, epochs=3, reached_target=True,
            power_limit_w=100,
        ),
        timeout=TIMEOUT_S,
    )  # fmt: skip
    for _ in range(3):
        nxt = stub.Suggest(pb.SuggestRequest(job_id="team-a/job", gpu=gpu_pb()), timeout=TIMEOUT_S)
        assert nxt.batch_size in (32, 64, 128)
    job = stub.GetJob(pb.GetJobRequest(job_id="team-a/job"), timeout=TIMEOUT_S).job
    assert job.completed_runs == 1
    listed = stub.ListJobs(pb.ListJobsRequest(), timeout=TIMEOUT_S).jobs
    assert {j.spec.job_id for j in listed} == {"team-a/job", "team-b/other"}


def test_a_policy_failure_on_stored_state_falls_back_and_a_completion_is_kept(
    live: tuple[EmbeddedServer, pb_grpc.OptimizerServiceStub], caplog: pytest.LogCaptureFixture
) -> None:
    """The deepest layer: whatever a policy raises on a stored state, callers never see INTERNAL."""
    server, stub = live
    stub.RegisterJob(pb.RegisterJobRequest(spec=spec_pb()), timeout=TIMEOUT_S)
    first = stub.Suggest(pb.SuggestRequest(job_id="team-a/job", gpu=gpu_pb()), timeout=TIMEOUT_S)
    with server.service.store.job_transaction("team-a/job") as tx:  # a state no version of the policy wrote
        tx.save_job({"version": 3, "arms": {"64": "garbage"}, "epoch_cost": 7}, tx.job.decisions)
    with caplog.at_level(logging.ERROR, logger="powerbandit.server.policy"):
        suggestion = stub.Suggest(pb.SuggestRequest(job_id="team-a/job", gpu=gpu_pb()), timeout=TIMEOUT_S)
        assert suggestion.phase == pb.PHASE_FALLBACK and suggestion.batch_size == 64
        assert "could not use this job's stored state" in suggestion.explanation
        job = stub.GetJob(pb.GetJobRequest(job_id="team-a/job"), timeout=TIMEOUT_S).job
        assert [a.status for a in job.arms] == ["unknown"] * 3
        assert stub.ListJobs(pb.ListJobsRequest(), timeout=TIMEOUT_S).jobs[0].spec.job_id == "team-a/job"
        # completing a run rebuilds the state from the run log: the job heals itself
        stub.CompleteRun(
            pb.CompleteRunRequest(
                job_id="team-a/job", run_id=first.run_id, energy_j=900, time_s=10, epochs=4, reached_target=True
            ),
            timeout=TIMEOUT_S,
        )
    assert any("team-a/job" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    job = stub.GetJob(pb.GetJobRequest(job_id="team-a/job"), timeout=TIMEOUT_S).job
    assert [a.status for a in job.arms] == ["unexplored", "active", "unexplored"]
    assert job.completed_runs == 1


_POWER = st.one_of(st.sampled_from([1.0, 1e6]), st.floats(1.0, 1e6))
_STEP = st.one_of(st.sampled_from([1e-6, 1e5]), st.floats(1e-6, 1e5))
_AMOUNT = st.one_of(st.sampled_from([0.0, 1e-300, 5e-324, 1e15]), st.floats(0.0, 1e15))


@st.composite
def accepted_history(draw: st.DrawFn) -> dict[str, object]:
    """A job and a sequence of reports the edge accepts, with extreme but legal values."""
    return {
        "eta": draw(st.sampled_from([0.0, 1.0, 0.5]) | st.floats(0.0, 1.0)),
        "policy": draw(st.sampled_from(["powerbandit", "zeus"])),
        "window": draw(st.sampled_from([0, 2])),
        "runs": draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "gpu": st.sampled_from(["A40", "V100"]),
                        "profile": st.none()
                        | st.tuples(
                            st.one_of(st.sampled_from([1.0, 1e9]), st.floats(1.0, 1e9)),
                            st.lists(st.tuples(_POWER, _STEP), min_size=1, max_size=3),
                        ),
                        "energy_j": _AMOUNT,
                        "time_s": _AMOUNT,
                        "epochs": _AMOUNT,
                        "reached": st.booleans(),
                        "end": st.sampled_from(["complete", "complete", "fail", "leave"]),
                    }
                ),
                min_size=1,
                max_size=6,
            )
        ),
    }


def test_no_accepted_history_makes_suggest_get_job_or_list_jobs_fail(tmp_path: Path) -> None:
    """Property: store arbitrary *accepted* reports; Suggest, GetJob and ListJobs never answer INTERNAL."""
    with EmbeddedServer(f"sqlite:///{tmp_path / 'prop.db'}") as server, grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.OptimizerServiceStub(ch)
        counter = iter(range(1_000_000))
        policy_errors: list[logging.LogRecord] = []

        class Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                policy_errors.append(record)

        handler = Collect(level=logging.ERROR)
        logging.getLogger("powerbandit.server.policy").addHandler(handler)

        @settings(max_examples=60, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
        @given(history=accepted_history())
        def check(history: dict[str, object]) -> None:
            job_id = f"prop/{next(counter)}"
            spec = spec_pb(job_id, eta=history["eta"], policy=history["policy"], window=history["window"])
            stub.RegisterJob(pb.RegisterJobRequest(spec=spec), timeout=TIMEOUT_S)
            for report in history["runs"]:  # type: ignore[attr-defined]
                gpu = gpu_pb(report["gpu"])
                run = stub.Suggest(pb.SuggestRequest(job_id=job_id, gpu=gpu), timeout=TIMEOUT_S)
                if report["profile"] is not None and not run.power_limit_w:
                    steps, points = report["profile"]
                    measurements = [
                        pb.ProfileMeasurement(power_limit_w=limit, average_power_w=power, time_per_step_s=step)
                        for limit, (power, step) in zip(run.profile_power_limits_w, points, strict=False)
                    ]
                    code_of(stub.ReportProfile, pb.ReportProfileRequest(
                        job_id=job_id, run_id=run.run_id, steps_per_epoch=steps, measurements=measurements))  # fmt: skip
                if report["end"] == "complete":
                    code = code_of(stub.CompleteRun, pb.CompleteRunRequest(
                        job_id=job_id, run_id=run.run_id, energy_j=report["energy_j"], time_s=report["time_s"],
                        epochs=report["epochs"], reached_target=report["reached"]))  # fmt: skip
                    assert code in (Code.OK, Code.INVALID_ARGUMENT), code
                elif report["end"] == "fail":
                    stub.FailRun(pb.FailRunRequest(job_id=job_id, run_id=run.run_id, reason="x"), timeout=TIMEOUT_S)
            for gpu in ("A40", "V100", "H100"):
                assert code_of(stub.Suggest, pb.SuggestRequest(job_id=job_id, gpu=gpu_pb(gpu))) == Code.OK
            job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=TIMEOUT_S).job
            for arm in job.arms:
                assert math.isnan(arm.cost_mean) or arm.cost_mean >= 0
            assert code_of(stub.ListJobs, pb.ListJobsRequest(job_id_prefix="prop/")) == Code.OK

        try:
            check()
        finally:
            logging.getLogger("powerbandit.server.policy").removeHandler(handler)
        # the policies themselves handle every accepted history: the safety net never had to catch one
        assert not policy_errors, policy_errors[0].getMessage()


# ------------------------------------------------------------------------------- 7. smaller ones
@pytest.mark.parametrize(
    ("request_builder", "field"),
    [
        (lambda: pb.RegisterJobRequest(spec=spec_pb(metric_direction=7)), "metric_direction"),
        (lambda: pb.RegisterJobRequest(spec=spec_pb("x" * 201)), "spec.job_id"),
        (lambda: pb.RegisterJobRequest(spec=spec_pb(batch_sizes=list(range(1, 100)), default_batch_size=1)), "batch_sizes"),
    ],
)
def test_out_of_range_fields_are_invalid_arguments_not_retryable_codes(
    live: tuple[EmbeddedServer, pb_grpc.OptimizerServiceStub], request_builder: object, field: str
) -> None:
    """RESOURCE_EXHAUSTED makes clients retry; a field that is too long never gets shorter."""
    _, stub = live
    with pytest.raises(grpc.RpcError) as err:
        stub.RegisterJob(request_builder(), timeout=TIMEOUT_S)  # type: ignore[operator]
    assert err.value.code() == Code.INVALID_ARGUMENT and field in err.value.details()
    assert stub.ListJobs(pb.ListJobsRequest(), timeout=TIMEOUT_S).jobs == []


# -------------------------------------------------------------------- 2. ListJobs never leaks ids
SCOPED_TOKENS = "team-a-secret-1  team-a/\nadmin-secret-3  *\n"


def test_list_jobs_pages_of_a_scoped_token_reveal_nothing_outside_its_scope(tmp_path: Path) -> None:
    from optimizer_server.auth import TokenAuth

    with (
        EmbeddedServer(f"sqlite:///{tmp_path / 'scope.db'}", auth=TokenAuth.parse(SCOPED_TOKENS)) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        stub = pb_grpc.OptimizerServiceStub(ch)
        admin = (("authorization", "Bearer admin-secret-3"),)
        team_a = (("authorization", "Bearer team-a-secret-1"),)
        # team-b's jobs sort between and after team-a's
        for job_id in ("team-a/1", "team-a/3", "team-a0", "team-b/2", "team-a/5", "team-bb", "zzz"):
            stub.RegisterJob(pb.RegisterJobRequest(spec=spec_pb(job_id)), metadata=admin, timeout=TIMEOUT_S)
        for prefix in ("", "team", "team-a", "team-a/"):
            seen, tokens, token = [], [], ""
            for _ in range(20):
                page = stub.ListJobs(
                    pb.ListJobsRequest(job_id_prefix=prefix, page_size=1, page_token=token),
                    metadata=team_a,
                    timeout=TIMEOUT_S,
                )
                seen += [j.spec.job_id for j in page.jobs]
                assert len(page.jobs) == 1, "a scoped page is never empty before the last"
                tokens.append(page.next_page_token)
                token = page.next_page_token
                if not token:
                    break
            assert seen == ["team-a/1", "team-a/3", "team-a/5"], prefix
            assert all(t.startswith("team-a/") for t in tokens if t), tokens
        # a prefix outside the scope lists nothing (and says nothing)
        page = stub.ListJobs(pb.ListJobsRequest(job_id_prefix="team-b"), metadata=team_a, timeout=TIMEOUT_S)
        assert list(page.jobs) == [] and page.next_page_token == ""
        # a page token pointing outside the scope is only a position
        page = stub.ListJobs(pb.ListJobsRequest(page_token="team-a/2"), metadata=team_a, timeout=TIMEOUT_S)
        assert [j.spec.job_id for j in page.jobs] == ["team-a/3", "team-a/5"]


def test_scoped_prefixes_intersect_a_request_prefix_with_token_scopes() -> None:
    from optimizer_server.store.base import scoped_prefixes

    assert scoped_prefixes("", ()) == [""]
    assert scoped_prefixes("team", ("team-a/", "team-b/")) == ["team-a/", "team-b/"]
    assert scoped_prefixes("team-a/x", ("team-a/",)) == ["team-a/x"]
    assert scoped_prefixes("other", ("team-a/",)) == []
    assert scoped_prefixes("", ("a/", "a/b/", "c")) == ["a/", "c"]


# ---------------------------------------------------------------- 3. token files parse one way
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abcdefgh;ijklmnop team-a/", "line 1: ';' does not separate tokens"),
        ("# tokens\nabcdefgh-1234\n", "line 2: token abcd**** lists no job-id prefixes"),
        ("abcdefgh-1234 team-a/\nabcdefgh-1234 team-b/\n", "line 2: token abcd**** is already listed at"),
        ("abcdefgh-1234 * team-a/", "mixes '*'"),
        ('abc"defgh-1234 team-a/', "the token contains '\"'"),
    ],
)
def test_ambiguous_token_files_are_refused_with_their_line(tmp_path: Path, text: str, message: str) -> None:
    from optimizer_server.auth import TokenAuth
    from optimizer_server.errors import InvalidArgumentError

    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(InvalidArgumentError) as err:
        TokenAuth.from_environment(str(path))
    assert message in str(err.value) and str(path) in str(err.value)


def test_the_token_variable_separates_entries_with_semicolons(monkeypatch: pytest.MonkeyPatch) -> None:
    from optimizer_server.auth import TokenAuth
    from optimizer_server.errors import InvalidArgumentError

    monkeypatch.setenv("POWERBANDIT_AUTH_TOKENS", "abcdefgh-1 team-a/ ; ijklmnop-2 *")
    auth = TokenAuth.from_environment()
    assert auth.authenticate([("authorization", "Bearer abcdefgh-1")]).prefixes == ("team-a/",)
    assert auth.authenticate([("authorization", "Bearer ijklmnop-2")]).prefixes == ()
    monkeypatch.setenv("POWERBANDIT_AUTH_TOKENS", "abcdefgh;ijklmnop team-a/")  # no all-jobs token by accident
    with pytest.raises(InvalidArgumentError, match="entry 1: token abcd\\*\\*\\*\\* lists no job-id prefixes"):
        TokenAuth.from_environment()


# ------------------------------------------------------ 4. undecodable bodies: INVALID_ARGUMENT
def test_an_undecodable_body_is_an_invalid_argument_logged_once(
    live: tuple[EmbeddedServer, pb_grpc.OptimizerServiceStub], caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = live
    with grpc.insecure_channel(server.address) as ch, caplog.at_level(logging.WARNING):
        raw = ch.unary_unary(
            "/powerbandit.v1.OptimizerService/Suggest",
            request_serializer=lambda body: body,
            response_deserializer=lambda body: body,
        )
        for _ in range(20):
            with pytest.raises(grpc.RpcError) as err:
                raw(b"\xff\xff\xff\xff\x0f", timeout=TIMEOUT_S)
            assert err.value.code() == Code.INVALID_ARGUMENT
            assert "not a valid powerbandit.v1.SuggestRequest" in err.value.details()
    lines = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(lines) == 1 and not any(r.exc_info for r in caplog.records)


# ------------------------------------------------------------- 5. one job does not slow the others
def test_runs_in_flight_are_bounded_per_job_with_a_clear_message(tmp_path: Path) -> None:
    with (
        EmbeddedServer(f"sqlite:///{tmp_path / 'bound.db'}", max_runs_in_flight=3) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        stub = pb_grpc.OptimizerServiceStub(ch)
        for job_id in ("team-a/busy", "team-a/quiet"):
            stub.RegisterJob(pb.RegisterJobRequest(spec=spec_pb(job_id)), timeout=TIMEOUT_S)
        runs = [stub.Suggest(pb.SuggestRequest(job_id="team-a/busy", gpu=gpu_pb(), request_id=f"r{i}"),
                             timeout=TIMEOUT_S) for i in range(3)]  # fmt: skip
        with pytest.raises(grpc.RpcError) as err:
            stub.Suggest(pb.SuggestRequest(job_id="team-a/busy", gpu=gpu_pb()), timeout=TIMEOUT_S)
        assert err.value.code() == Code.RESOURCE_EXHAUSTED
        assert "3 runs in flight" in err.value.details() and "--max-runs-in-flight" in err.value.details()
        # a retried request id still gets its run; other jobs are not limited
        again = stub.Suggest(pb.SuggestRequest(job_id="team-a/busy", gpu=gpu_pb(), request_id="r1"), timeout=TIMEOUT_S)
        assert again.run_id == runs[1].run_id
        stub.Suggest(pb.SuggestRequest(job_id="team-a/quiet", gpu=gpu_pb()), timeout=TIMEOUT_S)
        # a finished run makes room
        stub.FailRun(pb.FailRunRequest(job_id="team-a/busy", run_id=runs[0].run_id, reason="x"), timeout=TIMEOUT_S)
        stub.Suggest(pb.SuggestRequest(job_id="team-a/busy", gpu=gpu_pb()), timeout=TIMEOUT_S)


def test_in_flight_index_answers_what_a_suggestion_needs(tmp_path: Path) -> None:
    """Busy batch sizes, counts and request ids come from the index, consistent with the run log."""
    from optimizer_server.service import OptimizerService, RunGpu
    from optimizer_server.store.open import open_store
    from optimizer_server.validation import job_spec

    store = open_store(f"sqlite:///{tmp_path / 'idx.db'}")
    now = [1000.0]
    service = OptimizerService(store, lease_s=10.0, clock=lambda: now[0])
    try:
        service.register_job(job_spec(spec_pb("j"), service.policies))
        gpu = RunGpu("A40", 1, 100.0, 300.0, (100.0, 300.0))
        runs = [service.suggest("j", gpu, request_id=f"q{i}").run for i in range(4)]
        with store.job_transaction("j") as tx:
            assert tx.count_in_flight() == 4
            assert sorted(tx.in_flight_batch_sizes(now[0])) == sorted({r.batch_size for r in runs})
            assert tx.in_flight_batch_sizes(now[0] + 11.0) == []  # every lease lapsed
            assert tx.find_run_by_request("q2").run_id == runs[2].run_id  # type: ignore[union-attr]
        service.fail_run("j", runs[2].run_id, "crashed")
        with store.job_transaction("j") as tx:
            assert tx.count_in_flight() == 3
            assert tx.find_run_by_request("q2").state == "failed"  # type: ignore[union-attr] - from the log
            assert {r.run_id for r in tx.runs_in_flight()} == {runs[0].run_id, runs[1].run_id, runs[3].run_id}
    finally:
        store.close()


# ------------------------------------------------- 7. database outages: short waits, no driver text
@pytest.mark.postgres
def test_a_postgres_outage_answers_unavailable_quickly_without_driver_details(tmp_path: Path) -> None:
    import tempfile
    import time

    from tests.helpers import PostgresServer

    pytest.importorskip("psycopg")
    root = Path(tempfile.mkdtemp(prefix="powerbandit-pg-outage-"))
    pg = PostgresServer(root)
    try:
        url = pg.new_database()
        with EmbeddedServer(url, db_timeout_s=1.0) as server, grpc.insecure_channel(server.address) as ch:
            stub = pb_grpc.OptimizerServiceStub(ch)
            stub.RegisterJob(pb.RegisterJobRequest(spec=spec_pb()), timeout=TIMEOUT_S)
            pg._run(str(pg.bindir / "pg_ctl"), "-D", str(pg.data), "-m", "immediate", "-w", "stop")
            for _ in range(3):  # the first call may find a dead pooled connection, later ones wait
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as err:
                    stub.Suggest(pb.SuggestRequest(job_id="team-a/job", gpu=gpu_pb()), timeout=TIMEOUT_S)
                assert err.value.code() == Code.UNAVAILABLE, err.value.details()
                assert err.value.details().startswith("database unavailable")
                for leak in ("127.0.0.1", "postgres", "connection", str(pg.port)):
                    assert leak not in err.value.details()
                assert time.monotonic() - started < 5.0
            opts = f"-p {pg.port} -k {pg.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
            pg._run(str(pg.bindir / "pg_ctl"), "-D", str(pg.data), "-o", opts, "-w", "-l", str(root / "pg2.log"), "start")
            for _ in range(50):  # the pool reconnects in the background
                if code_of(stub.Suggest, pb.SuggestRequest(job_id="team-a/job", gpu=gpu_pb())) == Code.OK:
                    break
                time.sleep(0.2)
            else:
                pytest.fail("the server did not recover after PostgreSQL came back")
    finally:
        pg.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------- 6. big jobs: runs in pages, groups in ListJobs
def test_a_job_with_tens_of_thousands_of_runs_reads_in_pages(tmp_path: Path) -> None:
    from client_sdk.client import OptimizerClient
    from optimizer_server.store.base import RunRecord

    runs_total = 32_000
    with EmbeddedServer(f"sqlite:///{tmp_path / 'big.db'}") as server, grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.OptimizerServiceStub(ch)
        stub.RegisterJob(pb.RegisterJobRequest(spec=spec_pb()), timeout=TIMEOUT_S)
        with server.service.store.job_transaction("team-a/job") as tx:  # fast: one transaction
            for i in range(runs_total):
                tx.insert_run(RunRecord(
                    run_id=f"run-{i:06d}", job_id="team-a/job", state="failed" if i % 2 else "completed",
                    batch_size=(32, 64, 128)[i % 3], power_limit_w=300.0, profile_power_limits_w=(),
                    phase="exploit", explanation="e" * 120, gpu_model="A40" if i < 20_000 else "V100",
                    gpu_count=1, max_power_w=300.0, created_unix_s=1000.0 + i, lease_expires_unix_s=0.0,
                    finished_unix_s=2000.0 + i, energy_j=10.0, time_s=1.0, epochs=2.0,
                    reached_target=not i % 2, reason="r" * 300 if i % 2 else "",
                ))  # fmt: skip
        # raw pages: each under the 4 MiB message limit, together every run once, in order
        seen: list[str] = []
        token, pages = "", 0
        for _ in range(100):
            response = stub.GetJob(pb.GetJobRequest(job_id="team-a/job", page_token=token), timeout=TIMEOUT_S)
            assert response.ByteSize() < 4 * 1024 * 1024
            seen += [r.run_id for r in response.job.runs]
            pages += 1
            token = response.next_page_token
            if not token:
                break
        assert pages > 1 and seen == [f"run-{i:06d}" for i in range(runs_total)]
        with OptimizerClient(server.address, timeout_s=30) as client:
            assert len(client.get_job("team-a/job").runs) == runs_total  # the SDK gathers the pages
            assert [r.run_id for r in client.get_job("team-a/job", max_runs=3).runs] == [
                f"run-{i:06d}" for i in range(runs_total - 3, runs_total)
            ]
            (listed,) = client.list_jobs("team-a/", window_start_unix_s=2000.0 + 30_000)
        assert not listed.runs
        groups = listed.run_groups
        assert sum(g.runs for g in groups) == runs_total
        assert sum(g.energy_j for g in groups) == pytest.approx(10.0 * runs_total)
        assert sum(g.runs for g in groups if g.in_window) == 2_000
        assert {g.gpu_model for g in groups} == {"A40", "V100"}
        assert sum(g.runs for g in groups if g.reached_target and g.state == pb.RUN_STATE_COMPLETED) == runs_total // 2
        with pytest.raises(grpc.RpcError) as err:
            stub.GetJob(pb.GetJobRequest(job_id="team-a/job", page_token="team-b/secret"), timeout=TIMEOUT_S)
        assert err.value.code() == Code.INVALID_ARGUMENT


def test_the_operator_view_from_run_groups_matches_the_one_from_every_run(tmp_path: Path) -> None:
    """``jobs list``/``report`` read only ListJobs (groups); the figures equal those from every run."""
    import random

    from client_sdk.client import OptimizerClient
    from optimizer_server.store.base import RunRecord
    from powerbandit.cli import operator_view as view

    rng = random.Random(5)
    with EmbeddedServer(f"sqlite:///{tmp_path / 'groups.db'}") as server:
        for job_id in ("team-a/one", "team-a/two"):
            with grpc.insecure_channel(server.address) as ch:
                pb_grpc.OptimizerServiceStub(ch).RegisterJob(pb.RegisterJobRequest(spec=spec_pb(job_id)), timeout=TIMEOUT_S)
            with server.service.store.job_transaction(job_id) as tx:
                for i in range(300):
                    state = rng.choice(["completed", "completed", "failed", "expired", "in_flight"])
                    tx.insert_run(RunRecord(
                        run_id=f"{job_id}-{i}", job_id=job_id, state=state, batch_size=rng.choice([32, 64, 128]),
                        power_limit_w=rng.choice([200.0, 300.0]), profile_power_limits_w=(), phase="exploit",
                        explanation="", gpu_model=rng.choice(["A40", "V100"]), gpu_count=1,
                        max_power_w=300.0, created_unix_s=1000.0 + i, lease_expires_unix_s=0.0,
                        finished_unix_s=0.0 if state == "in_flight" else 2000.0 + i,
                        energy_j=rng.uniform(1e3, 1e6), time_s=rng.uniform(10, 1e4), epochs=rng.uniform(1, 20),
                        reached_target=state == "completed" and rng.random() < 0.7,
                    ))  # fmt: skip
        with OptimizerClient(server.address) as client:
            for since in (0.0, 2150.0):
                listed = client.list_jobs("team-a/", window_start_unix_s=since)
                full = [client.get_job(j.spec.job_id) for j in listed]
                for job in full:
                    del job.run_groups[:]  # computed from every run instead
                from_groups = view.cluster_report(listed, since)
                from_runs = view.cluster_report(full, since)
                assert from_groups["total"]["saved_energy_j"] is not None
                for key in ("runs", "successes", "energy_j", "time_s", "saved_energy_j"):
                    assert from_groups["total"][key] == pytest.approx(from_runs["total"][key], rel=1e-9), key
                for a, b in zip(from_groups["per_job"], from_runs["per_job"], strict=True):
                    assert a["saved_fraction"] == pytest.approx(b["saved_fraction"], rel=1e-9)
                    assert a["reason"] == b["reason"]
                with pytest.raises(ValueError, match="read it again with that window"):
                    view.job_summary(listed[0], since + 1.0)


def test_a_retried_completion_with_negative_zero_gets_the_same_answer(
    live: tuple[EmbeddedServer, pb_grpc.OptimizerServiceStub],
) -> None:
    """-0.0 is a valid measurement; the store keeps no sign on zero, so the edge drops it."""
    _, stub = live
    stub.RegisterJob(pb.RegisterJobRequest(spec=spec_pb()), timeout=TIMEOUT_S)
    run = stub.Suggest(pb.SuggestRequest(job_id="team-a/job", gpu=gpu_pb()), timeout=TIMEOUT_S)
    request = pb.CompleteRunRequest(
        job_id="team-a/job", run_id=run.run_id, energy_j=-0.0, time_s=-0.0, epochs=-0.0, reached_target=False
    )
    first = stub.CompleteRun(request, timeout=TIMEOUT_S)
    assert stub.CompleteRun(request, timeout=TIMEOUT_S) == first
    assert math.copysign(1.0, first.run.time_s) == 1.0


# ------------------------------------------------------- found by a newcomer's try: start-up errors
def test_serve_with_its_metrics_port_taken_says_so_in_one_line(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "powerbandit", "serve", "--db", f"sqlite:///{tmp_path / 'm.db'}",
             "--listen", "127.0.0.1:0", "--metrics-port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port} (--metrics-port)" in done.stderr
    for noise in ("Traceback", "Exception ignored", "never awaited", "Event loop is closed"):
        assert noise not in done.stderr, done.stderr


def test_a_tls_file_that_is_not_pem_is_named_not_blamed_on_binding(tmp_path: Path) -> None:
    from optimizer_server.errors import InvalidArgumentError

    notes = tmp_path / "notes.txt"
    notes.write_text("not a certificate\n")
    server = EmbeddedServer(f"sqlite:///{tmp_path / 't.db'}", tls_cert=str(notes), tls_key=str(notes))
    with pytest.raises(InvalidArgumentError, match="are not a PEM certificate and its private key"):
        server.start()


def test_a_tokens_file_without_tokens_or_beside_the_variable_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given tokens, authentication must never end up off or half-configured in silence."""
    from optimizer_server.auth import TokenAuth
    from optimizer_server.errors import InvalidArgumentError

    empty = tmp_path / "tokens"
    empty.write_text("# nobody yet\n\n")
    with pytest.raises(InvalidArgumentError, match="lists no token"):
        TokenAuth.from_environment(str(empty))
    full = tmp_path / "tokens2"
    full.write_text("abcdefgh-1 team-a/\n")
    monkeypatch.setenv("POWERBANDIT_AUTH_TOKENS", "ijklmnop-2 *")
    with pytest.raises(InvalidArgumentError, match="use one source"):
        TokenAuth.from_environment(str(full))
    monkeypatch.delenv("POWERBANDIT_AUTH_TOKENS")
    assert TokenAuth.from_environment(str(full)).enabled


def test_the_best_configuration_shown_for_a_budget_job_is_the_one_suggest_applies(tmp_path: Path) -> None:
    """A newcomer saw `best 512 @ 200 W` in jobs list while every run of 512 got 100 W under a budget."""
    from client_sdk.client import OptimizerClient
    from client_sdk.replay import ReplayGpu
    from tests.helpers import SMALL_TABLE, small_job

    steps = 10
    job = small_job("team-a/budget", max_slowdown=1.5)
    compared = 0
    with EmbeddedServer(f"sqlite:///{tmp_path / 'budget.db'}") as server, OptimizerClient(server.address) as client:
        for recurrence in range(10):
            with client.run(job, ReplayGpu(SMALL_TABLE), steps_per_epoch=steps, heartbeat=False) as run:
                for epoch in range(1, 6):
                    for _ in range(steps):
                        run.step()
                    if run.epoch_end(0.95 if epoch == 3 else 0.5):
                        break
            shown = client.get_job(job.job_id, max_runs=1)
            if not shown.best_batch_size or recurrence < 2:
                continue
            gpu = ReplayGpu(SMALL_TABLE).info()
            from client_sdk.client import gpu_info_to_pb

            nxt = server.service.suggest(job.job_id, _run_gpu(gpu_info_to_pb(gpu)))
            server.service.fail_run(job.job_id, nxt.run.run_id, "only looking")
            if nxt.run.batch_size == shown.best_batch_size and nxt.run.power_limit_w:
                assert shown.best_power_limit_w == nxt.run.power_limit_w, (recurrence, shown.best_batch_size)
                compared += 1
    assert compared >= 3


def _run_gpu(message: pb.GpuInfo) -> object:
    from optimizer_server.validation import run_gpu

    return run_gpu(message, True)


def test_a_mistyped_fail_open_switch_is_an_error_not_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from client_sdk.client import fail_open_from_environment

    for value, expected in (("1", True), ("On", True), ("", False), ("off", False)):
        monkeypatch.setenv("POWERBANDIT_FAIL_OPEN", value)
        assert fail_open_from_environment() is expected
    monkeypatch.setenv("POWERBANDIT_FAIL_OPEN", "maybe")
    with pytest.raises(ValueError, match="POWERBANDIT_FAIL_OPEN='maybe' is neither on"):
        fail_open_from_environment()
