"""Unit tests of the published Zeus policy (pruning exploration + Gaussian Thompson sampling)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from optimizer_server.policy.base import (
    JobSpec,
    Observation,
    ProfilePoint,
    SuggestContext,
    decision_rng,
)
from optimizer_server.policy.registry import get_policy
from optimizer_server.policy.zeus import ZeusPolicy

SPEC = JobSpec("j", (8, 16, 32, 64, 128), 32, 0.5, 100, policy="zeus")
CTX = SuggestContext("v100", 250.0, (100.0, 250.0))


def obs(b: int, cost: float, reached: bool = True, epochs: float = 10.0) -> Observation:
    return Observation(b, "v100", 250.0, epochs, cost, 1.0, cost, reached, 250.0)


def run_pruning(policy: ZeusPolicy, outcomes: dict[int, list[tuple[float, bool]]]) -> tuple[list[int], dict]:
    """Drive pruning; ``outcomes[b]`` is consumed in order. Returns the suggested sequence."""
    state = policy.new_state(SPEC)
    seq: list[int] = []
    i = 0
    while state["survivors"] is None:
        b = policy.suggest(SPEC, state, CTX, decision_rng(0, i)).batch_size
        seq.append(b)
        cost, reached = outcomes[b].pop(0)
        state = policy.observe(SPEC, state, obs(b, cost, reached))
        i += 1
    return seq, state


def test_registered_and_named() -> None:
    assert get_policy("zeus").name == "zeus"


def test_pruning_order_two_rounds() -> None:
    policy = ZeusPolicy()
    # Round 1 from 32: down 32, 16, 8 (8 fails), up 64 (ok), 128 (fails). Cheapest: 16.
    # Round 2 over {16, 32, 64} from 16: down 16 (then nothing below), up 32, 64.
    outcomes = {
        32: [(10.0, True), (10.0, True)],
        16: [(8.0, True), (9.0, True)],
        8: [(50.0, False)],
        64: [(12.0, True), (30.0, False)],
        128: [(40.0, False)],
    }
    seq, state = run_pruning(policy, outcomes)
    assert seq == [32, 16, 8, 64, 128, 16, 32, 64]
    assert state["survivors"] == [16, 32]


def test_thompson_restricted_to_survivors_and_deterministic() -> None:
    policy = ZeusPolicy()
    outcomes = {
        32: [(10.0, True), (11.0, True)],
        16: [(8.0, True), (9.0, True)],
        8: [(50.0, False)],
        64: [(12.0, True), (30.0, False)],
        128: [(40.0, False)],
    }
    _, state = run_pruning(policy, outcomes)
    picks = [policy.suggest(SPEC, state, CTX, decision_rng(7, i)).batch_size for i in range(200)]
    assert set(picks) <= {16, 32}
    assert picks.count(16) > picks.count(32)  # 16 is cheaper
    again = [policy.suggest(SPEC, state, CTX, decision_rng(7, i)).batch_size for i in range(200)]
    assert picks == again


def test_zero_variance_arm_is_a_point_mass() -> None:
    policy = ZeusPolicy()
    state = policy.new_state(SPEC)
    state["survivors"] = [16, 32]
    state["costs"] = {"16": [5.0, 5.0], "32": [6.0, 6.0]}
    for i in range(50):
        d = policy.suggest(SPEC, state, CTX, decision_rng(1, i))
        assert d.batch_size == 16 and d.phase == "exploit"


def test_state_json_round_trip_and_replay() -> None:
    policy = ZeusPolicy()
    state = policy.new_state(SPEC)
    history = [obs(32, 10.0), obs(16, 8.0), obs(8, 50.0, False), obs(64, 12.0), obs(128, 40.0, False)]
    for o in history:
        state = policy.observe(SPEC, state, o)
        state = json.loads(json.dumps(state))
    replay = policy.new_state(SPEC)
    for o in history:
        replay = policy.observe(SPEC, replay, o)
    assert json.dumps(replay, sort_keys=True) == json.dumps(state, sort_keys=True)


def test_cost_bound_tracks_recurrences() -> None:
    policy = ZeusPolicy()
    state = policy.new_state(SPEC)
    assert policy.cost_bound(SPEC, state) == math.inf
    state = policy.observe(SPEC, state, obs(32, 10.0))  # recurrence 1: 10
    state = policy.observe(SPEC, state, obs(16, 3.0, False))  # recurrence 2: 3 + 6 = 9
    state = policy.observe(SPEC, state, obs(16, 6.0))
    state = policy.observe(SPEC, state, obs(8, 12.0))  # recurrence 3: 12
    assert policy.cost_bound(SPEC, state) == pytest.approx(SPEC.beta * 9.0)


def test_never_started_run_counts_as_very_expensive() -> None:
    policy = ZeusPolicy()
    state = policy.new_state(SPEC)
    state = policy.observe(SPEC, state, obs(32, 10.0))
    state = policy.observe(SPEC, state, obs(16, 0.0, False, epochs=0))
    assert state["costs"]["16"] == [100.0 * SPEC.beta * 10.0]
    assert state["prune"]["direction"] == "up"  # 16 failed: pruning turned around


def test_power_limit_profiled_then_best() -> None:
    policy = ZeusPolicy()
    state = policy.new_state(SPEC)
    d = policy.suggest(SPEC, state, CTX, decision_rng(0, 0))
    assert d.batch_size == 32 and d.power_limit_w is None and d.profile_power_limits_w == (100.0, 250.0)
    profile = {100.0: ProfilePoint(100.0, 90.0, 20.0), 250.0: ProfilePoint(250.0, 240.0, 10.0)}
    ctx = SuggestContext("v100", 250.0, (100.0, 250.0), profiles={32: profile}, in_flight=(32, 32))
    d = policy.suggest(SPEC, state, ctx, decision_rng(0, 1))
    assert d.power_limit_w == 250.0 and d.profile_power_limits_w == ()


def test_out_of_order_observation_does_not_advance_pruning() -> None:
    policy = ZeusPolicy()
    state = policy.new_state(SPEC)
    state = policy.observe(SPEC, state, obs(64, 10.0))  # nobody expected 64 yet
    assert ZeusPolicy._expecting(state) == 32
    assert state["costs"]["64"] == [10.0]


def test_summarize_one_per_arm() -> None:
    policy = ZeusPolicy()
    outcomes = {
        32: [(10.0, True), (11.0, True)],
        16: [(8.0, True), (9.0, True)],
        8: [(50.0, False)],
        64: [(12.0, True), (30.0, False)],
        128: [(40.0, False)],
    }
    _, state = run_pruning(policy, outcomes)
    arms = policy.summarize(SPEC, state)
    assert [a.batch_size for a in arms] == list(SPEC.batch_sizes)
    by_b = {a.batch_size: a for a in arms}
    assert by_b[16].status == "active" and by_b[8].status == "pruned"
    assert by_b[16].cost_mean == pytest.approx(8.5)
    assert np.isfinite(by_b[16].cost_low) and by_b[16].cost_low <= 8.5 <= by_b[16].cost_high
