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
    assert first == {2048}
    # a busy GPU gives no such hint: both neighbours get explored first for some seeds
    busy = {policy.suggest(SPEC, state, context(280.0), decision_rng(s, 1)).batch_size for s in range(30)}
    assert busy == {512, 2048}


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
