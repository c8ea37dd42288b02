"""A first profile of a batch size tries only the power limits its profiled neighbours found worth it
(:func:`~optimizer_server.policy.base.limits_worth_profiling`, used by ``powerbandit``), from the highest
down, and stops past the cheapest (:func:`~powerbandit.domain.profiles.stops_profiling`)."""

from __future__ import annotations

import math

from optimizer_server.policy.base import (
    JobSpec,
    Observation,
    ProfilePoint,
    SuggestContext,
    decision_rng,
    epoch_cost,
    limits_worth_profiling,
)
from optimizer_server.policy.powerbandit import Hyperparameters, PowerBanditPolicy
from optimizer_server.policy.zeus import ZeusPolicy

SPEC = JobSpec("j", (8, 16, 32, 64, 128), 32, 0.5, 100)
LIMITS = (100.0, 150.0, 200.0, 250.0)
MAX_POWER_W = 250.0


def curve(seconds_per_epoch: dict[float, float]) -> dict[float, ProfilePoint]:
    """A profile drawing 90 % of each limit, with the given epoch times."""
    return {p: ProfilePoint(p, 0.9 * p, t) for p, t in seconds_per_epoch.items()}


# 100 W is slow: at eta 0.5 an epoch costs ~1.6x the best (200 W); 150 W ~1.06x, 250 W ~1.08x
SLOW_LOW = curve({100.0: 20.0, 150.0: 11.0, 200.0: 9.0, 250.0: 8.5})
# the same GPU at a batch size where 100 W is the best
FAST_LOW = curve({100.0: 8.0, 150.0: 7.9, 200.0: 7.8, 250.0: 7.8})


def context(profiles: dict[int, dict[float, ProfilePoint]], limits: tuple[float, ...] = LIMITS) -> SuggestContext:
    return SuggestContext("v100", MAX_POWER_W, limits, profiles=profiles)


def relative(profile: dict[float, ProfilePoint]) -> dict[float, float]:
    costs = {p: epoch_cost(SPEC.eta, pt, MAX_POWER_W) for p, pt in profile.items()}
    best = min(costs.values())
    return {p: c / best for p, c in costs.items()}


def test_the_curves_are_what_the_tests_assume() -> None:
    slow = relative(SLOW_LOW)
    assert slow[100.0] > 1.5 and slow[150.0] < 1.25 and slow[250.0] < 1.25 and slow[200.0] == 1.0
    assert relative(FAST_LOW)[100.0] == 1.0


def test_a_limit_that_cost_far_more_than_the_best_at_a_neighbour_is_not_profiled() -> None:
    out = limits_worth_profiling(SPEC, context({32: SLOW_LOW}), 16, LIMITS, 0.25)
    assert out == (150.0, 200.0, 250.0)
    assert limits_worth_profiling(SPEC, context({32: SLOW_LOW}), 64, LIMITS, 0.25) == (150.0, 200.0, 250.0)
    # a wider tolerance keeps it; none at all keeps only the best and the highest
    assert limits_worth_profiling(SPEC, context({32: SLOW_LOW}), 16, LIMITS, 1.0) == LIMITS
    assert limits_worth_profiling(SPEC, context({32: SLOW_LOW}), 16, LIMITS, 0.0) == (200.0, 250.0)
    assert limits_worth_profiling(SPEC, context({32: SLOW_LOW}), 16, LIMITS, math.inf) == LIMITS


def test_the_highest_limit_is_always_profiled() -> None:
    # at eta 1 (energy only) the highest limit costs the most: it stays, the reference of the GPU's draw
    energy_only = JobSpec("j", (8, 16, 32, 64, 128), 32, 1.0, 100)
    costly_top = curve({100.0: 8.0, 150.0: 7.0, 200.0: 6.9, 250.0: 6.9})
    out = limits_worth_profiling(energy_only, context({32: costly_top}), 16, LIMITS, 0.1)
    assert 250.0 in out and 100.0 in out and len(out) < len(LIMITS)


