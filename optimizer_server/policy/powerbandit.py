"""``powerbandit``: Thompson sampling on epochs-to-target times the measured epoch cost.

The cost of a run factors as ``epochs_to_target(b) * epoch_cost(b, p)``. The epoch cost at the
best power limit is a measurement (the power profile of ``b`` on the run's GPU model), so the
policy only has to learn ``epochs_to_target(b)``, which does not depend on the GPU. Model:

- ``log epochs_to_target(b) ~ N(mu_b, sigma^2)``, one noise precision shared by all batch sizes
  with a Gamma prior (a Normal-Gamma model with a proper prior: one run never makes an arm
  certain).
- The prior of ``mu_b`` comes from the other batch sizes' data, weighted by distance in
  ``log2(b)`` (neighbours share strength); the arm's own successes update it.
- A run that failed (stopped, or did not reach the target) is censored evidence: it took more
  than ``epochs`` epochs. It enters as a pseudo-observation a fixed factor above ``epochs``.
- The epoch cost of a batch size not yet profiled on this GPU is extrapolated from the profiled
  ones along ``log2(b)``, with an uncertainty that grows with the distance. Below the profiled
  range a curve that already rises towards small batch sizes is steepened (convexity: the GPU
  empties as the batch shrinks), which keeps the policy from trying small batch sizes whose
  epochs are far dearer.

A suggestion draws one sample of every candidate's cost and picks the cheapest (Thompson
sampling). Candidates are the batch sizes already tried plus the untried neighbours of the ones
that reached the target, so exploration grows outward from what works instead of sweeping. An
untried neighbour must also be worth a trial (an expected-improvement gate): its expected saving
per run over the best arm's mean cost, times a horizon (the job's age in runs, at least
``HORIZON_MIN``: the number of future recurrences is unknown), must exceed the excess cost the
trial run is expected to have. A trial that passes the gate is run at once, before any tried batch
size, rather than whenever its Thompson draw happens to win: the gate has already judged it worth
its cost, and putting it off only puts off what it may save while the runs in between go to arms
it may beat (with plain Thompson sampling an untried neighbour as likely as not cheaper than the
best arm won only some of the draws, and the walk from the default batch size to the best one
spent runs on arms already known to be dearer). When several trials pass the gate, the Thompson
draw picks which, so no direction is favoured. The gate alone decides how much is explored, hence
its short minimum horizon.

A trial run is stopped once it costs ``EXPLORE_BOUND`` times the best arm's mean (see
:meth:`PowerBanditPolicy.cost_bound`). A stop derived from the trial's predicted cost instead (stop
once its chance of reaching the target in the next epochs no longer pays for restarting on the best
arm) lost to this fixed bound in the simulations: most trials that cross the best mean still
finish below the bound, and finishing them costs less than starting over. When nothing looks
usable the policy still answers, with ``phase="fallback"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from optimizer_server.policy.base import (
    ArmSummary,
    Decision,
    JobSpec,
    Observation,
    SuggestContext,
    best_recurrence,
    budget_power_limit,
    choose_power_limit,
    epoch_cost,
    fold_recurrence,
    new_recurrence_state,
)

# One set of hyperparameters for every job (never tuned per workload).
NOISE_SHAPE = 2.0  # Gamma prior shape of the log-epochs precision
NOISE_SD = 0.15  # prior guess of the sd of log epochs-to-target between seeds
TREND_SD = 0.35  # prior sd of log epochs between batch sizes one doubling apart
TREND_PRIOR_N = 0.5  # weight (in neighbour pairs) of that prior against the observed differences
EC_SLOPE_PRIOR = 0.0  # d log(epoch cost) / d log2(b) assumed from one profiled batch size
EC_SLOPE_MAX = 1.2  # extrapolated slopes of log epoch cost are clamped to +-this per doubling
EPOCH_SLOPE_MAX = 1.5  # same for log epochs-to-target
EPOCH_SLOPE_SD = 0.3  # prior sd of that slope: a slope from noisy neighbours is shrunk towards 0
EC_DOWN_SLOPE = -math.log(2.0)  # steepest plausible log epoch cost per doubling: at most 2x per halving
EC_DOWN_WEIGHT = 0.4  # below the profiled range the slope moves this far towards EC_DOWN_SLOPE
EC_FLAT_SLOPE = 0.05  # a slope of log epoch cost flatter than this (per doubling) is not steepened
EC_SD = 0.1  # sd of the extrapolated log epoch cost per doubling of distance
UTIL_SATURATED = 0.5  # a GPU drawing this share of its highest power limit or more counts as busy
EC_STARVED_SLOPE = -math.log(2.0)  # log epoch cost per doubling of a starved GPU (half the steps)
CENSOR_FACTOR = 1.2  # a failed run of e epochs counts as one that needed CENSOR_FACTOR * e
EXPLORE_BOUND = 1.7  # an untried batch size is stopped at this multiple of the best mean cost
TS_SCALE = 0.5  # scale of the posterior sd of tried batch sizes in a Thompson draw
EXPLORE_SCALE = 1.0  # same for untried ones
BRIDGE_FAILED = False  # untried neighbours of a once-failed batch size are candidates too
FAIL_LIMIT = 2  # this many failures without any success take a batch size out
USE_PRIOR = True  # use the cluster prior when the context has one
PRIOR_WEIGHT = 1.0  # how much of the cluster prior's slopes to believe
UTIL_SLOPES = True  # extrapolate epoch costs from one profile with the slope its power draw suggests
NEIGHBOUR_REACH = 1  # untried batch sizes up to this many steps beyond a successful one are candidates
HORIZON_MIN = 20.0  # an exploration is weighed against at least this many future runs
HORIZON_FRACTION = 1.0  # ... or this fraction of the runs observed so far (the job's age)
_Z90 = 1.6448536269514722


def _norm_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _worth_exploring(log_mean: float, log_var: float, best: float, horizon: float) -> bool:
    """Whether trying an arm whose cost is ``lognormal(log_mean, log_var)`` pays off against the
    best arm's mean cost ``best`` over ``horizon`` future runs: the expected saving per run if it
    is cheaper, times the horizon, against the expected excess cost of the one trial run."""
    if not 0.0 < best < math.inf:
        return False  # nothing measured can be beaten (or compared with)
    s = math.sqrt(max(log_var, 1e-12))
    d = (math.log(best) - log_mean) / s
    mean = _exp(log_mean + 0.5 * log_var)
    gain = best * _norm_cdf(d) - mean * _norm_cdf(d - s)
    loss = mean * _norm_cdf(s - d) - best * _norm_cdf(-d)
    return horizon * max(gain, 0.0) > max(loss, 0.0)


STATE_VERSION = 3
"""Version 3 keeps one flat list of running sums per batch size (bounded, and cheap to encode,
which the server does after every run); version 2 kept the same sums as nested objects; version 1
kept every sample."""

# Positions in an arm's list: [n, sum, sum of squares, max] of the log epochs of runs that reached
# the target (_OK) and of runs that did not (_FAIL), [n, sum] of the costs of runs that reached the
# target (_COST, only their mean is used), and the number of runs that never ran (_NEVER_RAN).
_OK, _FAIL, _COST, _NEVER_RAN = 0, 4, 8, 10
_SERIES = {"ok": _OK, "fail": _FAIL, "cost": _COST}


def _new_arm() -> list[Any]:
    """The running sums of a batch size with nothing observed."""
    return [0, 0.0, 0.0, None, 0, 0.0, 0.0, None, 0, 0.0, 0]


def _new_tails() -> list[list[float]]:
    """The last ``window`` values of the ok, fail and cost series of one batch size."""
    return [[], [], []]


def _push(arm: list[Any], tails: list[list[float]] | None, at: int, value: float, window: int) -> None:
    """Add ``value`` to the series at ``at``: running sums always, the last ``window`` values in
    ``tails`` when ``window > 0``."""
    arm[at] += 1
    arm[at + 1] += value
    if at != _COST:
        arm[at + 2] += value * value
        top = arm[at + 3]
        arm[at + 3] = value if top is None else max(top, value)
    if window > 0 and tails is not None:
        i = at // 4
        tail = tails[i]
        tails[i] = [*tail[-(window - 1) :], value] if window > 1 else [value]


def _stats(
    arm: list[Any], tails: list[list[float]] | None, at: int, window: int
) -> tuple[int, float, float, float]:
    """``(n, sum, sum of squares, max)`` of the series at ``at``: of its last ``window`` values
    when ``window > 0``.

    The state is saved after every run, so it keeps sums rather than every sample: its size does
    not grow with the job's history.
    """
    if window > 0:
        tail = tails[at // 4] if tails is not None else []
        if not tail:
            return 0, 0.0, 0.0, -math.inf
        return len(tail), math.fsum(tail), math.fsum(x * x for x in tail), max(tail)
    if at == _COST:
        return int(arm[at]), float(arm[at + 1]), 0.0, -math.inf
    top = arm[at + 3]
    return int(arm[at]), float(arm[at + 1]), float(arm[at + 2]), -math.inf if top is None else top


_LOG_CENSOR = math.log(CENSOR_FACTOR)


def _upgrade(spec: JobSpec, state: dict[str, Any]) -> dict[str, Any]:
    """Convert a version-1 state (every sample kept) or a version-2 one (nested sums) in place to
    the current version."""
    version = state.get("version", 1)
    if version >= STATE_VERSION:
        return state
    arms: dict[str, list[Any]] = {}
    all_tails: dict[str, list[list[float]]] = {}
    for key, old in state["arms"].items():
        arm = _new_arm()
        tails = _new_tails()
        if version == 1:
            for value in old.get("log_epochs", []):
                _push(arm, tails, _OK, float(value), spec.window)
            for epochs in old.get("fail_epochs", []):
                _push(arm, tails, _FAIL, math.log(max(float(epochs), MIN_EPOCHS)), spec.window)
            for cost in old.get("ok_costs", []):
                _push(arm, tails, _COST, float(cost), spec.window)
        else:
            for name, at in _SERIES.items():
                series = old[name]
                arm[at], arm[at + 1] = int(series["n"]), float(series["sum"])
                if at != _COST:
                    arm[at + 2], arm[at + 3] = float(series.get("sumsq", 0.0)), series.get("max")
                if "tail" in series:
                    tails[at // 4] = [float(x) for x in series["tail"]]
        arm[_NEVER_RAN] = int(old.get("never_ran", 0))
        arms[key] = arm
        if any(tails):
            all_tails[key] = tails
    state["arms"] = arms
    if all_tails:
        state["tails"] = all_tails
    state["version"] = STATE_VERSION
    return state


def _extrapolate(
    points: Mapping[float, float],
    x: float,
    slope_range: tuple[float, float],
    default_slope: float,
    shrink: float = 0.0,
) -> tuple[float, float]:
    """Value at ``x`` from known ``points`` (x -> y): linear between the nearest known neighbours,
    linear extrapolation (slope clamped to ``slope_range``) from the two nearest on one side.

    Returns ``(y, distance to the nearest known x)``.
    """
    left = sorted((px for px in points if px < x), reverse=True)
    right = sorted(px for px in points if px > x)
    if x in points:
        return points[x], 0.0
    if left and right:
        x0, x1 = left[0], right[0]
        t = (x - x0) / (x1 - x0)
        return points[x0] + t * (points[x1] - points[x0]), min(x - x0, x1 - x)
    side = left or right
    x0 = side[0]
    slope = default_slope
    if len(side) > 1:
        x1 = side[1]
        dx2 = (x0 - x1) ** 2
        # a slope between two noisy points close together is mostly noise: shrink it to the default
        weight = dx2 / (dx2 + shrink) if shrink > 0 else 1.0
        slope = default_slope + weight * ((points[x0] - points[x1]) / (x0 - x1) - default_slope)
    slope = min(max(slope, slope_range[0]), slope_range[1])
    return points[x0] + slope * (x - x0), abs(x - x0)


def _extrapolate_ec(
    points: Mapping[float, float], x: float, single_slopes: Mapping[float, float] | None = None
) -> tuple[float, float]:
    """Log epoch cost at ``x = log2(b)`` from the profiled ``points`` (``log2(b) -> log cost``).

    Inside the profiled range: linear interpolation. Outside it, linear extrapolation from the two
    nearest points, except that the curve is convex (an epoch's cost rises ever faster as the
    batch size shrinks and the GPU empties, but never more than ``2x`` per halving): going down,
    a slope that already rises is steepened towards ``EC_DOWN_SLOPE``.
    Returns ``(log cost, distance to the nearest profiled x)``.
    """
    if x in points:
        return points[x], 0.0
    left = sorted((px for px in points if px < x), reverse=True)
    right = sorted(px for px in points if px > x)
    if left and right:
        return _extrapolate(points, x, (-EC_SLOPE_MAX, EC_SLOPE_MAX), EC_SLOPE_PRIOR)
    down = bool(right)
    side = right if down else left
    x0 = side[0]
    if len(side) > 1:
        local = (points[x0] - points[side[1]]) / (x0 - side[1])
        if down:
            # only a curve that already rises towards small batch sizes is steepened: a flat one
            # (the GPU saturated even there) stays flat
            weight = EC_DOWN_WEIGHT * min(1.0, max(0.0, -local) / EC_FLAT_SLOPE)
            slope = local + weight * (EC_DOWN_SLOPE - local)
        else:
            slope = local
    else:
        slope = (single_slopes or {}).get(x0, EC_SLOPE_PRIOR)
    slope = min(max(slope, -EC_SLOPE_MAX), EC_SLOPE_MAX)
    return points[x0] + slope * (x - x0), abs(x - x0)


def _prior_slopes(context: SuggestContext) -> tuple[float, float]:
    """Log epochs per doubling below and above the tried batch sizes: the cluster prior's, else 0."""
    prior = context.prior
    if prior is None or not USE_PRIOR:
        return (0.0, 0.0)
    return (PRIOR_WEIGHT * prior.epochs_slope_down, PRIOR_WEIGHT * prior.epochs_slope_up)


