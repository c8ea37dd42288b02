"""The slowdown budget (``max_slowdown``): API validation, SDK, operator view, policy and simulator."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from client_sdk.client import Job, OptimizerClient
from client_sdk.replay import ReplayGpu
from client_sdk.run import ProfileMeasurement, cheapest_power_limit
from optimizer_server.policy.base import (
    ClusterPrior,
    JobSpec,
    Observation,
    ProfilePoint,
    SuggestContext,
    decision_rng,
)
from optimizer_server.policy.powerbandit import PowerBanditPolicy
from optimizer_server.server import EmbeddedServer
from powerbandit.cli import operator_cli
from powerbandit.cli.errors import run_command
from powerbandit.cli.main import build_parser
from powerbandit.v1 import optimizer_pb2 as pb
from powerbandit.v1 import optimizer_pb2_grpc as pb_grpc
from simulations import cli as sim_cli
from simulations.engine import budget_oracle, default_time_s, execute_run, simulate
from tests.helpers import EPOCHS, POWER, SMALL_TABLE, budget_job, small_job

STEPS = 10





# ------------------------------------------------------------------------------------ simulator
def test_constrained_oracle_is_the_cheapest_energy_within_the_budget() -> None:
    job = budget_job()
    assert default_time_s(job) == pytest.approx(100.0)
    assert job.oracle() == (16, 100.0)  # unconstrained: least energy
    assert budget_oracle(job, 1.25) == (16, 100.0)  # 120 s fits 125 s
    assert budget_oracle(job, 1.1) == (16, 200.0)  # 120 s does not fit 110 s
    assert budget_oracle(job, 1.0) == (16, 200.0)


def test_profiling_run_settles_within_the_budget() -> None:
    job = budget_job()
    rng = np.random.default_rng(0)
    assert execute_run(job, 16, None, rng, math.inf).power_limit == 100.0  # energy only
    assert execute_run(job, 16, None, rng, math.inf, max_slowdown=1.1).power_limit == 200.0  # 12 s > 1.1 * 6 s
    assert execute_run(job, 16, None, rng, math.inf, max_slowdown=2.0).power_limit == 100.0


@pytest.mark.parametrize("budget", [1.1, 1.25])
def test_simulation_under_a_budget_learns_the_constrained_oracle(budget: float) -> None:
    job = budget_job(eta=0.5)  # the budget makes the cost energy whatever eta the trace job had
    result = simulate(job, "powerbandit", 3, max_slowdown=budget)
    s = result.summary()
    assert s["max_slowdown"] == budget and s["eta"] == 1.0
    ob, op = budget_oracle(job.with_knobs(eta=1.0), budget)
    assert result.oracle_costs[0] == pytest.approx(EPOCHS[ob] * POWER[ob][op][0] * POWER[ob][op][1])
    last = [a for a in result.attempts if a.recurrence >= 20]
    assert all((a.batch_size, a.power_limit) == (ob, op) for a in last)
    assert 0.0 <= s["budget_broken_pct"] <= 100.0 and s["slowdown_mean"] > 0
    # b32 may be explored (its epochs are unknown until then), but once it reached the target (30 epochs:
    # three times the default's time) it is never used again
    first = next((i for i, a in enumerate(result.attempts) if a.batch_size == 32 and a.reached), None)
    if first is not None:
        assert all(a.batch_size != 32 for a in result.attempts[first + 1 :])
    oracle = simulate(job, "oracle", 3, max_slowdown=budget).summary()
    assert oracle["regret_pct"] == pytest.approx(0.0) and oracle["budget_broken_pct"] == 0.0


def test_without_a_budget_nothing_is_reported_broken() -> None:
    s = simulate(budget_job(eta=1.0), "powerbandit", 1, recurrences=5).summary()
    assert s["max_slowdown"] == 0.0 and math.isnan(s["budget_broken_pct"]) and s["slowdown_mean"] > 0


def test_cli_budget_needs_a_policy_that_has_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_cli.main(["--all", "--policy", "zeus", "--max-slowdown", "1.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --max-slowdown: policy zeus has no slowdown budget; use default, oracle, powerbandit"]
    assert sim_cli.main(["--all", "--policy", "powerbandit", "--scenario", "drift", "--max-slowdown", "1.1"]) == 2
    assert "--max-slowdown works with --scenario" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ policy
def spec(budget: float) -> JobSpec:
    return JobSpec("j", (8, 16, 32), 8, 0.6, 100, eta=1.0, max_slowdown=budget, seed=1)


def context() -> SuggestContext:
    profiles = {b: {p: ProfilePoint(p, w, t) for p, (w, t) in row.items()} for b, row in POWER.items()}
    return SuggestContext("v100", 200.0, (100.0, 200.0), profiles)


def learned_state(s: JobSpec) -> dict[str, object]:
    policy = PowerBanditPolicy()
    state = policy.new_state(s)
    for _ in range(3):
        for b, k in EPOCHS.items():
            p = 200.0
            w, t = POWER[b][p]
            obs = Observation(b, "v100", p, k, w * t * k, t * k, w * t * k, True, 200.0, w * t)
            state = policy.observe(s, state, obs)
    return state


@pytest.mark.parametrize(("budget", "limit"), [(1.1, 200.0), (1.25, 100.0)])
def test_policy_picks_the_cheapest_power_limit_expected_to_fit(budget: float, limit: float) -> None:
    s = spec(budget)
    state = learned_state(s)
    policy = PowerBanditPolicy()
    decisions = [policy.suggest(s, state, context(), decision_rng(1, i)) for i in range(20)]
    assert all(d.batch_size != 32 for d in decisions)  # 30 epochs: three times the default's time
    assert {(d.batch_size, d.power_limit_w) for d in decisions} == {(16, limit)}
    assert "slowdown budget" in decisions[0].explanation


def test_policy_keeps_the_default_when_nothing_else_fits() -> None:
    s = spec(1.0)
    state = learned_state(s)
    squeezed = dict(POWER)
    squeezed[16] = {100.0: (80.0, 12.0), 200.0: (170.0, 10.5)}  # b16 now slower than the default
    profiles = {b: {p: ProfilePoint(p, w, t) for p, (w, t) in row.items()} for b, row in squeezed.items()}
    ctx = SuggestContext("v100", 200.0, (100.0, 200.0), profiles)
    d = PowerBanditPolicy().suggest(s, state, ctx, decision_rng(1, 0))
    assert (d.batch_size, d.power_limit_w) == (8, 200.0)


def test_a_cluster_prior_does_not_rule_untried_batch_sizes_out_of_the_budget() -> None:
    # Only the default (8) has run. A prior from other jobs says a larger batch needs e^0.3 = 1.35x
    # the epochs: taken as fact, 16 could not fit a 10 % budget and would never be tried. The budget
    # judges an untried batch size on this job's own runs; the prior still weighs in the gate.
    s = spec(1.1)
    policy = PowerBanditPolicy()
    w, t = POWER[8][200.0]
    state = policy.observe(s, policy.new_state(s), Observation(8, "v100", 200.0, 10, w * t * 10, t * 10, w * t * 10, True, 200.0, w * t))
    own = {8: {p: ProfilePoint(p, w, t) for p, (w, t) in POWER[8].items()}}
    prior = ClusterPrior(epochs_slope_down=0.0, epochs_slope_up=0.3, jobs=5)
    ctx = SuggestContext("v100", 200.0, (100.0, 200.0), own, prior=prior)
    picks = {policy.suggest(s, state, ctx, decision_rng(2, i)).batch_size for i in range(100)}
    assert 16 in picks


def test_sdk_choice_after_profiling_follows_the_budget() -> None:
    row = SMALL_TABLE[64]  # 100 W: 20 s, 200 W: 12 s, 300 W: 11 s per epoch
    ms = [ProfileMeasurement(p, w, t / STEPS) for p, (w, t) in row.items()]
    assert cheapest_power_limit(ms, 1.0, 300.0) == 100.0
    assert cheapest_power_limit(ms, 1.0, 300.0, 1.1) == 200.0
    assert cheapest_power_limit(ms, 1.0, 300.0, 1.05) == 300.0
    assert cheapest_power_limit(ms, 1.0, 300.0, 1.0) == 300.0


# ------------------------------------------------------------------------------------ API, SDK, operator view
@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(f"sqlite:///{tmp_path / 'pb.db'}") as running:
        yield running


def test_register_validates_and_stores_the_budget(sqlite_server: EmbeddedServer) -> None:
    channel = grpc.insecure_channel(sqlite_server.address)
    stub = pb_grpc.OptimizerServiceStub(channel)
    try:
        base = small_job("team/budget").to_pb()
        base.ClearField("eta")
        base.max_slowdown = 1.1
        stored = stub.RegisterJob(pb.RegisterJobRequest(spec=base)).spec
        assert stored.max_slowdown == pytest.approx(1.1) and stored.eta == 1.0
        plain = stub.RegisterJob(pb.RegisterJobRequest(spec=small_job("team/plain").to_pb())).spec
        assert not plain.HasField("max_slowdown") and plain.eta == 0.5
        cases = {
            "team/b1": ({"max_slowdown": 0.9}, "spec.max_slowdown must be >= 1"),
            "team/b2": ({"max_slowdown": math.nan}, "spec.max_slowdown must be a finite number"),
            "team/b3": ({"max_slowdown": 1.1, "eta": 0.3}, "alternatives"),
            "team/b4": ({"max_slowdown": 1.1, "policy": "zeus"}, "needs the powerbandit policy"),
            "team/b5": ({"max_slowdown": 1000.0}, "spec.max_slowdown must be <= 100"),
        }
        for job_id, (fields, message) in cases.items():
            msg = small_job(job_id).to_pb()
            msg.ClearField("eta")
            for name, value in fields.items():
                setattr(msg, name, value)
            with pytest.raises(grpc.RpcError) as err:
                stub.RegisterJob(pb.RegisterJobRequest(spec=msg))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (err.value.details() or "")
    finally:
        channel.close()


def test_sdk_run_under_a_budget_and_jobs_show(
    sqlite_server: EmbeddedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    job: Job = small_job("team/sdk-budget", max_slowdown=1.1)
    with OptimizerClient(sqlite_server.address) as client:
        with client.run(job, ReplayGpu(SMALL_TABLE), steps_per_epoch=STEPS, heartbeat=False) as run:
            assert run.batch_size == 64 and run.profiling
            for epoch in range(1, 4):
                for _ in range(STEPS):
                    run.step()
                if run.epoch_end(0.95 if epoch == 3 else 0.5):
                    break
        done = run.completed_run
        assert done is not None and done.reached_target
        assert done.power_limit_w == 200.0  # least energy is 100 W, but 20 s > 1.1 * 11 s per epoch
        row = SMALL_TABLE[64]
        assert done.cost == pytest.approx(done.energy_j)  # eta 1: the cost is the energy
        assert done.time_s < 3 * row[100.0][1]  # the last epochs ran at 200 W, not at the slow 100 W
        assert client.get_job(job.job_id).spec.max_slowdown == pytest.approx(1.1)
    args = build_parser().parse_args(["jobs", "--server", sqlite_server.address, "show", job.job_id])
    assert run_command(lambda: operator_cli.run(args)) == 0
    out = capsys.readouterr().out
    assert "max_slowdown 1.1 (energy within 10 % of the default's time)" in out and "eta 1" not in out


def test_budget_via_server_matches_in_process(sqlite_server: EmbeddedServer) -> None:
    from simulations.server_backend import ServerBackend

    job = budget_job()
    local = simulate(job, "powerbandit", 5, recurrences=12, max_slowdown=1.1)
    with OptimizerClient(sqlite_server.address) as client:
        remote = simulate(
            job,
            "powerbandit",
            5,
            recurrences=12,
            max_slowdown=1.1,
            backend_factory=lambda spec: ServerBackend(client, spec, lambda _spec, _gpu, b: job.power[b]),
        )
        (stored,) = client.list_jobs(f"{job.name}/powerbandit/5")
    assert stored.spec.max_slowdown == pytest.approx(1.1) and stored.spec.eta == 1.0
    key = [(a.recurrence, a.attempt, a.batch_size, a.power_limit, a.epochs, a.reached) for a in local.attempts]
    assert [(a.recurrence, a.attempt, a.batch_size, a.power_limit, a.epochs, a.reached) for a in remote.attempts] == key


def test_a_default_that_never_reaches_lifts_the_budget() -> None:
    s = spec(1.1)
    policy = PowerBanditPolicy()
    state = policy.new_state(s)
    w, t = POWER[8][200.0]
    for _ in range(2):  # the default fails twice: it has no expected time to compare with
        state = policy.observe(s, state, Observation(8, "v100", 200.0, 40, w * t * 40, t * 40, w * t * 40, False, 200.0, w * t))
    for b in (16, 32):
        w, t = POWER[b][200.0]
        state = policy.observe(s, state, Observation(b, "v100", 200.0, 10, w * t * 10, t * 10, w * t * 10, True, 200.0, w * t))
    d = policy.suggest(s, state, context(), decision_rng(1, 9))
    assert d.batch_size in (16, 32) and "slowdown budget" not in d.explanation