def test_nothing_is_left_out_without_a_profile_within_reach() -> None:
    assert limits_worth_profiling(SPEC, context({}), 16, LIMITS, 0.25) == LIMITS
    # 32 is two doublings from 8: how the cost moves with the limit may have shifted by then
    assert limits_worth_profiling(SPEC, context({32: SLOW_LOW}), 8, LIMITS, 0.25) == LIMITS
    assert limits_worth_profiling(SPEC, context({32: SLOW_LOW}), 8, LIMITS, 0.25, reach_doublings=2.0) == (
        150.0,
        200.0,
        250.0,
    )
    # its own profile (there is none to make) and an empty one say nothing
    assert limits_worth_profiling(SPEC, context({16: {}, 32: {}}), 16, LIMITS, 0.25) == LIMITS


def test_a_limit_is_kept_when_either_neighbour_found_it_worth_trying() -> None:
    # 100 W is bad at 32 and the best at 8: for 16, between them, it is tried
    out = limits_worth_profiling(SPEC, context({8: FAST_LOW, 32: SLOW_LOW}), 16, LIMITS, 0.25)
    assert out == LIMITS
    # only the nearest profiled batch size on each side judges: 64 is nearer to 128 than 32 is
    out = limits_worth_profiling(SPEC, context({32: FAST_LOW, 64: SLOW_LOW}), 128, LIMITS, 0.25)
    assert out == (150.0, 200.0, 250.0)


def test_a_limit_the_nearest_profile_did_not_try_is_judged_further_out_or_tried() -> None:
    narrowed = {p: pt for p, pt in SLOW_LOW.items() if p != 100.0}  # 64's profile skipped 100 W
    # for 128, 64 is the nearest but never measured 100 W; 32 is two doublings away: 100 W is tried
    assert limits_worth_profiling(SPEC, context({32: SLOW_LOW, 64: narrowed}), 128, LIMITS, 0.25) == LIMITS
    # for 16, 32 measured it (and found it slow), though 64's profile lacks it: left out
    assert limits_worth_profiling(SPEC, context({32: SLOW_LOW, 64: narrowed}), 16, LIMITS, 0.25) == (
        150.0,
        200.0,
        250.0,
    )
    # a limit of this GPU that no profile has measured is tried
    wider = (*LIMITS, 300.0)
    out = limits_worth_profiling(SPEC, context({32: SLOW_LOW}, wider), 16, wider, 0.25)
    assert out == (150.0, 200.0, 250.0, 300.0)


def observation(b: int, epochs: float, ec: float) -> Observation:
    cost = epochs * ec
    return Observation(b, "v100", 200.0, epochs, cost, 1.0, cost, True, MAX_POWER_W, epoch_cost=ec)


def first_trial(policy: PowerBanditPolicy | ZeusPolicy, spec: JobSpec = SPEC) -> tuple[int, tuple[float, ...], str]:
    """The first suggestion after the default's run and profile: a trial of a neighbour, profiling."""
    ec = epoch_cost(spec.eta, SLOW_LOW[200.0], MAX_POWER_W)
    state = policy.observe(spec, policy.new_state(spec), observation(32, 10, ec))
    for i in range(50):
        d = policy.suggest(spec, state, context({32: SLOW_LOW}), decision_rng(1, i))
        if d.batch_size != 32 and d.power_limit_w is None:
            return d.batch_size, d.profile_power_limits_w, d.explanation
    raise AssertionError("no trial in 50 draws")


def test_powerbandit_profiles_a_trial_on_the_limits_its_neighbour_found_worth_it() -> None:
    b, limits, why = first_trial(PowerBanditPolicy())
    assert b in (16, 64) and limits == (250.0, 200.0, 150.0)  # from the highest down
    assert "profiling 3 of 4 power limits" in why and "25%" in why and "from the highest down" in why
    # switched off: every limit, in the GPU's order, and no stop
    b, limits, why = first_trial(PowerBanditPolicy(Hyperparameters(profile_tolerance=math.inf)))
    assert limits == LIMITS and "profiling power limits during the first epoch" in why
    assert "highest down" not in why


