"""The simulator's run accounting (``shared/traces/README.md``), pinned on tiny hand-made traces."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from optimizer_server.policy.base import Decision, JobSpec, Observation, ProfilePoint, SuggestContext
from simulations import cli
from simulations.engine import execute_run, measured_points, simulate
from simulations.progress import Progress
from simulations.traces import TraceJob, TraceSet
from tests.helpers import write_tiny_trace

ETA = 0.5


def tiny_job(**overrides: object) -> TraceJob:
    """Two batch sizes x two power limits; b=8 needs 10 or 12 epochs, b=16 needs 6 or never."""
    power = {
        8: {100.0: ProfilePoint(100.0, 100.0, 20.0), 200.0: ProfilePoint(200.0, 180.0, 10.0)},
        16: {100.0: ProfilePoint(100.0, 90.0, 16.0), 200.0: ProfilePoint(200.0, 190.0, 8.0)},
    }
    values: dict[str, object] = dict(
        gpu="v100",
        workload="cifar100",
        target_metric=0.6,
        max_epochs=20,
        default_batch_size=8,
        batch_sizes=(8, 16),
        power_limits=(100.0, 200.0),
        target_epochs={8: (10, 12), 16: (6, None)},
        power=power,
        eta=ETA,
        beta=2.0,
        recurrences=8,
    )
    values.update(overrides)
    return TraceJob(**values)  # type: ignore[arg-type]


def epoch_cost(avg_power: float, tpe: float, max_power: float = 200.0) -> float:
    return ETA * avg_power * tpe + (1 - ETA) * max_power * tpe


def test_epoch_cost_and_best_power_limit() -> None:
    job = tiny_job()
    assert job.epoch_cost(8, 100.0) == pytest.approx(epoch_cost(100.0, 20.0))  # 3000
    assert job.epoch_cost(8, 200.0) == pytest.approx(epoch_cost(180.0, 10.0))  # 1900
    assert job.best_power_limit(8) == 200.0
    assert job.max_power == 200.0


def test_seed_draw_is_uniform_from_the_simulation_generator() -> None:
    job = tiny_job()
    rng = np.random.default_rng(5)
    expected = [job.target_epochs[8][int(i)] for i in np.random.default_rng(5).integers(2, size=1)]
    out = execute_run(job, 8, 200.0, rng, math.inf)
    assert out.epochs == expected[0]
    draws = {execute_run(job, 8, 200.0, rng, math.inf).epochs for _ in range(50)}
    assert draws == {10, 12}


def test_reached_run_costs_its_epochs() -> None:
    job = tiny_job(target_epochs={8: (10,), 16: (6,)})
    out = execute_run(job, 8, 200.0, np.random.default_rng(0), math.inf)
    assert out.reached and out.epochs == 10 and not out.profiled
    assert out.energy_j == pytest.approx(10 * 180.0 * 10.0)
    assert out.time_s == pytest.approx(100.0)
    assert out.cost == pytest.approx(10 * epoch_cost(180.0, 10.0))


def test_early_stop_bound_floors_and_counts_the_spent_cost() -> None:
    job = tiny_job(target_epochs={8: (10,), 16: (6,)})
    ec = epoch_cost(180.0, 10.0)  # 1900 at (8, 200 W)
    min_cost = 4.9 * ec  # bound = floor(2 * 4.9) = 9 epochs < 10 needed
    out = execute_run(job, 8, 200.0, np.random.default_rng(0), min_cost)
    assert not out.reached and out.epochs == 9
    assert out.cost == pytest.approx(9 * ec)
    out = execute_run(job, 8, 200.0, np.random.default_rng(0), 5.0 * ec)  # bound 10: reaches
    assert out.reached and out.epochs == 10


def test_max_epochs_caps_and_never_reaching_seed_fails() -> None:
    job = tiny_job(target_epochs={8: (30,), 16: (None,)}, max_epochs=20)
    out = execute_run(job, 8, 200.0, np.random.default_rng(0), math.inf)
    assert not out.reached and out.epochs == 20
    out = execute_run(job, 16, 200.0, np.random.default_rng(0), math.inf)
    assert not out.reached and out.epochs == 20


def test_zero_epoch_bound_never_starts() -> None:
    job = tiny_job()
    ec = job.epoch_cost(8, 200.0)
    out = execute_run(job, 8, 200.0, np.random.default_rng(0), 0.4 * ec)
    assert out.epochs == 0 and out.cost == 0.0 and out.energy_j == 0.0 and not out.reached


def test_policy_bound_stops_earlier_never_later() -> None:
    job = tiny_job(target_epochs={8: (10,), 16: (6,)})
    ec = job.epoch_cost(8, 200.0)
    out = execute_run(job, 8, 200.0, np.random.default_rng(0), math.inf, policy_bound=7.5 * ec)
    assert not out.reached and out.epochs == 7
    out = execute_run(job, 8, 200.0, np.random.default_rng(0), 4.0 * ec, policy_bound=100 * ec)
    assert not out.reached and out.epochs == 8  # the user's cap wins


def test_profiling_first_epoch_costs_the_mean_over_power_limits() -> None:
    job = tiny_job(target_epochs={8: (10,), 16: (6,)})
    out = execute_run(job, 8, None, np.random.default_rng(0), math.inf)
    assert out.profiled and out.power_limit == 200.0
    first_energy = (100.0 * 20.0 + 180.0 * 10.0) / 2
    first_time = (20.0 + 10.0) / 2
    assert out.energy_j == pytest.approx(first_energy + 9 * 180.0 * 10.0)
    assert out.time_s == pytest.approx(first_time + 9 * 10.0)
    assert out.cost == pytest.approx(ETA * out.energy_j + (1 - ETA) * 200.0 * out.time_s)


def test_a_run_profiles_only_the_limits_its_decision_lists() -> None:
    # 16's best limit is 200 W; told to profile 100 W only, it measures and settles on 100 W
    job = tiny_job(target_epochs={8: (10,), 16: (6,)})
    out = execute_run(job, 16, None, np.random.default_rng(0), math.inf, profile_limits=(100.0,))
    assert out.profiled and out.power_limit == 100.0
    assert out.energy_j == pytest.approx(6 * 90.0 * 16.0) and out.time_s == pytest.approx(6 * 16.0)
    # every listed limit the trace knows, in equal slices; an unknown one is skipped, none known: all
    both = execute_run(job, 16, None, np.random.default_rng(0), math.inf, profile_limits=(100.0, 200.0, 300.0))
    everything = execute_run(job, 16, None, np.random.default_rng(0), math.inf)
    unknown = execute_run(job, 16, None, np.random.default_rng(0), math.inf, profile_limits=(300.0,))
    assert both == everything == unknown and everything.power_limit == 200.0


def test_a_narrowed_profile_is_stored_and_paid_for_as_listed() -> None:
    # recurrence 1 profiles 16 at 200 W only: its first epoch costs that limit's, and the profile
    # handed to the policy afterwards holds that one point
    job = tiny_job(target_epochs={8: (10,), 16: (6,)}, recurrences=3)

    class Narrowing(ScriptedBackend):
        def suggest(self, context: SuggestContext) -> Decision:
            d = super().suggest(context)
            if d.batch_size == 16 and d.power_limit_w is None:
                return Decision(16, None, (200.0,), "explore", "scripted, narrowed")
            return d

    backend = Narrowing([8, 16, 16])
    result = simulate(job, "scripted", 1, backend_factory=lambda spec: backend)
    trial = result.attempts[1]
    assert trial.batch_size == 16 and trial.profiled and trial.power_limit == 200.0
    assert (trial.energy_j, trial.time_s) == pytest.approx((6 * 190.0 * 8.0, 6 * 8.0))
    assert backend.contexts[2].profiles[16] == {200.0: job.power[16][200.0]}
    assert backend.contexts[2].profiles[8] == job.power[8]
    assert [ctx.profiles.get(16) for _, ctx, _, _ in backend.call_offs[1:]] == [{200.0: job.power[16][200.0]}]


def test_a_profile_that_stops_is_paid_for_and_stored_up_to_its_stop() -> None:
    # 16 at 150 W costs 1.2x its cheapest (200 W) and at 100 W 1.49x: walking down with a stop ratio
    # of 1.1, the profile measures 200 W and 150 W and stops there
    power = dict(tiny_job().power)
    power[16] = {**power[16], 150.0: ProfilePoint(150.0, 140.0, 11.0)}
    job = tiny_job(power=power, power_limits=(100.0, 150.0, 200.0), target_epochs={8: (10,), 16: (6,)}, recurrences=3)
    down = (200.0, 150.0, 100.0)
    assert list(measured_points(job.power[16], down, 1.1, ETA, 200.0)) == [200.0, 150.0]
    assert list(measured_points(job.power[16], down, 0.0, ETA, 200.0)) == [200.0, 150.0, 100.0]  # no stop
    assert list(measured_points(job.power[16], down, 1.25, ETA, 200.0)) == [200.0, 150.0, 100.0]  # 1.2x goes on
    assert list(measured_points(job.power[16], (), 1.1, ETA, 200.0)) == [200.0, 150.0]  # none listed: all, down

    class Stopping(ScriptedBackend):
        def suggest(self, context: SuggestContext) -> Decision:
            d = super().suggest(context)
            if d.batch_size == 16 and d.power_limit_w is None:
                return Decision(16, None, down, "explore", "scripted, stopping", profile_stop_ratio=1.1)
            return d

    backend = Stopping([8, 16, 16])
    result = simulate(job, "scripted", 1, backend_factory=lambda spec: backend)
    trial = result.attempts[1]
    assert trial.batch_size == 16 and trial.profiled and trial.power_limit == 200.0
    first_energy, first_time = (190.0 * 8.0 + 140.0 * 11.0) / 2, (8.0 + 11.0) / 2  # equal slices of the two
    assert trial.energy_j == pytest.approx(5 * 190.0 * 8.0 + first_energy)
    assert trial.time_s == pytest.approx(5 * 8.0 + first_time)
    assert backend.contexts[2].profiles[16] == {p: job.power[16][p] for p in (200.0, 150.0)}


def test_oracle_default_and_expected_costs() -> None:
    job = tiny_job()
    # b=16 has a seed that never reaches: only b=8 qualifies; 200 W is cheaper.
    assert job.oracle() == (8, 200.0)
    assert job.expected_cost(8, 200.0) == pytest.approx(11 * epoch_cost(180.0, 10.0))
    assert job.expected_cost(8, 200.0) == pytest.approx(job.expected_cost(*job.oracle()))


class ScriptedBackend:
    """Suggests a fixed sequence of batch sizes (profiling), records what it is told."""

    def __init__(self, script: list[int], call_off: frozenset[int] = frozenset()) -> None:
        self.script = list(script)
        self.contexts: list[SuggestContext] = []
        self.observations: list[Observation] = []
        self.call_off_batch_sizes = call_off
        self.call_offs: list[tuple[int, SuggestContext, float, float]] = []

    def suggest(self, context: SuggestContext) -> Decision:
        self.contexts.append(context)
        b = self.script.pop(0)
        p = 200.0 if b in context.profiles else None
        return Decision(b, p, () if p else context.power_limits_w, "explore", "scripted")

    def observe(self, observation: Observation) -> None:
        self.observations.append(observation)

    def cost_bound(self, batch_size: int | None = None) -> float:
        return math.inf

    def call_off(self, batch_size: int, context: SuggestContext, energy_j: float, time_s: float) -> str | None:
        self.call_offs.append((batch_size, context, energy_j, time_s))
        return "scripted call-off" if batch_size in self.call_off_batch_sizes else None

    def close(self) -> None:
        pass


def test_retries_within_a_recurrence_and_min_cost_update() -> None:
    # b=16 never reaches; b=8 needs 10 epochs. Recurrence 0: 8 (profiled). Recurrence 1: 16 fails
    # (profiled, stopped at 2 * min_cost), then 8 succeeds: both attempts count.
    job = tiny_job(target_epochs={8: (10,), 16: (None,)}, recurrences=2, max_epochs=100)
    backend = ScriptedBackend([8, 16, 8])
    result = simulate(job, "scripted", 1, backend_factory=lambda spec: backend)
    a = result.attempts
    assert [(x.recurrence, x.attempt, x.batch_size, x.reached, x.profiled) for x in a] == [
        (0, 0, 8, True, True),
        (1, 0, 16, False, True),
        (1, 1, 8, True, False),
    ]
    min_cost = a[0].cost
    assert a[1].epochs == int((2.0 * min_cost) // job.epoch_cost(16, 200.0)) == 25
    assert result.recurrence_costs == pytest.approx([a[0].cost, a[1].cost + a[2].cost])
    # Profiles reach the policy only after the profiling run.
    assert 8 not in backend.contexts[0].profiles and 8 in backend.contexts[1].profiles
    assert backend.observations[1].epochs == a[1].epochs and not backend.observations[1].reached_target
    s = result.summary()
    assert s["attempts"] == 3 and s["failed_attempts"] == 1 and s["recurrences"] == 2
    oracle = 2 * job.expected_cost(8, 200.0)
    assert s["oracle_cost"] == pytest.approx(oracle)
    assert s["regret_pct"] == pytest.approx(100 * (s["cost"] / oracle - 1))
    default_energy = 2 * 10 * 180.0 * 10.0  # b0 = 8 at max power 200 W
    assert s["energy_saving_pct"] == pytest.approx(100 * (1 - s["energy_j"] / default_energy))


def test_a_run_called_off_after_profiling_costs_its_profiling_epoch() -> None:
    # Recurrence 0: 8 profiles and reaches the target. Recurrence 1: 16 profiles and is called off
    # after its first epoch (the policy is asked with 16's profile stored), then 8 runs again.
    job = tiny_job(target_epochs={8: (10,), 16: (6,)}, recurrences=2)
    backend = ScriptedBackend([8, 16, 8], call_off=frozenset({16}))
    result = simulate(job, "scripted", 1, backend_factory=lambda spec: backend)
    a = result.attempts
    assert [(x.recurrence, x.attempt, x.batch_size, x.epochs, x.reached) for x in a] == [
        (0, 0, 8, 10, True),
        (1, 0, 16, 1, False),
        (1, 1, 8, 10, True),
    ]
    # asked once per profiling run that trains past its first epoch, with its own profile known
    assert [(b, 16 in ctx.profiles) for b, ctx, _, _ in backend.call_offs] == [(8, False), (16, True)]
    energy = (90.0 * 16.0 + 190.0 * 8.0) / 2  # the first epoch: the mean over both power limits
    time = (16.0 + 8.0) / 2
    assert backend.call_offs[1][2:] == pytest.approx((energy, time))
    assert (a[1].energy_j, a[1].time_s) == pytest.approx((energy, time))
    assert a[1].cost == pytest.approx(ETA * energy + (1 - ETA) * 200.0 * time)
    called_off = backend.observations[1]
    assert called_off.called_off and not called_off.reached_target and called_off.epochs == 1
    assert not backend.observations[0].called_off and not backend.observations[2].called_off
    assert result.recurrence_costs[1] == pytest.approx(a[1].cost + a[2].cost)


@pytest.mark.parametrize("policy", ["default", "oracle", "grid", "zeus", "powerbandit"])
def test_every_policy_runs_and_is_deterministic(policy: str) -> None:
    job = tiny_job()
    first = simulate(job, policy, 3)
    second = simulate(job, policy, 3)
    assert first.attempts == second.attempts
    assert len(first.recurrence_costs) == job.recurrences
    assert all(a.batch_size in job.batch_sizes for a in first.attempts)


def test_oracle_policy_has_near_zero_regret_and_default_no_saving() -> None:
    job = tiny_job(target_epochs={8: (10,), 16: (6,)}, recurrences=20)
    assert job.oracle() == (16, 200.0)
    assert simulate(job, "oracle", 1).summary()["regret_pct"] == pytest.approx(0.0)
    assert simulate(job, "default", 1).summary()["energy_saving_pct"] == pytest.approx(0.0)


def test_decisions_follow_decision_rng_across_backends() -> None:
    """The in-process backend makes the i-th suggestion with decision_rng(seed, i)."""
    from optimizer_server.policy.base import decision_rng
    from optimizer_server.policy.registry import get_policy
    from simulations.backend import InProcessBackend

    spec = JobSpec("j", (8, 16), 8, 0.6, 20, seed=9)
    backend = InProcessBackend(spec)
    policy = get_policy("powerbandit")
    ctx = SuggestContext("v100", 200.0, (100.0, 200.0))
    state = policy.new_state(spec)
    for i in range(3):
        assert backend.suggest(ctx) == policy.suggest(spec, state, ctx, decision_rng(9, i))




def test_trace_loader(tmp_path: Path) -> None:
    traces = TraceSet(write_tiny_trace(tmp_path / "t"))
    job = traces.job("v100", "cifar100")
    assert job.batch_sizes == (8, 16, 32)
    assert job.target_epochs[16] == (6, None) and job.target_epochs[32] == (7, None)
    assert job.default_batch_size == 32  # 1024 clipped to the largest in the power file
    assert job.recurrences == 2 * 3 * 2
    assert traces.job("v100", "cifar100", target_metric=0.5).target_epochs[8] == (8,)
    with pytest.raises(ValueError, match="no target"):
        traces.job("v100", "cifar100", target_metric=0.99)


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write_tiny_trace(tmp_path / "t")
    out = tmp_path / "out"
    argv = [
        "--trace-dir",
        str(trace),
        "--gpu",
        "v100",
        "--workload",
        "cifar100",
        "--seeds",
        "1-2",
        "--policy",
        "default",
        "oracle",
        "grid",
        "zeus",
        "powerbandit",
        "--out",
        str(out),
        "--jobs",
        "2",
    ]
    assert cli.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary) == 5 * 2
    for key in (
        "recurrences",
        "attempts",
        "failed_attempts",
        "energy_j",
        "time_s",
        "cost",
        "default_cost",
        "oracle_cost",
        "regret_pct",
        "energy_saving_pct",
        "gpu",
        "workload",
        "target_metric",
        "eta",
        "beta",
        "policy",
        "seed",
    ):
        assert key in summary[0]
    header = (out / "runs.csv").read_text().splitlines()[0]
    assert header.startswith("job,gpu,policy,seed,recurrence,attempt,batch_size,power_limit,epochs")
    assert (out / "regret.png").stat().st_size > 0 and (out / "configs.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "overall mean" in printed and "powerbandit" in printed
    assert cli.main(["--trace-dir", str(tmp_path / "missing")]) == 2


def test_cli_target_override_and_seeds() -> None:
    assert cli.parse_seeds("1-3,7") == [1, 2, 3, 7]
    assert cli.parse_targets(["cifar100=0.5", "squad=83.0"]) == {"cifar100": 0.5, "squad": 83.0}


def test_progress_bar_draws_only_when_slow() -> None:
    quiet = io.StringIO()
    with Progress(10, "x", stream=quiet, delay_s=10.0) as bar:
        bar.advance(10)
    assert quiet.getvalue() == ""
    loud = io.StringIO()
    with Progress(4, "sim", stream=loud, delay_s=0.0) as bar:
        for _ in range(4):
            bar.advance()
    assert "4/4" in loud.getvalue() and loud.getvalue().endswith("\n")


def test_a_stuck_policy_is_recorded_not_raised() -> None:
    # b=16 never reaches: a policy that insists on it is stuck in recurrence 1; the simulation stops
    # there, keeps the cost of every failed attempt, and says so in its summary.
    from simulations.engine import MAX_ATTEMPTS_PER_RECURRENCE

    job = tiny_job(target_epochs={8: (10,), 16: (None,)}, recurrences=5, max_epochs=100)
    backend = ScriptedBackend([8] + [16] * MAX_ATTEMPTS_PER_RECURRENCE)
    result = simulate(job, "scripted", 1, backend_factory=lambda spec: backend)
    s = result.summary()
    assert "recurrence 1" in s["stuck"] and s["recurrences"] == 2
    assert s["attempts"] == 1 + MAX_ATTEMPTS_PER_RECURRENCE
    assert s["failed_attempts"] == MAX_ATTEMPTS_PER_RECURRENCE
    assert s["cost"] == pytest.approx(sum(a.cost for a in result.attempts))
