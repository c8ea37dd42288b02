"""The ``powerbandit`` state (typed records, JSON form, upgrades at load) and the purity of both
policies: no method changes the state it is handed."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import FrozenInstanceError, replace
from typing import Any

import pytest

from optimizer_server.policy.base import JobSpec, Observation, ProfilePoint, SuggestContext, decision_rng
from optimizer_server.policy.powerbandit import Hyperparameters, PowerBanditPolicy, StateVersionError
from optimizer_server.policy.powerbandit.state import STATE_VERSION, ArmSums, ArmTails, decode, encode
from optimizer_server.policy.zeus import ZeusPolicy

SPEC = JobSpec("j", (8, 16, 32, 64, 128), 32, 0.5, 100)
LIMITS = (100.0, 250.0)


def profile(time_s: float) -> dict[float, ProfilePoint]:
    return {100.0: ProfilePoint(100.0, 95.0, 2 * time_s), 250.0: ProfilePoint(250.0, 200.0, time_s)}


def ctx(gpu: str = "v100") -> SuggestContext:
    profiles = {b: profile(t) for b, t in {32: 10.0, 16: 18.0, 64: 6.0}.items()}
    return SuggestContext(gpu, 250.0, LIMITS, profiles=profiles, in_flight=(128,))


def obs(b: int, epochs: float, reached: bool = True, gpu: str = "v100", ec: float | None = 100.0) -> Observation:
    cost = epochs * (ec or 100.0)
    return Observation(b, gpu, 250.0, epochs, cost, 1.0, cost, reached, 250.0, epoch_cost=ec)


# several arms, successes, failures, a run that never ran, two GPU models, a run without an epoch cost
HISTORY = [
    obs(32, 10),
    obs(16, 12),
    obs(64, 30, reached=False),
    obs(16, 11, gpu="a40"),
    obs(8, 0, reached=False),
    obs(32, 9, ec=None),
    obs(64, 8),
    obs(128, 5, reached=False),
    obs(16, 13),
]

SPECS = [
    SPEC,
    replace(SPEC, window=2),
    replace(SPEC, eta=1.0, max_slowdown=1.1),
    replace(SPEC, eta=1.0, max_slowdown=1.1, window=3),
]


def history_state(policy: Any, spec: JobSpec) -> dict[str, Any]:
    state = policy.new_state(spec)
    for o in HISTORY:
        state = policy.observe(spec, state, o)
    return state


@pytest.mark.parametrize("spec", SPECS, ids=["plain", "window", "budget", "budget+window"])
@pytest.mark.parametrize("policy", [PowerBanditPolicy(), ZeusPolicy()], ids=lambda p: p.name)
def test_no_policy_method_changes_the_state_it_is_handed(policy: Any, spec: JobSpec) -> None:
    if spec.max_slowdown and policy.name == "zeus":
        pytest.skip("a slowdown budget is a powerbandit feature")
    state = history_state(policy, spec)
    before = copy.deepcopy(state)
    for i in range(10):
        policy.suggest(spec, state, ctx(), decision_rng(3, i))
        policy.suggest(spec, state, ctx("a40"), decision_rng(3, i))
    for b in (*spec.batch_sizes, None):
        for gpu in (None, "v100", "a40", "h100"):
            policy.cost_bound(spec, state, b, gpu)
    if hasattr(policy, "power_limit"):
        for b in spec.batch_sizes:
            policy.power_limit(spec, state, ctx(), b)
    policy.summarize(spec, state)
    policy.upgrade_state(spec, state)
    for o in HISTORY:
        new = policy.observe(spec, state, o)
        assert new is not state
        assert state == before
        # nor does the new state share a container that a later observation would change
        policy.observe(spec, new, o)
        assert state == before
    assert state == before


@pytest.mark.parametrize("spec", SPECS[:2], ids=["plain", "window"])
def test_state_round_trips_through_its_typed_form(spec: JobSpec) -> None:
    policy = PowerBanditPolicy()
    state = policy.new_state(spec)
    assert encode(decode(state)) == state
    for o in HISTORY:
        state = policy.observe(spec, state, o)
        stored = json.loads(json.dumps(state))
        assert encode(decode(stored)) == stored == state
    typed = decode(state)
    assert typed.arms[32] == ArmSums(2, math.log(10) + math.log(9), typed.arms[32].ok_sumsq, math.log(10), 0, 0.0, 0.0,
                                     None, 2, 1900.0, 0)  # fmt: skip
    assert typed.arms[8].never_ran == 1 and typed.arms[64].fail_n == 1 and typed.arms[64].ok_n == 1
    assert typed.epoch_cost["a40"] == {16: 100.0} and set(typed.epoch_cost["v100"]) == {8, 16, 32, 64, 128}
    assert typed.observations == len(HISTORY)
    if spec.window:
        assert typed.tails[16] == ArmTails([math.log(11), math.log(13)], [], [1100.0, 1300.0])
    else:
        assert typed.tails == {} and "tails" not in state
    with pytest.raises(AttributeError):
        typed.arms[32].ok_n = 5  # type: ignore[misc]


def test_upgrade_state_of_a_current_state_is_a_new_dict_with_the_same_content() -> None:
    for policy in (PowerBanditPolicy(), ZeusPolicy()):
        state = history_state(policy, SPEC)
        before = copy.deepcopy(state)
        loaded = policy.upgrade_state(SPEC, state)
        assert loaded == state == before and loaded is not state


@pytest.mark.parametrize("version", [0, 4, "3", None])
def test_an_unknown_version_is_refused_at_load_and_on_every_read_path(version: Any) -> None:
    policy = PowerBanditPolicy()
    state = {**history_state(policy, SPEC), "version": version}
    with pytest.raises(StateVersionError, match="version"):
        policy.upgrade_state(SPEC, state)
    with pytest.raises(StateVersionError, match=f"version {version!r}.*upgrade_state"):
        policy.suggest(SPEC, state, ctx(), decision_rng(0, 0))
    with pytest.raises(StateVersionError):
        policy.cost_bound(SPEC, state)


def test_a_state_without_a_version_is_read_as_version_1() -> None:
    policy = PowerBanditPolicy()
    v1 = {
        "arms": {str(b): {"log_epochs": [], "fail_epochs": [], "never_ran": 0, "ok_costs": []} for b in SPEC.batch_sizes},
        "epoch_cost": {},
        "observations": 0,
        "recurrence_cost": 0.0,
        "min_recurrence_cost": None,
    }
    assert policy.upgrade_state(SPEC, v1) == policy.new_state(SPEC)
    assert STATE_VERSION == 3


def test_hyperparameters_are_one_frozen_record_with_the_policy_defaults() -> None:
    hp = Hyperparameters()
    assert PowerBanditPolicy().hyperparameters == hp
    assert (hp.explore_bound, hp.fail_limit, hp.horizon_min_runs, hp.neighbour_reach) == (1.7, 2, 20.0, 1)
    with pytest.raises(FrozenInstanceError):
        hp.explore_bound = 2.0  # type: ignore[misc]
    tighter = PowerBanditPolicy(Hyperparameters(explore_bound=1.2))
    state = PowerBanditPolicy().observe(SPEC, PowerBanditPolicy().new_state(SPEC), obs(32, 10))  # mean cost 1000
    assert PowerBanditPolicy().cost_bound(SPEC, state, 64) == pytest.approx(1700.0)
    assert tighter.cost_bound(SPEC, state, 64) == pytest.approx(1200.0)


def test_neighbour_reach_sets_how_far_exploration_reaches_beyond_a_success() -> None:
    spec = JobSpec("reach", (8, 16, 32, 64, 128, 256), 32, 0.5, 100)
    context = SuggestContext("v100", 250.0, LIMITS, profiles={32: profile(10.0)})

    def explored(policy: PowerBanditPolicy) -> set[int]:
        state = policy.new_state(spec)
        for _ in range(3):
            state = policy.observe(spec, state, obs(32, 10))
        hp = replace(policy.hyperparameters, horizon_min_runs=1e12)  # every untried candidate passes the gate
        gated = PowerBanditPolicy(hp)
        # the trial worth most runs first; with it in flight the next one is offered, and so on
        # until only tried batch sizes are left
        busy: list[int] = []
        while True:
            running = replace(context, in_flight=tuple(busy))
            b = gated.suggest(spec, state, running, decision_rng(7, len(busy))).batch_size
            if b == 32 or b in busy:
                return set(busy)
            busy.append(b)

    assert explored(PowerBanditPolicy()) == {16, 64}
    assert explored(PowerBanditPolicy(Hyperparameters(neighbour_reach=2))) == {8, 16, 64, 128}