def test_powerbandit_stops_a_profile_past_the_cheapest_limit() -> None:
    spec, state = SPEC, PowerBanditPolicy().new_state(SPEC)
    first = PowerBanditPolicy().suggest(spec, state, context({}), decision_rng(1, 0))
    assert first.power_limit_w is None and first.profile_power_limits_w == tuple(sorted(LIMITS, reverse=True))
    assert first.profile_stop_ratio == 1.25
    assert PowerBanditPolicy(Hyperparameters(profile_tolerance=0.5)).suggest(
        spec, state, context({}), decision_rng(1, 0)
    ).profile_stop_ratio == 1.5
    # off with the narrowing: every limit, no stop
    off = PowerBanditPolicy(Hyperparameters(profile_tolerance=math.inf))
    assert off.suggest(spec, state, context({}), decision_rng(1, 0)).profile_stop_ratio == 0.0
    # a slowdown budget (cost = energy) stops too: past the stop a limit takes more energy and more time
    budget = JobSpec("j", (8, 16, 32, 64, 128), 32, 1.0, 100, max_slowdown=1.1)
    decided = PowerBanditPolicy().suggest(budget, PowerBanditPolicy().new_state(budget), context({}), decision_rng(1, 0))
    assert decided.profile_stop_ratio == 1.25 and decided.profile_power_limits_w == tuple(sorted(LIMITS, reverse=True))


def test_a_profile_stops_after_the_first_limit_far_above_the_cheapest() -> None:
    from powerbandit.domain import stops_profiling

    assert not stops_profiling(1.25, 1.0, 1.25) and stops_profiling(1.26, 1.0, 1.25)
    assert not stops_profiling(100.0, 1.0, 0.0)  # a ratio of 0 never stops


def test_a_limit_below_one_a_neighbour_found_too_costly_is_not_profiled_either() -> None:
    # 64's profile stopped at 100 W (too costly) and never measured 50 W, which is lower still
    limits = (50.0, *LIMITS)
    stopped = dict(SLOW_LOW)
    out = limits_worth_profiling(SPEC, context({64: stopped}, limits), 32, limits, 0.25)
    assert out == (150.0, 200.0, 250.0)
    # a limit above the neighbour's best that it did not measure is still tried
    no_top = {p: pt for p, pt in SLOW_LOW.items() if p != 250.0}
    assert limits_worth_profiling(SPEC, context({64: no_top}, limits), 32, limits, 0.25) == (150.0, 200.0, 250.0)
    # costly limits above the best (eta 1: energy only; 200 W is 1.3x 150 W) say nothing about lower ones
    energy_only = JobSpec("j", (8, 16, 32, 64, 128), 32, 1.0, 100)
    costly_top = curve({150.0: 7.0, 200.0: 6.9, 250.0: 9.0})
    out = limits_worth_profiling(energy_only, context({64: costly_top}, limits), 32, limits, 0.1)
    assert out == (50.0, 100.0, 150.0, 250.0)


def test_a_slowdown_budget_profiles_every_limit() -> None:
    # its limit is chosen by the time at each limit against the highest's, not by cost: a limit its
    # neighbour found costly may be the one the budget allows (walked from the highest down)
    budget = JobSpec("j", (8, 16, 32, 64, 128), 32, 1.0, 100, max_slowdown=1.1)
    _, limits, _ = first_trial(PowerBanditPolicy(), budget)
    assert limits == tuple(sorted(LIMITS, reverse=True))


def test_zeus_still_profiles_every_limit() -> None:
    # the published reference profiles every limit; its figures must not move
    _, limits, _ = first_trial(ZeusPolicy())
    assert limits == LIMITS