def _utilisation_slopes(context: SuggestContext) -> dict[float, float]:
    """Per profiled batch size (``log2(b)``): the slope of log epoch cost per doubling its profile
    suggests. A GPU that draws little of its power at the highest limit is starved (each step costs
    about the same whatever the batch): doubling the batch nearly halves an epoch. One near its limit
    is saturated: an epoch costs about the same at any batch size."""
    out: dict[float, float] = {}
    if context.max_power_w <= 0:
        return out
    for b, profile in context.profiles.items():
        if not profile or int(b) <= 0:
            continue
        top = profile[max(profile)]
        util = top.average_power_w / context.max_power_w
        starved = min(max(1.0 - util / UTIL_SATURATED, 0.0), 1.0)
        out[math.log2(int(b))] = EC_STARVED_SLOPE * starved
    return out


def _observed(data: Mapping[int, Mapping[str, Any]]) -> list[tuple[int, float, int, float]]:
    """``(batch size, log2 of it, n, mean)`` of the batch sizes with data, in ``data``'s order."""
    return [(c, math.log2(c), d["n"], d["mean"]) for c, d in data.items() if d["n"]]


def _posterior(
    observed: list[tuple[int, float, int, float]],
    own: Mapping[str, Any],
    b: int,
    noise_var: float,
    trend_var: float,
    slopes: tuple[float, float] = (0.0, 0.0),
) -> tuple[float, float]:
    """Mean and variance of ``mu_b``: neighbours' estimates as the prior, own data (``own``, the
    arm's entry of ``_arm_data``) as likelihood. ``observed`` is :func:`_observed` of the arms.
    ``slopes`` (below, above the observed range) extrapolate log epochs of an untried batch size
    from one neighbour: 0 without a cluster prior."""
    x = math.log2(b)
    prec0 = 0.0
    mean0 = 0.0
    for c, log2_c, n_c, mean_c in observed:
        if c == b:
            continue
        var = noise_var / n_c + trend_var * (x - log2_c) ** 2
        prec0 += 1.0 / var
        mean0 += mean_c / var
    n = own["n"]
    if n == 0 and prec0 > 0.0:
        points = {log2_c: mean_c for _, log2_c, _, mean_c in observed}
        shrink = 2.0 * noise_var / EPOCH_SLOPE_SD**2
        default_slope = slopes[0] if x < min(points) else slopes[1] if x > max(points) else 0.0
        y, dist = _extrapolate(points, x, (-EPOCH_SLOPE_MAX, EPOCH_SLOPE_MAX), default_slope, shrink)
        return y, noise_var + trend_var * dist**2
    if prec0 == 0.0:
        if n == 0:
            return math.nan, math.inf
        return own["mean"], noise_var / n
    prec = prec0 + n / noise_var
    mean = (mean0 + (n * own["mean"] / noise_var if n else 0.0)) / prec
    return mean, 1.0 / prec


