"""The domain model (powerbandit.domain): spec, enums, cost, candidate power limits, savings."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from powerbandit.domain import (
    DEFAULT_BETA,
    DEFAULT_ETA,
    DEFAULT_POLICY,
    JobSpec,
    MetricDirection,
    Phase,
    PowerLimitControl,
    ProfilePoint,
    ProfileRecord,
    RunGroup,
    RunState,
    StopReason,
    candidate_power_limits,
    cost_rate,
    energy_time_cost,
    epoch_cost,
    power_time_cost,
    savings,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ spec
def test_spec_json_is_what_the_store_has_always_kept() -> None:
    spec = JobSpec("team/a", (64, 128), 128, 0.9, 30, eta=0.25, beta=3.0, higher_is_better=False,
                   policy="zeus", window=5, seed=7, max_slowdown=1.1)  # fmt: skip
    assert json.dumps(spec.to_dict()) == (
        '{"job_id": "team/a", "batch_sizes": [64, 128], "default_batch_size": 128, "target_metric": 0.9, '
        '"max_epochs": 30, "eta": 0.25, "beta": 3.0, "higher_is_better": false, "policy": "zeus", '
        '"window": 5, "seed": 7, "max_slowdown": 1.1}'
    )
    assert JobSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_spec_defaults() -> None:
    spec = JobSpec("j", (32,), 32, 0.5, 10)
    assert (spec.eta, spec.beta, spec.policy, spec.max_slowdown) == (DEFAULT_ETA, DEFAULT_BETA, DEFAULT_POLICY, 0.0)
    assert (DEFAULT_ETA, DEFAULT_BETA, DEFAULT_POLICY) == (0.5, 2.0, "powerbandit")
    assert spec.higher_is_better and spec.metric_direction is MetricDirection.HIGHER_IS_BETTER
    with pytest.raises(AttributeError):
        spec.eta = 1.0  # type: ignore[misc]


def test_spec_from_dict_takes_batch_sizes_as_ints_in_a_tuple() -> None:
    data = JobSpec("j", (32, 64), 32, 0.5, 10).to_dict()
    data["batch_sizes"] = ["32", 64.0]
    assert JobSpec.from_dict(data).batch_sizes == (32, 64)


@pytest.mark.parametrize(
    ("higher", "metric", "reached"),
    [(True, 0.8, True), (True, 0.79, False), (False, 0.8, True), (False, 0.81, False), (False, 0.1, True)],
)
def test_reached_follows_the_metric_direction(higher: bool, metric: float, reached: bool) -> None:
    spec = JobSpec("j", (32,), 32, 0.8, 10, higher_is_better=higher)
    assert spec.reached(metric) is reached
    assert spec.metric_direction is MetricDirection.of(higher)


# ------------------------------------------------------------------------------------------ enums
def test_enum_values_are_the_stored_strings() -> None:
    assert [s.value for s in RunState] == ["in_flight", "completed", "failed", "expired"]
    assert [p.value for p in Phase] == ["", "explore", "exploit", "fallback"]
    assert [r.value for r in StopReason] == ["", "target_reached", "cost_bound", "max_epochs", "exploration_called_off"]
    assert [c.value for c in PowerLimitControl] == ["", "nvml", "agent", "none", "simulated"]
    assert [d.value for d in MetricDirection] == ["higher_is_better", "lower_is_better"]
    assert RunState.COMPLETED == "completed" and RunState("expired") is RunState.EXPIRED
    assert {"completed": 1}[RunState.COMPLETED] == 1 and {RunState.FAILED: 2}["failed"] == 2
    assert f"{Phase.EXPLORE}" == "explore" and str(StopReason.COST_BOUND) == "cost_bound"
    assert [s for s in RunState if s.finished] == [RunState.COMPLETED, RunState.FAILED, RunState.EXPIRED]


# ------------------------------------------------------------------------------------------ cost
def _values(n: int = 2000) -> list[tuple[float, float, float, float]]:
    rng = random.Random(18)
    return [
        (rng.choice([0.0, 0.2, 0.5, 0.8, 1.0, rng.random()]), rng.uniform(10, 3000), rng.uniform(0.01, 5e4),
         rng.uniform(100, 3200))
        for _ in range(n)
    ]  # fmt: skip


def test_cost_groupings_are_bit_identical_to_the_formulas_they_replace() -> None:
    for eta, power, seconds, max_power in _values():
        energy = power * seconds
        assert energy_time_cost(eta, energy, seconds, max_power) == eta * energy + (1.0 - eta) * max_power * seconds
        assert power_time_cost(eta, power, seconds, max_power) == (
            eta * power * seconds + (1 - eta) * max_power * seconds
        )
        assert cost_rate(eta, power, max_power) * seconds == (eta * power + (1.0 - eta) * max_power) * seconds
        point = ProfilePoint(250.0, power, seconds)
        assert epoch_cost(eta, point, max_power) == energy_time_cost(eta, power * seconds, seconds, max_power)


def test_cost_weighs_energy_against_time() -> None:
    assert energy_time_cost(1.0, 500.0, 10.0, 300.0) == 500.0
    assert energy_time_cost(0.0, 500.0, 10.0, 300.0) == 3000.0
    assert energy_time_cost(0.5, 500.0, 10.0, 300.0) == 1750.0
    assert power_time_cost(0.5, 50.0, 10.0, 300.0) == 1750.0


# ------------------------------------------------------------------------------------------ power limits
def _ladder_by_subtraction(lo: float, hi: float, step: float) -> tuple[float, ...]:
    """The server's ladder before the domain had one (optimizer_server.service.RunGpu)."""
    limits = {lo, hi}
    limit = hi - step
    while limit > lo:
        limits.add(limit)
        limit -= step
    return tuple(sorted(limits))


