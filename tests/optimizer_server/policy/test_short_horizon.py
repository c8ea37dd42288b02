"""The first recurrences: epoch-cost slopes from the default's power draw, and the cluster prior."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

from optimizer_server.policy.base import (
    ClusterPrior,
    JobSpec,
    Observation,
    ProfilePoint,
    SuggestContext,
    cluster_prior,
    decision_rng,
)
from optimizer_server.policy.powerbandit import Hyperparameters, PowerBanditPolicy
from optimizer_server.policy.powerbandit.model import utilisation_slopes
from simulations.engine import simulate
from simulations.scenarios import leave_one_out_prior, simulate_leave_one_out
from simulations.traces import TraceSet
from tests.helpers import TRACE_DIR, budget_job

SPEC = JobSpec("j", (256, 512, 1024, 2048, 4096), 1024, 0.5, 100)
MAX_W = 300.0


def context(draw_w: float, prior: ClusterPrior | None = None) -> SuggestContext:
    """Only the default (1024) is profiled; at the highest limit the GPU draws ``draw_w``."""
    profile = {150.0: ProfilePoint(150.0, min(draw_w, 150.0), 12.0), 300.0: ProfilePoint(300.0, draw_w, 10.0)}
    return SuggestContext("a40", MAX_W, (150.0, 300.0), {1024: profile}, prior=prior)


def after_default(epochs: float = 5.0) -> dict[str, object]:
    policy = PowerBanditPolicy()
    ec = 0.5 * 60.0 * 10.0 + 0.5 * MAX_W * 10.0
    obs = Observation(1024, "a40", 300.0, epochs, 1.0, 1.0, epochs * ec, True, MAX_W, epoch_cost=ec)
    return policy.observe(SPEC, policy.new_state(SPEC), obs)


def test_utilisation_sets_the_slope_of_one_profile() -> None:
    starved = utilisation_slopes(context(45.0), Hyperparameters())[10.0]
    busy = utilisation_slopes(context(280.0), Hyperparameters())[10.0]
    assert starved == pytest.approx(-math.log(2.0) * (1 - 0.15 / 0.5))
    assert busy == 0.0


def test_a_starved_gpu_explores_larger_batches_first() -> None:
    state = after_default()
    policy = PowerBanditPolicy()
    first = {policy.suggest(SPEC, state, context(45.0), decision_rng(s, 1)).batch_size for s in range(30)}
    # ... and further than the neighbour: 2048 is expected to cost less than the default and 4096
    # less than 2048, so the trial worth most is 4096, two doublings up
    assert first == {4096}
    jump = policy.suggest(SPEC, state, context(45.0), decision_rng(0, 1))
    assert jump.phase == "explore" and "each larger batch size up to it is expected to cost less" in jump.explanation
    # a busy GPU: an epoch costs about the same at any batch size, and a larger batch is not expected
    # to need fewer epochs, so the smaller neighbour is tried first (and nothing further). Now and
    # then a draw of the noise makes the larger one worth more: 512 can at most halve the epochs
    # (it needs no fewer steps), and with a wide noise that floor caps its hoped-for saving
    busy = [policy.suggest(SPEC, state, context(280.0), decision_rng(s, 1)).batch_size for s in range(100)]
    assert busy.count(512) >= 90 and set(busy) <= {512, 2048}
    unfloored = PowerBanditPolicy(Hyperparameters(steps_floor=False))
    assert {unfloored.suggest(SPEC, state, context(280.0), decision_rng(s, 1)).batch_size for s in range(100)} == {512}


def test_cluster_prior_slopes_per_direction() -> None:
    # job A: epochs x2 per doubling above its default, /2 per halving below; job B: flat; job C: no default
    a = (64, {16: 2.5, 32: 5.0, 64: 10.0, 128: 20.0, 256: 40.0, 1024: 1000.0})
    b = (8, {4: 3.0, 8: 3.0, 16: 3.0})
    c = (8, {16: 3.0})
    prior = cluster_prior([a, b, c])
    assert prior is not None and prior.jobs == 2
    assert prior.epochs_slope_up == pytest.approx(math.log(2.0) / 2)  # 1024 is 4 doublings away: left out
    assert prior.epochs_slope_down == pytest.approx(math.log(2.0) / 2)
    assert cluster_prior([c]) is None and cluster_prior([]) is None


def test_prior_slope_moves_the_first_exploration() -> None:
    state = after_default(epochs=50.0)
    policy = PowerBanditPolicy()
    steep = ClusterPrior(epochs_slope_down=1.0, epochs_slope_up=1.0, jobs=3)  # smaller batches: fewer epochs
    first = {policy.suggest(SPEC, state, context(280.0, steep), decision_rng(s, 1)).batch_size for s in range(30)}
    assert first == {512}


def test_leave_one_out_never_uses_the_jobs_own_workload() -> None:
    job = budget_job(eta=0.5)
    other = budget_job(eta=0.5, workload="squad", default_batch_size=16)
    twin = budget_job(eta=0.5, gpu="a40", target_epochs={8: (1, 1), 16: (50, 50), 32: (90, 90)})
    prior = leave_one_out_prior(job, [job, twin, other])
    # only `other` (squad): from its default 16, epochs are flat down to 8 and triple up to 32
    assert prior == ClusterPrior(epochs_slope_down=0.0, epochs_slope_up=pytest.approx(math.log(3.0)), jobs=1)
    assert leave_one_out_prior(job, [job, twin]) is None
    loo = simulate_leave_one_out(job, [job, other], "powerbandit", 2, recurrences=6)
    plain = simulate(job, "powerbandit", 2, recurrences=6)
    assert len(loo.recurrence_costs) == len(plain.recurrence_costs) == 6


@pytest.mark.traces
def test_cli_leave_one_out_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from simulations import cli

    argv = ["--trace-dir", str(TRACE_DIR), "--workload", "squad", "--gpu", "p100", "--seeds", "1", "--recurrences",
            "6", "--policy", "powerbandit", "--no-plots", "--out", str(tmp_path)]  # fmt: skip
    tasks = cli.build_tasks(cli_args(argv + ["--scenario", "leave-one-out"]), TraceSet(TRACE_DIR))
    (task,) = tasks
    assert task.prior is not None and task.prior.jobs == 5  # the five other workloads, never squad
    assert cli.build_tasks(cli_args(argv), TraceSet(TRACE_DIR))[0].prior is None
    assert cli.main([*argv, "--scenario", "leave-one-out", "--max-slowdown", "1.1"]) == 0
    assert "slowdown budget 1.1x" in capsys.readouterr().out


def cli_args(argv: list[str]) -> argparse.Namespace:
    from simulations import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_a_trial_stopped_at_its_bound_wastes_all_it_cost() -> None:
    from optimizer_server.policy.powerbandit.model import trial_value, worth_exploring

    best, dear, uncertain = 10.0, math.log(12.0), 0.25
    # without a stop, a trial that turns out dear costs only its excess over the best arm; stopped at
    # 17, one that would cost more wastes all 17 (the recurrence then runs again on the best arm)
    assert worth_exploring(dear, uncertain, best, 5.0)
    assert not worth_exploring(dear, uncertain, best, 5.0, stop=17.0)
    assert trial_value(dear, uncertain, best, 5.0, stop=17.0) < trial_value(dear, uncertain, best, 5.0)
    assert trial_value(dear, uncertain, best, 5.0, stop=math.inf) == trial_value(dear, uncertain, best, 5.0)
    # a trial that is all but sure to finish under its stop is worth what it was worth before
    cheap = trial_value(math.log(5.0), 0.01, best, 5.0)
    assert trial_value(math.log(5.0), 0.01, best, 5.0, stop=17.0) == pytest.approx(cheap)
    assert trial_value(dear, uncertain, math.inf, 5.0) == -math.inf  # nothing measured to beat


def test_a_floor_caps_what_a_trial_can_save() -> None:
    import numpy as np

    from optimizer_server.policy.powerbandit.model import trial_value

    best, log_mean, log_var, stop = 10.0, math.log(12.0), 0.25, 17.0
    free = trial_value(log_mean, log_var, best, 20.0, stop)
    assert trial_value(log_mean, log_var, best, 20.0, stop, -math.inf) == free  # no floor: bit for bit
    assert trial_value(log_mean, log_var, best, 20.0, stop, math.log(0.01)) == pytest.approx(free)
    # the higher the floor, the less a trial can save
    floored = [trial_value(log_mean, log_var, best, 20.0, stop, math.log(x)) for x in (5.0, 8.0, 9.5)]
    assert free > floored[0] > floored[1] > floored[2]
    # at the best arm's cost nothing is left to save: only the trial's expected excess counts
    at_best = trial_value(log_mean, log_var, best, 20.0, stop, math.log(best))
    assert at_best == pytest.approx(trial_value(log_mean, log_var, best, 0.0, stop)) and at_best < 0
    # above the stop, the trial is all loss
    assert trial_value(log_mean, log_var, best, 20.0, stop, math.log(20.0)) == pytest.approx(-stop)
    # against a Monte Carlo estimate of the same definition, with and without a stop, for a known
    # floor and for one only known up to a variance (averaged by quadrature)
    rng = np.random.default_rng(0)
    draws = np.exp(rng.normal(log_mean, math.sqrt(log_var), 400_000))
    for floor, floor_var in ((6.0, 0.0), (9.0, 0.0), (11.0, 0.0), (9.0, 0.04), (10.0, 0.1)):
        floors = np.exp(rng.normal(math.log(floor), math.sqrt(floor_var), draws.size))
        cost = np.maximum(draws, floors)
        gain = np.maximum(best - cost, 0.0).mean()
        for bound in (stop, math.inf):
            excess = np.where(cost >= bound, bound, np.where(cost > best, cost - best, 0.0)).mean()
            expected = 20.0 * gain - excess
            assert trial_value(log_mean, log_var, best, 20.0, bound, math.log(floor), floor_var) == pytest.approx(
                expected, abs=0.02 * (20.0 * gain + excess)
            )
    # an uncertain floor near the best leaves more hope than a certain one
    assert trial_value(log_mean, log_var, best, 20.0, stop, math.log(best), 0.04) > at_best


def test_the_floor_quadrature_is_gauss_hermite() -> None:
    import numpy as np

    from optimizer_server.policy.powerbandit.model import _FLOOR_NODES

    nodes, weights = np.polynomial.hermite.hermgauss(len(_FLOOR_NODES))
    assert [n for n, _ in _FLOOR_NODES] == pytest.approx(nodes.tolist(), abs=1e-12)
    assert [w for _, w in _FLOOR_NODES] == pytest.approx(weights.tolist(), abs=1e-12)


def test_a_smaller_batch_needs_no_fewer_steps() -> None:
    from optimizer_server.policy.powerbandit.model import ArmStats, epochs_floor, observed, posterior

    hp = Hyperparameters()
    untried = ArmStats(0, 0, 0, 0, math.nan, 0.0, -math.inf)

    def reached(epochs: float) -> ArmStats:
        return ArmStats(3, 0, 0, 3, math.log(epochs), 0.01, math.log(epochs))

    failed = ArmStats(0, 2, 0, 2, math.log(5.0), 0.0, math.log(5.0))
    data = {16: untried, 32: untried, 48: failed, 64: reached(20.0), 128: reached(30.0), 256: untried}
    seen = observed(data)
    mean_64, var_64 = posterior(seen, data[64], 64, 0.02, 0.1, hp)
    # from the nearest larger batch size that reached the target (48 only failed): b / 64 of its
    # epochs, as uncertain as 64's posterior mean
    assert epochs_floor(data, seen, 32, 0.02, 0.1, hp) == pytest.approx((mean_64 - math.log(2.0), var_64))
    assert epochs_floor(data, seen, 16, 0.02, 0.1, hp) == pytest.approx((mean_64 - math.log(4.0), var_64))
    assert 0.0 < var_64 < 0.02 / 3  # three runs, and neighbours
    assert epochs_floor(data, seen, 256, 0.02, 0.1, hp) == (-math.inf, 0.0)  # nothing larger reached it
    assert epochs_floor(data, seen, 32, 0.02, 0.1, Hyperparameters(steps_floor=False)) == (-math.inf, 0.0)


def test_one_tried_batch_size_expects_larger_batches_to_need_no_fewer_epochs() -> None:
    from optimizer_server.policy.powerbandit.model import ArmStats, posterior

    hp = Hyperparameters()
    untried = ArmStats(0, 0, 0, 0, math.nan, 0.0, -math.inf)
    one = [(1024, 10.0, 3, math.log(50.0))]
    slope = hp.first_step_epochs_slope_up
    up, _ = posterior(one, untried, 4096, 0.02, 0.1, hp, (0.0, 0.0), slope)
    down, _ = posterior(one, untried, 256, 0.02, 0.1, hp, (0.0, 0.0), slope)
    assert slope > 0 and up == pytest.approx(math.log(50.0) + 2 * slope) and down == pytest.approx(math.log(50.0))
    # added to a cluster prior's slope; with two tried batch sizes their own trend speaks instead
    with_prior, _ = posterior(one, untried, 2048, 0.02, 0.1, hp, (0.0, 0.3), slope)
    assert with_prior == pytest.approx(math.log(50.0) + 0.3 + slope)
    two = [*one, (2048, 11.0, 3, math.log(50.0))]
    assert posterior(two, untried, 4096, 0.02, 0.1, hp, (0.0, 0.0), slope)[0] == pytest.approx(math.log(50.0))


def test_exploration_jumps_only_upwards_and_only_while_each_step_is_expected_cheaper() -> None:
    from optimizer_server.policy.powerbandit.model import ArmStats

    sizes = (128, 256, 512, 1024, 2048, 4096, 8192)
    tried = ArmStats(3, 0, 0, 3, math.log(5.0), 0.0, math.log(5.0))
    untried = ArmStats(0, 0, 0, 0, math.nan, 0.0, -math.inf)
    data = {b: tried if b == 1024 else untried for b in sizes}
    # expected log cost per batch size (variance 0): falling up to 4096, rising after; 512 cheaper still
    expected = {512: -2.0, 2048: -0.5, 4096: -0.8, 8192: -0.7}

    def chain(fitting: set[int] | None = None) -> list[int]:
        moments = {1024: (0.0, 0.0), 512: (expected[512], 0.0), 2048: (expected[2048], 0.0)}
        out = []
        for b in PowerBanditPolicy._reach_up(data, [512, 1024, 2048], moments, 1.0, fitting):
            moments[b] = (expected[b], 0.0)  # the caller evaluates each hop before the next is judged
            out.append(b)
        return out

    # 2048 < the best mean, 4096 < 2048: 4096 and (judged on 4096's cost) 8192 become candidates;
    # nothing below 512 although it looks cheapest: downwards exploration walks
    assert chain() == [4096, 8192]
    assert chain(fitting={1024, 2048}) == []  # a slowdown budget's limits hold for jumps too
    expected[4096] = -0.4  # 4096 dearer than 2048: it is still a candidate, nothing beyond it
    assert chain() == [4096]
