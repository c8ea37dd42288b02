"""Unit tests of ``powerbandit`` (structured Thompson sampling on epochs-to-target)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from optimizer_server.policy.base import (
    JobSpec,
    Observation,
    ProfilePoint,
    SuggestContext,
    decision_rng,
)
from optimizer_server.policy.powerbandit import Hyperparameters, PowerBanditPolicy, StateVersionError
from optimizer_server.policy.registry import POLICY_NAMES, get_policy

SPEC = JobSpec("j", (8, 16, 32, 64, 128), 32, 0.5, 100)
LIMITS = (100.0, 250.0)


def profile(time_s: float) -> dict[float, ProfilePoint]:
    return {100.0: ProfilePoint(100.0, 95.0, 2 * time_s), 250.0: ProfilePoint(250.0, 200.0, time_s)}


def ctx(profiled: dict[int, float] | None = None, in_flight: tuple[int, ...] = ()) -> SuggestContext:
    profiles = {b: profile(t) for b, t in (profiled or {}).items()}
    return SuggestContext("v100", 250.0, LIMITS, profiles=profiles, in_flight=in_flight)


def obs(b: int, epochs: float, reached: bool = True, ec: float = 100.0, gpu: str = "v100") -> Observation:
    cost = epochs * ec
    return Observation(b, gpu, 250.0, epochs, cost, 1.0, cost, reached, 250.0, epoch_cost=ec)


def test_default_and_registered() -> None:
    assert POLICY_NAMES[0] == "powerbandit"
    assert get_policy("powerbandit").name == "powerbandit"


def test_first_run_is_default_and_profiles() -> None:
    policy = PowerBanditPolicy()
    d = policy.suggest(SPEC, policy.new_state(SPEC), ctx(), decision_rng(0, 0))
    assert d.batch_size == 32 and d.power_limit_w is None and d.profile_power_limits_w == tuple(sorted(LIMITS, reverse=True))
    assert d.profile_stop_ratio == 1.0 + policy.hyperparameters.profile_tolerance  # from the highest down
    assert d.phase == "explore"


def test_uses_best_power_limit_from_profile() -> None:
    policy = PowerBanditPolicy()
    state = policy.observe(SPEC, policy.new_state(SPEC), obs(32, 10))
    c = ctx({32: 10.0, 16: 18.0, 64: 6.0})
    for i in range(20):
        d = policy.suggest(SPEC, state, c, decision_rng(3, i))
        if d.batch_size in (16, 32, 64):
            assert d.power_limit_w is not None and d.profile_power_limits_w == ()


def test_state_json_and_replay_and_determinism() -> None:
    policy = PowerBanditPolicy()
    history = [obs(32, 10), obs(16, 12), obs(64, 30, reached=False), obs(16, 11), obs(8, 0, reached=False)]
    state = policy.new_state(SPEC)
    for o in history:
        state = json.loads(json.dumps(policy.observe(SPEC, state, o)))
    replay = policy.new_state(SPEC)
    for o in history:
        replay = policy.observe(SPEC, replay, o)
    assert json.dumps(replay, sort_keys=True) == json.dumps(state, sort_keys=True)
    c = ctx({32: 10.0, 16: 18.0, 64: 6.0})
    first = [policy.suggest(SPEC, state, c, decision_rng(5, i)) for i in range(30)]
    second = [policy.suggest(SPEC, replay, c, decision_rng(5, i)) for i in range(30)]
    assert first == second


def test_converges_to_cheapest_arm() -> None:
    policy = PowerBanditPolicy()
    state = policy.new_state(SPEC)
    # epochs: 8:40, 16:20, 32:12, 64:11, 128: diverges. Epoch cost falls with b.
    epochs = {8: 40, 16: 20, 32: 12, 64: 11, 128: None}
    times = {8: 40.0, 16: 20.0, 32: 10.0, 64: 7.0, 128: 6.0}
    picks = []
    for i in range(60):
        profiled = {b: times[b] for b in state["epoch_cost"].get("v100", {}) for b in [int(b)]}
        d = policy.suggest(SPEC, state, ctx(profiled), decision_rng(11, i))
        picks.append(d.batch_size)
        k = epochs[d.batch_size]
        ec = times[d.batch_size] * 200.0
        state = policy.observe(SPEC, state, obs(d.batch_size, k or 25, reached=k is not None, ec=ec))
    assert picks[-20:].count(64) >= 17  # 64: 11 * 7 beats 32: 12 * 10
    assert picks.count(8) <= 2  # far from anything good: hardly explored


def test_in_flight_untried_arm_not_handed_out_twice() -> None:
    policy = PowerBanditPolicy()
    state = policy.observe(SPEC, policy.new_state(SPEC), obs(32, 10))
    state = policy.observe(SPEC, state, obs(32, 10))
    c = ctx({32: 10.0}, in_flight=(16,))
    for i in range(50):
        assert policy.suggest(SPEC, state, c, decision_rng(2, i)).batch_size != 16
    c = ctx({32: 10.0}, in_flight=(16, 64))
    for i in range(50):
        assert policy.suggest(SPEC, state, c, decision_rng(2, i)).batch_size == 32


def test_all_arms_failed_fallback_never_raises() -> None:
    policy = PowerBanditPolicy()
    state = policy.new_state(SPEC)
    for b in SPEC.batch_sizes:
        for _ in range(3):
            state = policy.observe(SPEC, state, obs(b, 5 if b != 64 else 9, reached=False))
    d = policy.suggest(SPEC, state, ctx(), decision_rng(0, 0))
    assert d.phase == "fallback"
    assert "failed" in d.explanation
    assert d.batch_size == 64  # ran the furthest before being stopped
    assert d.batch_size in SPEC.batch_sizes


def test_cost_bound_is_beta_times_cheapest_recurrence() -> None:
    policy = PowerBanditPolicy()
    state = policy.new_state(SPEC)
    assert policy.cost_bound(SPEC, state) == math.inf
    state = policy.observe(SPEC, state, obs(32, 10))  # 1000
    state = policy.observe(SPEC, state, obs(16, 2, reached=False))  # 200 ...
    state = policy.observe(SPEC, state, obs(16, 7))  # ... + 700 = 900
    assert policy.cost_bound(SPEC, state) == pytest.approx(2.0 * 900.0)


def test_epochs_shared_across_gpu_models() -> None:
    policy = PowerBanditPolicy()
    state = policy.new_state(SPEC)
    for _ in range(3):
        state = policy.observe(SPEC, state, obs(32, 10, gpu="a40"))
    arms = {a.batch_size: a for a in policy.summarize(SPEC, state)}
    assert arms[32].epochs_mean == pytest.approx(10.0, rel=0.05)
    # A V100 run of the same job starts from that knowledge: it does not restart at the default
    # blindly but samples among tried and neighbouring batch sizes.
    d = policy.suggest(SPEC, state, ctx(), decision_rng(0, 0))
    assert d.batch_size in (16, 32, 64)


def test_summarize_statuses() -> None:
    policy = PowerBanditPolicy()
    state = policy.new_state(SPEC)
    state = policy.observe(SPEC, state, obs(32, 10))
    state = policy.observe(SPEC, state, obs(128, 3, reached=False))
    state = policy.observe(SPEC, state, obs(128, 3, reached=False))
    arms = {a.batch_size: a for a in policy.summarize(SPEC, state)}
    assert arms[32].status == "active" and arms[32].successes == 1
    assert arms[128].status == "pruned" and arms[8].status == "unexplored"
    assert arms[32].cost_low <= arms[32].cost_mean <= arms[32].cost_high
    assert math.isnan(arms[8].cost_mean)


def test_epoch_cost_extrapolation_is_convex_below_the_profiled_range() -> None:
    from optimizer_server.policy.powerbandit.model import extrapolate_epoch_cost

    hp = Hyperparameters()

    def _extrapolate_ec(points: dict[float, float], x: float) -> tuple[float, float]:
        return extrapolate_epoch_cost(points, x, hp)

    # a cost that rises towards small batch sizes: below the profiled range it rises faster than
    # the straight line through the two nearest points, but never beyond 2x per halving
    rising = {5.0: math.log(2.0), 6.0: math.log(1.5)}
    y, dist = _extrapolate_ec(rising, 4.0)
    linear = math.log(2.0) + (math.log(2.0) - math.log(1.5))
    assert dist == 1.0
    assert linear < y <= math.log(2.0) - hp.ec_down_slope + 1e-12
    # a flat (saturated) curve stays flat, and inside the range it is an interpolation
    flat = {2.0: 0.0, 3.0: 0.01}
    assert _extrapolate_ec(flat, 1.0)[0] == pytest.approx(-0.01)
    assert _extrapolate_ec(rising, 5.5)[0] == pytest.approx(0.5 * (math.log(2.0) + math.log(1.5)))
    # above the range: the plain linear extrapolation
    assert _extrapolate_ec(rising, 7.0)[0] == pytest.approx(math.log(1.5) - (math.log(2.0) - math.log(1.5)))


def test_exploration_gate_weighs_gain_over_horizon_against_trial_loss() -> None:
    from optimizer_server.policy.powerbandit.model import worth_exploring as _worth_exploring

    best = 10.0
    # clearly cheaper: always worth it; far dearer and nearly certain: never
    assert _worth_exploring(math.log(7.0), 0.04, best, 1.0)
    assert not _worth_exploring(math.log(20.0), 0.01, best, 1000.0)
    # a bit dearer but uncertain: worth it only for a long enough horizon
    assert not _worth_exploring(math.log(12.0), 0.04, best, 1.0)
    assert _worth_exploring(math.log(12.0), 0.04, best, 1000.0)


def test_untried_arm_that_cannot_pay_off_is_not_explored() -> None:
    policy = PowerBanditPolicy()
    spec = JobSpec("g", (16, 32, 64), 64, 0.5, 100)
    state = policy.new_state(spec)
    # 64 and 32 reach the target in the same epochs; 32's epochs cost 1.1x 64's: 16 is expected to
    # cost even more (the cost curve is convex). Thompson sampling alone still tries it now and
    # then; the exploration gate never does
    for b, t in ((64, 1.0), (32, 1.1)) * 3:
        state = policy.observe(
            spec,
            state,
            Observation(b, "v100", 250.0, 10.0, 10 * t * 200.0, 10 * t, 10 * t * 225.0, True, 250.0, t * 225.0),
        )
    context = SuggestContext("v100", 250.0, LIMITS, profiles={64: profile(1.0), 32: profile(1.1)})

    def chosen(policy: PowerBanditPolicy) -> list[int]:
        return [policy.suggest(spec, state, context, decision_rng(1, i)).batch_size for i in range(500)]

    gated = chosen(policy)
    assert 16 not in gated
    assert gated.count(64) > 400
    endless = PowerBanditPolicy(Hyperparameters(horizon_min_runs=1e12))  # every chance is worth a trial
    assert set(chosen(endless)) == {16}  # ... and a trial that is worth it is run at once


def test_trial_that_passes_the_gate_is_run_at_once() -> None:
    policy = PowerBanditPolicy()
    state = policy.new_state(SPEC)
    for k in (10, 11, 10):
        state = policy.observe(SPEC, state, obs(32, k))
    # 16 and 64 are untried neighbours of 32, about as likely as not cheaper: each is worth a trial.
    # Thompson sampling alone would keep running 32 about half the time; every suggestion is one
    # of the trials instead, the one worth most: 16 (an epoch costs the same at any batch size on
    # this saturated GPU, and a larger batch is not expected to need fewer epochs)
    picks = [policy.suggest(SPEC, state, ctx({32: 10.0}), decision_rng(4, i)) for i in range(200)]
    assert {d.batch_size for d in picks} == {16}
    assert all(d.phase == "explore" for d in picks)
    # 64 tried, at twice the cost: 16 is the one trial left (128, beyond the dearer 64, is not
    # worth one), and it is still worth it
    state = policy.observe(SPEC, state, obs(64, 20))
    context = ctx({32: 10.0, 64: 10.0})
    assert {policy.suggest(SPEC, state, context, decision_rng(4, i)).batch_size for i in range(100)} == {16}
    # 16 stopped unsuccessful: mostly back to Thompson sampling over the tried batch sizes (128 is
    # a long shot that passes the gate only with some draws of the noise)
    state = policy.observe(SPEC, state, obs(16, 15, reached=False))
    context = ctx({32: 10.0, 64: 10.0, 16: 10.0})
    picks = [policy.suggest(SPEC, state, context, decision_rng(4, i)).batch_size for i in range(200)]
    assert picks.count(32) > 150
    assert set(picks) <= {16, 32, 64, 128}


def test_state_stays_bounded_and_window_keeps_only_recent_samples() -> None:
    from dataclasses import replace

    policy = PowerBanditPolicy()
    sizes = []
    for spec in (SPEC, replace(SPEC, window=3)):
        state = policy.new_state(spec)
        for i in range(200):
            state = policy.observe(spec, state, obs(32, 10 + i % 3))
            state = policy.observe(spec, state, obs(16, 20 + i % 2, reached=i % 5 != 0))
            if i in (10, 199):
                sizes.append(len(json.dumps(state)))
        if spec.window:
            ok_tail = state["tails"]["32"][0]
            assert [round(math.exp(x)) for x in ok_tail] == [12, 10, 11]  # i = 197, 198, 199
            assert state["arms"]["32"][0] == 200  # lifetime count kept beside the window
        else:
            assert "tails" not in state
    # 200 runs more do not make the state bigger (only the digits of the sums change)
    assert sizes[1] - sizes[0] < 40 and sizes[3] - sizes[2] < 40


def test_version_1_state_is_upgraded_to_the_same_model() -> None:
    """A state saved by an older server (every sample kept) is converted where it is loaded
    (``upgrade_state``), to the same model; a read path refuses it unconverted."""
    policy = PowerBanditPolicy()
    history = [obs(32, 10), obs(16, 12), obs(64, 30, reached=False), obs(16, 11), obs(8, 0, reached=False)]
    state = policy.new_state(SPEC)
    for o in history:
        state = policy.observe(SPEC, state, o)
    v1 = {
        **{k: v for k, v in state.items() if k != "arms"},
        "version": 1,
        "arms": {str(b): {"log_epochs": [], "fail_epochs": [], "never_ran": 0, "ok_costs": []} for b in SPEC.batch_sizes},
    }
    for o in history:
        arm = v1["arms"][str(o.batch_size)]
        if o.reached_target:
            arm["log_epochs"].append(math.log(o.epochs))
            arm["ok_costs"].append(o.cost)
        elif o.epochs > 0:
            arm["fail_epochs"].append(o.epochs)
        else:
            arm["never_ran"] += 1
    c = ctx({32: 10.0, 16: 18.0, 64: 6.0})
    old = json.loads(json.dumps(v1))
    loaded = policy.upgrade_state(SPEC, old)
    assert old == v1  # the stored state is not changed
    assert [policy.suggest(SPEC, loaded, c, decision_rng(5, i)) for i in range(20)] == [
        policy.suggest(SPEC, state, c, decision_rng(5, i)) for i in range(20)
    ]
    assert policy.summarize(SPEC, loaded) == policy.summarize(SPEC, state)
    upgraded = policy.observe(SPEC, policy.upgrade_state(SPEC, json.loads(json.dumps(v1))), obs(32, 9))
    assert upgraded["version"] == 3 and upgraded == policy.observe(SPEC, state, obs(32, 9))
    with pytest.raises(StateVersionError, match="version 1.*upgrade_state"):
        policy.suggest(SPEC, old, c, decision_rng(5, 0))


def _as_version_2(state: dict, window: int) -> dict:
    """A current state written the way version 2 kept it (nested objects of running sums)."""
    v2 = {k: v for k, v in state.items() if k not in ("arms", "tails")}
    v2["version"] = 2
    v2["arms"] = {}
    for key, arm in state["arms"].items():
        tails = state.get("tails", {}).get(key, [[], [], []])
        entry = {}
        for i, name in enumerate(("ok", "fail", "cost")):
            at = 4 * i
            series = {"n": arm[at], "sum": arm[at + 1]}
            if name != "cost":
                series |= {"sumsq": arm[at + 2], "max": arm[at + 3]}
            if window:
                series["tail"] = tails[i]
            entry[name] = series
        entry["never_ran"] = arm[10]
        v2["arms"][key] = entry
    return v2


@pytest.mark.parametrize("window", [0, 2])
def test_version_2_state_is_upgraded_to_the_same_model(window: int) -> None:
    """A state saved by the previous server (nested running sums) gives the same decisions,
    summaries and next state as the current layout."""
    from dataclasses import replace

    spec = replace(SPEC, window=window)
    policy = PowerBanditPolicy()
    history = [obs(32, 10), obs(16, 12), obs(64, 30, reached=False), obs(16, 11), obs(8, 0, reached=False), obs(32, 9)]
    state = policy.new_state(spec)
    for o in history:
        state = policy.observe(spec, state, o)
    v2 = json.loads(json.dumps(_as_version_2(state, window)))
    stored = json.loads(json.dumps(v2))
    loaded = policy.upgrade_state(spec, stored)
    assert stored == v2  # the stored state is not changed
    c = ctx({32: 10.0, 16: 18.0, 64: 6.0})
    assert [policy.suggest(spec, loaded, c, decision_rng(5, i)) for i in range(20)] == [
        policy.suggest(spec, state, c, decision_rng(5, i)) for i in range(20)
    ]
    assert policy.summarize(spec, loaded) == policy.summarize(spec, state)
    assert policy.cost_bound(spec, loaded, 128, "A40") == policy.cost_bound(spec, state, 128, "A40")
    upgraded = policy.observe(spec, policy.upgrade_state(spec, v2), obs(16, 13))
    assert upgraded["version"] == 3 and upgraded == policy.observe(spec, state, obs(16, 13))
    for read in (
        lambda: policy.suggest(spec, v2, c, decision_rng(5, 0)),
        lambda: policy.summarize(spec, v2),
        lambda: policy.cost_bound(spec, v2, 128, "A40"),
        lambda: policy.power_limit(spec, v2, c, 32),
        lambda: policy.observe(spec, v2, obs(16, 13)),
    ):
        with pytest.raises(StateVersionError, match="version 2"):
            read()


def test_batch_size_that_only_failed_is_retried_only_through_the_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    import optimizer_server.policy.powerbandit.policy as policy_module

    spec = JobSpec("f", (16, 32, 64), 32, 0.5, 100)
    policy = PowerBanditPolicy()
    state = policy.new_state(spec)
    for observation in (obs(32, 10), obs(32, 11), obs(32, 10), obs(64, 20), obs(16, 8, reached=False)):
        state = policy.observe(spec, state, observation)
    context = ctx({32: 10.0, 64: 10.0, 16: 10.0})

    def picks() -> set[int]:
        return {policy.suggest(spec, state, context, decision_rng(4, i)).batch_size for i in range(300)}

    # 16 stopped short of the target once, early (its censored run is weak evidence, and still
    # promises fewer epochs than 32 needs): running it again is an exploration, so the gate decides
    assert 16 in picks()
    monkeypatch.setattr(policy_module, "trial_value", lambda *args: -1.0)
    assert 16 not in picks()


# ------------------------------------------------------------------------- calling off a trial
def _proven_32() -> tuple[PowerBanditPolicy, dict]:
    """32 reached the target three times in about 10 epochs (epoch cost 2250 on the v100 profile)."""
    policy = PowerBanditPolicy()
    state = policy.new_state(SPEC)
    for epochs in (10, 11, 10):
        state = policy.observe(SPEC, state, obs(32, epochs, ec=2250.0))
    return policy, state


def test_an_exploration_whose_measured_epoch_cost_rules_it_out_is_called_off() -> None:
    policy, state = _proven_32()
    # 16's profile: an epoch costs 4x 32's, and it cannot need 4x fewer epochs
    dear = ctx({32: 10.0, 16: 40.0})
    reason = policy.call_off(SPEC, state, dear, 16, 9000.0)
    assert reason is not None and "batch size 16" in reason and "x the best batch size's mean cost" in reason
    # what it has spent is sunk: once that outweighs what the trial is expected to lose, it goes on
    assert policy.call_off(SPEC, state, dear, 16, 1e9) is None
    # a neighbour whose epoch costs the same as 32's may well need fewer epochs: worth its trial
    assert policy.call_off(SPEC, state, ctx({32: 10.0, 64: 10.0}), 64, 2250.0) is None
    # never a batch size that reached the target, one whose epoch cost is not measured, one of
    # another job, or before anything reached the target
    assert policy.call_off(SPEC, state, ctx({32: 40.0}), 32, 2250.0) is None
    assert policy.call_off(SPEC, state, ctx({32: 10.0}), 16, 9000.0) is None
    assert policy.call_off(SPEC, state, dear, 4096, 9000.0) is None
    assert policy.call_off(SPEC, policy.new_state(SPEC), dear, 16, 9000.0) is None


def test_on_a_starved_gpu_a_smaller_batch_can_at_best_tie_and_is_not_tried() -> None:
    # epochs halve with each halving of the batch (the same steps at 32, 64 and 128): the trend says
    # 16 needs 5. A smaller batch never needs fewer steps, so 5 is also the least it can need; an
    # epoch of 16 costing twice one of 32 (a starved GPU), 16 can at best tie with 32
    seconds = {128: 2.5, 64: 5.0, 32: 10.0}
    runs = ((32, 10), (64, 20), (128, 40)) * 2 + ((32, 11), (64, 19), (128, 41))

    def trained(hp: Hyperparameters) -> tuple[PowerBanditPolicy, dict]:
        policy = PowerBanditPolicy(hp)
        state = policy.new_state(SPEC)
        for b, epochs in runs:
            state = policy.observe(SPEC, state, obs(b, epochs, ec=225.0 * seconds[b]))
        return policy, state

    def picks(policy: PowerBanditPolicy, state: dict, context: SuggestContext) -> set[int]:
        return {policy.suggest(SPEC, state, context, decision_rng(3, i)).batch_size for i in range(100)}

    starved, busy = ctx({**seconds, 16: 20.0}), ctx({**seconds, 16: 13.0})
    policy, state = trained(Hyperparameters())
    assert 16 not in picks(policy, state, starved)
    assert 16 not in picks(policy, state, ctx(seconds))  # unprofiled: its epoch cost extrapolated
    reason = policy.call_off(SPEC, state, starved, 16, 4500.0)  # profiled in its first epoch
    assert reason is not None and "batch size 16" in reason
    # the operator reads why: the floor, about the best batch size's cost, rules it out
    assert "and at least 1.05x: a smaller batch needs no fewer optimizer steps than a larger one" in reason
    # an epoch of 16 costing 1.3x: it may save up to a third, and is tried
    assert picks(policy, state, busy) == {16}
    assert policy.call_off(SPEC, state, busy, 16, 2925.0) is None
    # without the floor, the trend's optimistic tail makes the starved trial look worth running
    unfloored, state = trained(Hyperparameters(steps_floor=False))
    assert picks(unfloored, state, starved) == {16}
    assert unfloored.call_off(SPEC, state, starved, 16, 4500.0) is None


def test_a_called_off_run_is_no_evidence_about_epochs_and_is_not_tried_again() -> None:
    policy, state = _proven_32()
    dear = ctx({32: 10.0, 16: 40.0})
    called_off = Observation(16, "v100", 250.0, 1.0, 9000.0, 40.0, 9000.0, False, 250.0, 9000.0, called_off=True)
    after = policy.observe(SPEC, state, called_off)
    assert after["arms"] == state["arms"]  # a censored run at 1 epoch would make 16 look cheap
    assert after["observations"] == state["observations"] + 1
    assert after["epoch_cost"]["v100"]["16"] == 9000.0
    assert after["recurrence_cost"] == pytest.approx(state["recurrence_cost"] + 9000.0)
    # the same run without the flag is a censored observation of 16's epochs
    assert policy.observe(SPEC, state, replace(called_off, called_off=False))["arms"] != state["arms"]
    # with its epoch cost measured, 16 must pass the gate at the posterior mean: no lucky draw runs it
    assert 16 not in {policy.suggest(SPEC, after, dear, decision_rng(7, i)).batch_size for i in range(200)}
    summary = {arm.batch_size: arm for arm in policy.summarize(SPEC, after)}
    assert summary[16].observations == 0 and summary[16].status == "called off"
    assert summary[8].status == "unexplored"


def test_a_tried_batch_size_at_the_edge_follows_a_clear_trend_and_not_the_others_levels() -> None:
    # CIFAR-100's shape: epochs fall steeply with the batch size (74 at 1024, 42 at 512); one unlucky
    # run of 256 needed 40 (its mean is 31). Its prior is the trend's value, not the others' levels
    spec = JobSpec("j", (128, 256, 512, 1024), 1024, 0.5, 100)

    def epochs(hp: Hyperparameters, history: list[tuple[int, float]]) -> dict[int, float]:
        policy = PowerBanditPolicy(hp)
        state = policy.new_state(spec)
        for b, e in history:
            state = policy.observe(spec, state, obs(b, e))
        return {a.batch_size: a.epochs_mean for a in policy.summarize(spec, state)}

    steep = [(1024, 74), (512, 42), (256, 40)]
    trend, levels = epochs(Hyperparameters(), steep), epochs(Hyperparameters(edge_trend_z=math.inf), steep)
    assert trend[256] < levels[256] and trend[256] < 40 < levels[256]
    assert trend[512] == pytest.approx(levels[512]) and trend[1024] == pytest.approx(levels[1024])
    # within noise of each other, the two nearest say nothing about a trend: the levels stay the prior
    flat = [(1024, 4), (512, 4), (256, 5)]
    assert epochs(Hyperparameters(), flat) == pytest.approx(epochs(Hyperparameters(edge_trend_z=math.inf), flat))
    # inside the tried range, or with one other batch size tried, nothing changes either (1024, at
    # the other edge, follows the trend of 512 and 256 here)
    inside = [(1024, 74), (256, 31), (512, 50)]
    assert epochs(Hyperparameters(), inside)[512] == pytest.approx(
        epochs(Hyperparameters(edge_trend_z=math.inf), inside)[512]
    )
    pair = [(1024, 74), (512, 42)]
    assert epochs(Hyperparameters(), pair) == pytest.approx(epochs(Hyperparameters(edge_trend_z=math.inf), pair))