class PowerBanditPolicy:
    """Structured Thompson sampling over batch sizes (see the module docstring)."""

    name = "powerbandit"

    # ---------------------------------------------------------------- state
    def new_state(self, spec: JobSpec) -> dict[str, Any]:
        """Nothing observed: every batch size unexplored."""
        return {
            "version": STATE_VERSION,
            "arms": {
                str(int(b)): _new_arm() for b in sorted(spec.batch_sizes)
            },
            "epoch_cost": {},  # gpu model -> str(b) -> cost of one epoch at the chosen power limit
            "observations": 0,
            **new_recurrence_state(),
        }

    def observe(self, spec: JobSpec, state: dict[str, Any], observation: Observation) -> dict[str, Any]:
        """Fold one finished run in: its epochs (exact or censored), epoch cost and recurrence."""
        state = _upgrade(spec, state)
        arms = state["arms"]
        key = str(int(observation.batch_size))
        arm = arms.setdefault(key, _new_arm())
        window = spec.window
        epochs = float(observation.epochs)
        pushes = observation.reached_target or epochs > 0
        tails = state.setdefault("tails", {}).setdefault(key, _new_tails()) if window > 0 and pushes else None
        if observation.reached_target:
            _push(arm, tails, _OK, math.log(max(epochs, MIN_EPOCHS)), window)
            _push(arm, tails, _COST, float(observation.cost), window)
        elif epochs > 0:
            _push(arm, tails, _FAIL, math.log(max(epochs, MIN_EPOCHS)), window)
        else:
            arm[_NEVER_RAN] += 1
        ec = observation.epoch_cost
        if ec is None and epochs > 0 and observation.cost > 0:
            ec = observation.cost / epochs
        if ec is not None and math.isfinite(ec) and ec > 0:
            state["epoch_cost"].setdefault(observation.gpu_model, {})[key] = float(ec)
        state["observations"] += 1
        fold_recurrence(state, observation)
        return state

    def cost_bound(
        self, spec: JobSpec, state: Mapping[str, Any], batch_size: int | None = None, gpu_model: str | None = None
    ) -> float:
        """Largest cost a run may spend before it is told to stop.

        ``beta`` times the cheapest finished recurrence (``inf`` before the first). When the run's
        ``batch_size`` is given and it has never reached the target, the run is an exploration: it
        is stopped sooner, at ``EXPLORE_BOUND`` times the best arm's mean cost, since by then it
        is already known to be worse than what we have. With ``gpu_model``, only costs measured on
        that GPU model are compared (the cost's scale differs between models).
        """
        best = best_recurrence(state, gpu_model)
        bound = math.inf if best is None else spec.beta * float(best)
        if batch_size is None:
            return bound
        state = _upgrade(spec, state)  # type: ignore[arg-type]
        key = str(int(batch_size))
        arm = state["arms"].get(key)
        tails = state.get("tails", {})
        if arm and _stats(arm, tails.get(key), _COST, spec.window)[0]:
            return bound
        seen_models = set(state.get("min_recurrence_cost_by_gpu", {})) | set(state.get("epoch_cost", {}))
        if gpu_model is not None and seen_models - {gpu_model}:
            # several GPU models: mean costs of other models are on another scale; use this one's
            # cheapest recurrence only
            return bound if best is None else min(bound, EXPLORE_BOUND * float(best))
        means = [
            total / n
            for n, total, _, _ in (
                _stats(a, tails.get(k), _COST, spec.window) for k, a in state["arms"].items()
            )
            if n
        ]
        if means:
            bound = min(bound, EXPLORE_BOUND * min(means))
        return bound

    # ---------------------------------------------------------------- model
    def _arm_data(self, spec: JobSpec, state: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
        """Per batch size: counts, mean, sum of squared deviations and maximum of the log epochs
        (failed runs enter as censored pseudo-observations)."""
        state = _upgrade(spec, state)  # type: ignore[arg-type]
        arms = state["arms"]
        window = spec.window
        data = {}
        lc = _LOG_CENSOR
        all_tails = state.get("tails", {}) if window > 0 else {}
        for b in sorted(map(int, spec.batch_sizes)):
            key = str(b)
            arm = arms.get(key) or _new_arm()
            if window > 0:
                tails = all_tails.get(key)
                n_ok, s_ok, q_ok, max_ok = _stats(arm, tails, _OK, window)
                n_f, s_f, q_f, max_f = _stats(arm, tails, _FAIL, window)
            else:  # _stats of the running sums, inlined: this runs for every arm of every suggestion
                n_ok, s_ok, q_ok, max_ok, n_f, s_f, q_f, max_f = arm[:8]
                if max_ok is None:
                    max_ok = -math.inf
                if max_f is None:
                    max_f = -math.inf
            # failed runs enter as pseudo-observations log(epochs) + log(CENSOR_FACTOR)
            n = n_ok + n_f
            if n:
                total = s_ok + s_f + n_f * lc
                mean = total / n
                sumsq = q_ok + q_f + 2.0 * lc * s_f + n_f * lc * lc
                ss = max(sumsq - n * mean * mean, 0.0)  # sum of squared deviations
            else:
                mean, ss = math.nan, 0.0
            data[b] = {
                "ok": n_ok,
                "fails": n_f,
                "never_ran": int(arm[_NEVER_RAN]),
                "n": n,
                "mean": mean,
                "ss": ss,
                "max": max(max_ok, max_f + lc),
            }
        return data

    @staticmethod
    def _noise(data: Mapping[int, Mapping[str, Any]]) -> tuple[float, float]:
        """Posterior Gamma ``(shape, rate)`` of the shared log-epochs precision."""
        shape = NOISE_SHAPE
        rate = NOISE_SHAPE * NOISE_SD**2
        for d in data.values():
            if d["n"] > 1:
                shape += 0.5 * (d["n"] - 1)
                rate += 0.5 * d["ss"]
        return shape, rate

    @staticmethod
    def _trend_var(data: Mapping[int, Mapping[str, Any]], noise_var: float) -> float:
        """Variance of log epochs per doubling of the batch size: the prior, updated with the
        differences between neighbouring tried batch sizes (less their noise), so a job whose
        batch sizes all need about the same epochs soon stops expecting big jumps."""
        tried = [(math.log2(b), d) for b, d in sorted(data.items()) if d["ok"]]
        total = TREND_PRIOR_N * TREND_SD**2
        count = TREND_PRIOR_N
        for (x0, d0), (x1, d1) in zip(tried, tried[1:], strict=False):
            dx = x1 - x0
            noise = noise_var * (1.0 / d0["n"] + 1.0 / d1["n"])
            total += max((d1["mean"] - d0["mean"]) ** 2 - noise, 0.0) / dx**2
            count += 1.0
        return total / count

    def _epoch_costs(
        self, spec: JobSpec, state: Mapping[str, Any], context: SuggestContext
    ) -> dict[int, float]:
        """Known epoch cost per batch size on this GPU (profile first, then reported runs)."""
        known: dict[int, float] = {}
        if context.profiles:
            eta, mp = spec.eta, context.max_power_w
            batch_sizes = spec.batch_sizes
            for b, profile in context.profiles.items():
                if profile and int(b) in batch_sizes:
                    best = math.inf
                    for pt in profile.values():
                        cost = (eta * pt.average_power_w + (1.0 - eta) * mp) * pt.time_per_epoch_s
                        if cost < best:
                            best = cost
                    if 0.0 < best < math.inf:  # an unusable profile (a 0 W reading) is skipped
                        known[int(b)] = best
        for key, ec in state["epoch_cost"].get(context.gpu_model, {}).items():
            if 0.0 < float(ec) < math.inf:
                known.setdefault(int(key), float(ec))
        return known

    def _candidates(
        self, spec: JobSpec, data: Mapping[int, Mapping[str, Any]], context: SuggestContext
    ) -> list[int]:
        """Tried batch sizes that are not ruled out, plus untried neighbours of successful ones."""
        arms = sorted(data)
        out: set[int] = set()
        for i, b in enumerate(arms):
            d = data[b]
            if d["never_ran"] and d["ok"] == 0:
                continue
            if d["ok"] == 0 and d["fails"] >= FAIL_LIMIT:
                continue
            if d["ok"] or d["fails"]:
                out.add(b)
            if d["ok"] or (BRIDGE_FAILED and d["fails"]):
                # an arm stopped once by the exploration bound may just have drawn a slow seed:
                # its neighbours stay reachable (a second failure takes it out, see above)
                for step in (-1, 1):
                    for hop in range(1, int(NEIGHBOUR_REACH) + 1):
                        j = i + step * hop
                        if not 0 <= j < len(arms):
                            break
                        nb = data[arms[j]]
                        if nb["ok"] or nb["fails"] or nb["never_ran"]:
                            break
                        out.add(arms[j])
        return sorted(out)

    # -------------------------------------------------------------- suggest
    def suggest(
        self, spec: JobSpec, state: Mapping[str, Any], context: SuggestContext, rng: np.random.Generator
    ) -> Decision:
        """Thompson sample of every candidate's cost; the cheapest wins."""
        data = self._arm_data(spec, state)
        if not any(d["ok"] or d["fails"] or d["never_ran"] for d in data.values()):
            b = int(spec.default_batch_size)
            return self._decision(spec, context, b, "explore", f"first run: the default batch size {b}")
        candidates = self._candidates(spec, data, context)
        in_flight = {int(b) for b in context.in_flight}
        untried_busy = {b for b in candidates if b in in_flight and not (data[b]["ok"] or data[b]["fails"])}
        if untried_busy and len(untried_busy) < len(candidates):
            candidates = [b for b in candidates if b not in untried_busy]
        if not candidates:
            return self._fallback(spec, data, context)

        shape, rate = self._noise(data)
        noise_var = rate / float(rng.gamma(shape, 1.0)) if shape > 0 else NOISE_SD**2
        known = self._epoch_costs(spec, state, context)
        trend_var = self._trend_var(data, noise_var)
        slopes = _prior_slopes(context)
        observed = _observed(data)
        limits: dict[int, float] = {}
        default = data.get(int(spec.default_batch_size), {})
        # a default that never reaches the target has no expected time to compare with: no budget then
        budget = spec.max_slowdown > 0 and not (default.get("ok") == 0 and default.get("fails", 0) >= FAIL_LIMIT)
        if budget:
            limits, fitting = self._budget(spec, data, context, observed, noise_var, trend_var)
            for b, p in limits.items():
                known[b] = epoch_cost(spec.eta, context.profiles[b][p], context.max_power_w)
            candidates = [b for b in candidates if b in fitting] or [int(spec.default_batch_size)]
        ec_points = {math.log2(c): math.log(v) for c, v in known.items()}
        single_slopes = _utilisation_slopes(context) if UTIL_SLOPES else None
        costs: dict[int, float] = {}
        draws = rng.standard_normal(2 * len(candidates)).tolist()
        moments: dict[int, tuple[float, float]] = {}
        for i, b in enumerate(candidates):
            own = data[b]
            mean, var = _posterior(observed, own, b, noise_var, trend_var, slopes)
            if not math.isfinite(mean):
                mean, var = math.log(max(spec.max_epochs, 1) / 2.0), 1.0
            scale = TS_SCALE if own["ok"] else EXPLORE_SCALE
            mu = mean + scale * math.sqrt(var) * draws[2 * i]
            ec_var = 0.0
            if b in known:
                log_ec = ec_mean = math.log(known[b])
            elif known:
                ec_mean, dist = _extrapolate_ec(ec_points, math.log2(b), single_slopes)
                ec_var = (EC_SD * dist) ** 2
                log_ec = ec_mean + EXPLORE_SCALE * EC_SD * dist * draws[2 * i + 1]
            else:
                log_ec = ec_mean = 0.0
            costs[b] = mu + 0.5 * noise_var + log_ec
            moments[b] = (mean + 0.5 * noise_var + ec_mean, var + ec_var)
        # an untried batch size is only worth a run when what it may save over the remaining runs
        # (unknown: the job's age is the proxy) outweighs what the trial run is expected to waste
        tried_ok = [b for b in candidates if data[b]["ok"] and b in known]
        if tried_ok:
            best_mean = min(_exp(moments[b][0] + 0.5 * moments[b][1]) for b in tried_ok)
            horizon = max(HORIZON_MIN, HORIZON_FRACTION * float(state["observations"]))
            keep = [
                b
                for b in candidates
                if data[b]["ok"] or data[b]["fails"] or _worth_exploring(*moments[b], best_mean, horizon)
            ]
            if keep:
                candidates = keep
            # a trial that passed the gate is run now rather than whenever its Thompson draw
            # happens to win: what it may save starts sooner, and the runs spent meanwhile on
            # arms it might beat are saved (several such trials: the Thompson draw picks one)
            untried = [b for b in keep if not (data[b]["ok"] or data[b]["fails"])]
            if untried:
                candidates = untried
        best = min(candidates, key=lambda b: (costs[b], b))
        tried = data[best]["ok"] or data[best]["fails"]
        phase = "exploit" if tried else "explore"
        explanation = (
            f"Thompson sample over {len(candidates)} batch sizes: {best} has the lowest sampled cost"
            if tried
            else f"exploring batch size {best}, a neighbour of one that reached the target"
        )
        if budget:
            explanation += f" within the slowdown budget {spec.max_slowdown:g}x"
        return self._decision(spec, context, best, phase, explanation, limits.get(best))

    def power_limit(
        self, spec: JobSpec, state: Mapping[str, Any], context: SuggestContext, batch_size: int
    ) -> float | None:
        """The power limit a run of ``batch_size`` gets on this GPU (``None``: it profiles first).

        What :meth:`suggest` applies, at the posterior mean noise instead of a draw: with a
        slowdown budget, the cheapest limit expected to fit the whole run's budget.
        """
        data = self._arm_data(spec, state)
        default = data.get(int(spec.default_batch_size), {})
        budget = spec.max_slowdown > 0 and not (default.get("ok") == 0 and default.get("fails", 0) >= FAIL_LIMIT)
        if budget and context.profiles.get(batch_size) and int(batch_size) in data:
            shape, rate = self._noise(data)
            noise_var = rate / shape if shape > 0 else NOISE_SD**2
            limits, _ = self._budget(
                spec, data, context, _observed(data), noise_var, self._trend_var(data, noise_var)
            )
            if int(batch_size) in limits:
                return limits[int(batch_size)]
        return choose_power_limit(spec, context, batch_size)[0]

    def _budget(
        self,
        spec: JobSpec,
        data: Mapping[int, Mapping[str, Any]],
        context: SuggestContext,
        observed: list[tuple[int, float, int, float]],
        noise_var: float,
        trend_var: float,
    ) -> tuple[dict[int, float], set[int]]:
        """The slowdown budget on this GPU: the power limit of each profiled batch size expected to fit
        it, and the batch sizes expected to fit it at all.

        A run of ``(b, p)`` is expected to take ``epochs(b) / epochs(b0) * time_per_epoch(b, p)`` over
        ``time_per_epoch(b0, p_max)`` times the default's time, with the posterior mean epochs ratio.
        An unprofiled batch size fits when its extrapolated epoch time at the highest limit does. The
        default batch size always fits (at the highest limit); before its profile nothing else is
        judged, so only it fits.
        """
        b0 = int(spec.default_batch_size)
        profiles = {int(b): pr for b, pr in context.profiles.items() if pr and int(b) in data}
        if b0 not in profiles:
            return {}, {b0}
        budget = spec.max_slowdown
        ref = profiles[b0][max(profiles[b0])].time_per_epoch_s
        def log_epochs(b: int) -> float:
            # a batch size's own runs, when it has some: the posterior leans on the neighbours, which
            # is optimistic for a budget (a batch size that needed 3x the epochs must not look fine)
            if data[b]["n"]:
                return float(data[b]["mean"])
            return _posterior(observed, data[b], b, noise_var, trend_var, _prior_slopes(context))[0]

        mean0 = log_epochs(b0)
        t_points = {
            math.log2(b): math.log(pr[max(pr)].time_per_epoch_s)
            for b, pr in profiles.items()
            if pr[max(pr)].time_per_epoch_s > 0
        }
        limits: dict[int, float] = {}
        fitting: set[int] = set()
        for b in data:
            mean_b = log_epochs(b)
            ratio = _exp(mean_b - mean0) if b != b0 and math.isfinite(mean_b) and math.isfinite(mean0) else 1.0
            if b in profiles:
                pr = profiles[b]
                scaled = ratio * pr[max(pr)].time_per_epoch_s / ref
                p = budget_power_limit(spec.eta, pr, context.max_power_w, budget, scaled)
                if b == b0 and p is None:
                    p = max(pr)
                if p is not None:
                    limits[b] = p
                    fitting.add(b)
            elif t_points:
                log_t, _ = _extrapolate(t_points, math.log2(b), (-EC_SLOPE_MAX, EC_SLOPE_MAX), 0.0)
                if ratio * _exp(log_t) <= budget * ref:
                    fitting.add(b)
        return limits, fitting

    def _fallback(
        self, spec: JobSpec, data: Mapping[int, Mapping[str, Any]], context: SuggestContext
    ) -> Decision:
        """Every batch size looks bad: pick the most promising anyway and say so."""

        def score(b: int) -> tuple[float, ...]:
            d = data[b]
            furthest = _exp(d["max"]) if d["n"] else 0.0
            return (-d["ok"], d["never_ran"], d["fails"], -furthest, abs(b - spec.default_batch_size))

        b = min(data, key=score)
        return self._decision(
            spec,
            context,
            b,
            "fallback",
            f"every batch size failed to reach the target so far; retrying {b}, the most promising",
        )

    @staticmethod
    def _decision(
        spec: JobSpec,
        context: SuggestContext,
        b: int,
        phase: str,
        explanation: str,
        power_limit_w: float | None = None,
    ) -> Decision:
        if power_limit_w is not None:
            return Decision(b, power_limit_w, (), phase, explanation)
        power_limit, profile = choose_power_limit(spec, context, b)
        if power_limit is None:
            explanation += "; profiling power limits during the first epoch"
        return Decision(b, power_limit, profile, phase, explanation)

    # -------------------------------------------------------------- summary
    def summarize(self, spec: JobSpec, state: Mapping[str, Any]) -> list[ArmSummary]:
        """Per batch size: epochs-to-target posterior, and a run's cost where an epoch cost is known."""
        data = self._arm_data(spec, state)
        shape, rate = self._noise(data)
        noise_var = rate / shape
        ec_any: dict[int, float] = {}
        for per_gpu in state["epoch_cost"].values():
            for key, ec in per_gpu.items():
                if 0.0 < float(ec) < math.inf:
                    ec_any.setdefault(int(key), float(ec))
        observed = _observed(data)
        trend_var = self._trend_var(data, noise_var)
        out = []
        for b in sorted(data):
            d = data[b]
            tried = d["ok"] + d["fails"] + d["never_ran"]
            if not tried:
                status = "unexplored"
            elif d["ok"] == 0 and (d["fails"] >= FAIL_LIMIT or d["never_ran"]):
                status = "pruned"
            else:
                status = "active"
            mean, var = _posterior(observed, d, b, noise_var, trend_var)
            epochs = _exp(mean + 0.5 * noise_var) if math.isfinite(mean) else math.nan
            if b in ec_any and math.isfinite(mean):
                sd = math.sqrt(var)
                cost_mean = epochs * ec_any[b]
                low = _exp(mean - _Z90 * sd + 0.5 * noise_var) * ec_any[b]
                high = _exp(mean + _Z90 * sd + 0.5 * noise_var) * ec_any[b]
            else:
                cost_mean = low = high = math.nan
            out.append(ArmSummary(b, status, tried, d["ok"], cost_mean, low, high, epochs))
        return out


MIN_EPOCHS = 1e-3
"""Epoch counts are floored here before taking logs (a report of 1e-200 epochs must not dominate)."""


def _exp(x: float) -> float:
    """``math.exp`` that saturates instead of overflowing (adversarial reports must not crash)."""
    return math.exp(min(x, 700.0))