def _ladder_by_multiples(lo: float, hi: float, step: float, tol: float) -> tuple[float, ...]:
    """The NVML GPU's ladder before the domain had one (client_sdk.nvml)."""
    values = []
    w = hi
    while w > lo + tol:
        values.append(w)
        w = hi - len(values) * step
    values.append(lo)
    return tuple(sorted(set(values)))


@pytest.mark.parametrize(
    ("lo", "hi"), [(100.0, 250.0), (100.0, 300.0), (125.0, 250.0), (150.0, 150.0), (99.7, 250.3), (60.0, 700.0)]
)
def test_candidate_power_limits_are_both_old_ladders(lo: float, hi: float) -> None:
    assert candidate_power_limits(lo, hi) == _ladder_by_subtraction(lo, hi, 25.0)
    for step in (25.0, 10.0, 7.5, 33.3):
        assert candidate_power_limits(lo, hi, step, 5e-4) == _ladder_by_multiples(lo, hi, step, 5e-4)
    assert candidate_power_limits(100.0, 250.0) == (100.0, 125.0, 150.0, 175.0, 200.0, 225.0, 250.0)


def test_candidate_power_limits_need_a_positive_step() -> None:
    with pytest.raises(ValueError, match="step_w"):
        candidate_power_limits(100.0, 250.0, 0.0)


# ------------------------------------------------------------------------------------------ savings
def _group(model: str, b: int, limit: float, state: str, reached: bool, runs: int, energy: float,
           *, epochs: float = 10.0, in_window: bool = True, max_limit: float = 300.0) -> RunGroup:  # fmt: skip
    return RunGroup(model, b, limit, state, reached, in_window, runs, energy, 100.0 * runs, epochs * runs,
                    max_limit, 1.0)  # fmt: skip


def test_measured_baseline_and_saving() -> None:
    groups = [
        _group("a100", 128, 300.0, RunState.COMPLETED, True, 2, 2000.0),  # default config: 1000 J a run
        _group("a100", 256, 200.0, RunState.COMPLETED, True, 3, 1800.0),
        _group("a100", 256, 200.0, RunState.FAILED, False, 1, 50.0),
    ]
    baseline, reason = savings.default_baseline(128, groups, [], "a100")
    assert reason == "" and baseline is not None
    assert (baseline.energy_j, baseline.time_s, baseline.source) == (1000.0, 100.0, "measured")
    [row] = savings.savings_by_gpu(128, groups, groups, [])
    assert (row.usage.runs, row.usage.successes, row.usage.energy_j) == (6, 5, 3850.0)
    assert row.saved_energy_j == 5 * 1000.0 - 3850.0
    assert savings.saved_energy_by_gpu([[row], [row]]) == {"a100": 2 * (5000.0 - 3850.0)}


def test_profile_baseline_when_the_default_never_ran_at_the_maximum() -> None:
    groups = [_group("v100", 128, 200.0, RunState.COMPLETED, True, 2, 1500.0, epochs=8.0)]
    profiles = [ProfileRecord("v100", 128, {300.0: ProfilePoint(300.0, 250.0, 20.0), 200.0: ProfilePoint(200.0, 180.0, 25.0)})]
    baseline, _ = savings.default_baseline(128, groups, profiles, "v100")
    assert baseline is not None and baseline.source == "profile"
    assert baseline.energy_j == 250.0 * 20.0 * 8.0 and baseline.time_s == 20.0 * 8.0


def test_no_baseline_says_why() -> None:
    groups = [_group("p100", 64, 250.0, RunState.COMPLETED, True, 1, 500.0)]
    assert savings.default_baseline(128, groups, [], "p100") == (
        None, "default batch size 128 has not reached the target yet (0 finished run(s) at it)"
    )  # fmt: skip
    assert savings.default_baseline(128, groups, [], "a40") == (None, "no runs on a40")
    [row] = savings.savings_by_gpu(128, groups, groups, [])
    assert row.saved_energy_j is None and row.baseline is None
    assert savings.saved_energy_by_gpu([[row]]) == {"p100": None}


def test_usage_counts_only_the_window() -> None:
    groups = [
        _group("a100", 128, 300.0, RunState.COMPLETED, True, 2, 2000.0, in_window=False),
        _group("a100", 128, 300.0, RunState.COMPLETED, True, 1, 900.0),
    ]
    [row] = savings.savings_by_gpu(128, groups, groups, [])
    assert (row.usage.runs, row.usage.energy_j) == (1, 900.0)
    assert row.baseline is not None and row.baseline.energy_j == 2900.0 / 3


def test_store_records_with_string_states_work_too() -> None:
    groups = [_group("a100", 128, 300.0, "completed", True, 1, 1000.0)]
    assert savings.is_success(groups[0]) and savings.is_finished(groups[0])
    assert not savings.is_finished(_group("a100", 128, 300.0, "in_flight", False, 1, 0.0))


# ------------------------------------------------------------------------------------------ layering
def test_the_domain_imports_the_standard_library_only() -> None:
    code = (
        "import sys\n"
        "import powerbandit.domain, powerbandit.domain.savings\n"
        "print(sorted(m.split('.')[0] for m in sys.modules if m.split('.')[0] in "
        "{'numpy', 'grpc', 'google', 'optimizer_server', 'client_sdk', 'simulations'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
