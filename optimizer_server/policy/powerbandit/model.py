"""The ``powerbandit`` model: what the state says about epochs-to-target and epoch costs.

- :func:`arm_statistics`: per batch size, the log epochs of its runs (failed runs as censored
  pseudo-observations ``log(censor_factor * epochs)``);
- :func:`noise_posterior` and :func:`trend_var`: the noise between seeds (a Gamma posterior of the
  shared precision) and how far log epochs move per doubling of the batch size;
- :func:`posterior`: the posterior of ``mu_b = E[log epochs_to_target(b)]``, neighbours as prior;
- :func:`extrapolate` and :func:`extrapolate_epoch_cost`: values at batch sizes not yet measured,
  along ``log2(b)`` (epoch costs convex below the profiled range; :func:`utilisation_slopes` sets the
  slope from a single profile);
- :func:`epochs_floor`: the fewest epochs a batch size can need (no fewer steps than a larger
  batch that reached the target);
- :func:`trial_value` and :func:`worth_exploring`: what trying an untried batch size is expected to
  be worth (a trial stopped at its bound wastes all it cost), and the gate built on it.

Pure functions of their arguments; the constants come from :class:`Hyperparameters`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from optimizer_server.policy.base import SuggestContext
from optimizer_server.policy.powerbandit.hyperparameters import Hyperparameters
from optimizer_server.policy.powerbandit.state import EMPTY_ARM, EMPTY_TAILS, PowerBanditState, tail_stats

Z_90 = 1.6448536269514722
"""The standard normal quantile of 0.95: a 90 % interval is the mean +- ``Z_90`` sd."""


@dataclass(slots=True)
class ArmStats:
    """What one batch size's runs say about its log epochs-to-target (see :func:`arm_statistics`).

    Built for one suggestion and only read after (not frozen: a frozen dataclass costs four times
    as much to build, and a named tuple's fields three times as much to read, in the hottest loop).
    """

    ok: int
    """Runs that reached the target."""
    fails: int
    """Runs that stopped before the target (after at least one epoch)."""
    never_ran: int
    """Runs that ended before their first epoch."""
    n: int
    """``ok + fails``: the observations of log epochs, failures censored."""
    mean: float
    """Mean of those observations (NaN without any)."""
    ss: float
    """Their sum of squared deviations from the mean."""
    max_log_epochs: float
    """The largest observation (``-inf`` without any)."""


Observed = list[tuple[int, float, int, float]]
"""``(batch size, log2 of it, n, mean)`` per batch size with observations, ascending (:func:`observed`)."""


def exp_capped(x: float) -> float:
    """``math.exp`` that saturates instead of overflowing (adversarial reports must not crash)."""
    return math.exp(min(x, 700.0))


def _norm_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


_FLOOR_NODES = (
    (-5.387480890011233, 2.2293936455341447e-13),
    (-4.603682449550744, 4.3993409922731747e-10),
    (-3.944764040115625, 1.0860693707692782e-07),
    (-3.3478545673832163, 7.80255647853206e-06),
    (-2.7888060584281305, 0.00022833863601635365),
    (-2.2549740020892757, 0.0032437733422378567),
    (-1.7385377121165861, 0.024810520887463643),
    (-1.234076215395323, 0.1090172060200233),
    (-0.7374737285453944, 0.28667550536283415),
    (-0.24534070830090124, 0.4622436696006101),
    (0.24534070830090124, 0.4622436696006101),
    (0.7374737285453944, 0.28667550536283415),
    (1.234076215395323, 0.1090172060200233),
    (1.7385377121165861, 0.024810520887463643),
    (2.2549740020892757, 0.0032437733422378567),
    (2.7888060584281305, 0.00022833863601635365),
    (3.3478545673832163, 7.80255647853206e-06),
    (3.944764040115625, 1.0860693707692782e-07),
    (4.603682449550744, 4.3993409922731747e-10),
    (5.387480890011233, 2.2293936455341447e-13),
)
"""Nodes and weights of 20-point Gauss-Hermite quadrature (``numpy.polynomial.hermite.hermgauss(20)``,
written out so that every machine sums the same numbers), for the expectation over an uncertain
floor: its value has kinks where the floor crosses the best cost and the stop, and 5 points were
30 % off a Monte Carlo estimate where 20 are within 2 %."""


def trial_value(
    log_mean: float,
    log_var: float,
    best: float,
    horizon: float,
    stop: float = math.inf,
    log_floor: float = -math.inf,
    log_floor_var: float = 0.0,
) -> float:
    """What trying an arm whose cost is ``lognormal(log_mean, log_var)`` is expected to be worth
    against the best arm's mean cost ``best`` over ``horizon`` future runs: the expected saving per
    run if it is cheaper, times the horizon, less the expected excess cost of the one trial run.

    A trial run is stopped once it has cost ``stop`` (its early-stop bound): one that would cost
    more wastes all of ``stop``, since the recurrence then runs again on the best arm. The cost is
    never below a floor (:func:`epochs_floor`), ``exp(log_floor)`` or, with ``log_floor_var``, a
    lognormal floor of that variance (independent of the cost; averaged by quadrature): a draw under
    it counts as the floor, so the saving is capped there. ``-inf`` when nothing measured can be
    beaten (or compared with).
    """
    if not 0.0 < best < math.inf:
        return -math.inf
    if log_floor_var > 0.0 and log_floor > -math.inf:
        # gain and loss are expectations (never negative), so the value's expectation over the
        # floor is the weighted mean of the values at the quadrature nodes
        scale = math.sqrt(2.0 * log_floor_var)
        total = 0.0
        for node, weight in _FLOOR_NODES:
            total += weight * trial_value(log_mean, log_var, best, horizon, stop, log_floor + scale * node)
        return total / math.sqrt(math.pi)
    s = math.sqrt(max(log_var, 1e-12))
    mean = exp_capped(log_mean + 0.5 * log_var)
    d = (math.log(best) - log_mean) / s
    f = (log_floor - log_mean) / s  # -inf without a floor: every term below reduces to the unfloored one
    floor = exp_capped(log_floor) if log_floor > -math.inf else 0.0
    # standard-normal z below f counts as the floor's cost; above it, as its own cost
    if floor < best:
        gain = (best - floor) * _norm_cdf(f) + best * (_norm_cdf(d) - _norm_cdf(f)) - mean * (
            _norm_cdf(d - s) - _norm_cdf(f - s)
        )
    else:
        gain = 0.0
    low = max(d, f)  # the costs above best that are not the floor
    if best < stop < math.inf:
        d_stop = (math.log(stop) - log_mean) / s
        if d_stop > low:
            # a cost between best and stop is the excess of a finished trial; above stop, all is lost
            loss = mean * (_norm_cdf(d_stop - s) - _norm_cdf(low - s)) - best * (_norm_cdf(d_stop) - _norm_cdf(low))
            loss += stop * _norm_cdf(-d_stop)
        else:
            loss = stop * _norm_cdf(-f)
    else:
        loss = mean * _norm_cdf(s - low) - best * _norm_cdf(-low)
    if best < floor:
        loss += (floor - best) * _norm_cdf(f) if floor < stop else stop * _norm_cdf(f)
    return horizon * max(gain, 0.0) - max(loss, 0.0)


def worth_exploring(log_mean: float, log_var: float, best: float, horizon: float, stop: float = math.inf) -> bool:
    """Whether that trial pays off: :func:`trial_value` above 0 (the expected-improvement gate)."""
    return trial_value(log_mean, log_var, best, horizon, stop) > 0.0


def arm_statistics(
    state: PowerBanditState, batch_sizes: tuple[int, ...], window: int, hp: Hyperparameters
) -> dict[int, ArmStats]:
    """Per batch size of the job (ascending): counts, mean, sum of squared deviations and maximum of
    the log epochs, of the last ``window`` runs of each kind when ``window > 0`` (failed runs enter
    as pseudo-observations ``log(epochs) + log(censor_factor)``)."""
    arms = state.arms
    data = {}
    lc = math.log(hp.censor_factor)
    all_tails = state.tails if window > 0 else {}
    for b in sorted(map(int, batch_sizes)):
        n_ok, s_ok, q_ok, max_ok, n_f, s_f, q_f, max_f, _, _, never_ran = arms.get(b, EMPTY_ARM)
        if window > 0:
            tails = all_tails.get(b, EMPTY_TAILS)
            n_ok, s_ok, q_ok, max_ok = tail_stats(tails.ok)
            n_f, s_f, q_f, max_f = tail_stats(tails.fail)
        else:  # the running sums (this runs for every arm of every suggestion)
            if max_ok is None:
                max_ok = -math.inf
            if max_f is None:
                max_f = -math.inf
        n = n_ok + n_f
        if n:
            total = s_ok + s_f + n_f * lc
            mean = total / n
            sumsq = q_ok + q_f + 2.0 * lc * s_f + n_f * lc * lc
            ss = max(sumsq - n * mean * mean, 0.0)  # sum of squared deviations
        else:
            mean, ss = math.nan, 0.0
        data[b] = ArmStats(n_ok, n_f, never_ran, n, mean, ss, max(max_ok, max_f + lc))
    return data


def observed(data: Mapping[int, ArmStats]) -> Observed:
    """``(batch size, log2 of it, n, mean)`` of the batch sizes with data, ascending."""
    return [(c, math.log2(c), d.n, d.mean) for c, d in sorted(data.items()) if d.n]


def noise_posterior(data: Mapping[int, ArmStats], hp: Hyperparameters) -> tuple[float, float]:
    """Posterior Gamma ``(shape, rate)`` of the shared log-epochs precision."""
    shape = hp.noise_shape
    rate = hp.noise_shape * hp.noise_sd**2
    for d in data.values():
        if d.n > 1:
            shape += 0.5 * (d.n - 1)
            rate += 0.5 * d.ss
    return shape, rate


def trend_var(data: Mapping[int, ArmStats], noise_var: float, hp: Hyperparameters) -> float:
    """Variance of log epochs per doubling of the batch size: the prior, updated with the
    differences between neighbouring tried batch sizes (less their noise), so a job whose
    batch sizes all need about the same epochs soon stops expecting big jumps."""
    tried = [(math.log2(b), d) for b, d in sorted(data.items()) if d.ok]
    total = hp.trend_prior_n * hp.trend_sd**2
    count = hp.trend_prior_n
    for (x0, d0), (x1, d1) in zip(tried, tried[1:], strict=False):
        dx = x1 - x0
        noise = noise_var * (1.0 / d0.n + 1.0 / d1.n)
        total += max((d1.mean - d0.mean) ** 2 - noise, 0.0) / dx**2
        count += 1.0
    return total / count


def extrapolate(
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
    left = sorted([px for px in points if px < x], reverse=True)
    right = sorted([px for px in points if px > x])
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


def extrapolate_epoch_cost(
    points: Mapping[float, float],
    x: float,
    hp: Hyperparameters,
    single_slopes: Mapping[float, float] | None = None,
) -> tuple[float, float]:
    """Log epoch cost at ``x = log2(b)`` from the profiled ``points`` (``log2(b) -> log cost``).

    Inside the profiled range: linear interpolation. Outside it, linear extrapolation from the two
    nearest points, except that the curve is convex (an epoch's cost rises ever faster as the
    batch size shrinks and the GPU empties, but never more than ``2x`` per halving): going down,
    a slope that already rises is steepened towards ``hp.ec_down_slope``. From a single point, the
    slope is ``single_slopes[x0]`` (:func:`utilisation_slopes`), else ``hp.ec_slope_prior``.
    Returns ``(log cost, distance to the nearest profiled x)``.
    """
    if x in points:
        return points[x], 0.0
    left = sorted([px for px in points if px < x], reverse=True)
    right = sorted([px for px in points if px > x])
    if left and right:
        return extrapolate(points, x, (-hp.ec_slope_max, hp.ec_slope_max), hp.ec_slope_prior)
    down = bool(right)
    side = right if down else left
    x0 = side[0]
    if len(side) > 1:
        local = (points[x0] - points[side[1]]) / (x0 - side[1])
        if down:
            # only a curve that already rises towards small batch sizes is steepened: a flat one
            # (the GPU saturated even there) stays flat
            weight = hp.ec_down_weight * min(1.0, max(0.0, -local) / hp.ec_flat_slope)
            slope = local + weight * (hp.ec_down_slope - local)
        else:
            slope = local
    else:
        slope = (single_slopes or {}).get(x0, hp.ec_slope_prior)
    slope = min(max(slope, -hp.ec_slope_max), hp.ec_slope_max)
    return points[x0] + slope * (x - x0), abs(x - x0)


def prior_slopes(context: SuggestContext) -> tuple[float, float]:
    """Log epochs per doubling below and above the tried batch sizes: the cluster prior's, else 0."""
    prior = context.prior
    if prior is None:
        return (0.0, 0.0)
    return (prior.epochs_slope_down, prior.epochs_slope_up)


def utilisation_slopes(context: SuggestContext, hp: Hyperparameters) -> dict[float, float]:
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
        starved = min(max(1.0 - util / hp.util_saturated, 0.0), 1.0)
        out[math.log2(int(b))] = hp.ec_starved_slope * starved
    return out


def posterior(
    observed: Observed,
    own: ArmStats,
    b: int,
    noise_var: float,
    trend_var: float,
    hp: Hyperparameters,
    slopes: tuple[float, float] = (0.0, 0.0),
    one_point_slope_up: float = 0.0,
) -> tuple[float, float]:
    """Mean and variance of ``mu_b``: neighbours' estimates as the prior, own data (``own``, the
    arm's :class:`ArmStats`) as likelihood. ``observed`` is :func:`observed` of the arms.
    ``slopes`` (below, above the observed range) extrapolate log epochs of an untried batch size
    from one neighbour: 0 without a cluster prior. ``one_point_slope_up`` is added to the slope
    above while only one batch size has observations (``hp.first_step_epochs_slope_up`` where the
    policy chooses its first exploration)."""
    x = math.log2(b)
    prec0 = 0.0
    mean0 = 0.0
    for c, log2_c, n_c, mean_c in observed:
        if c == b:
            continue
        var = noise_var / n_c + trend_var * (x - log2_c) ** 2
        prec0 += 1.0 / var
        mean0 += mean_c / var
    n = own.n
    if n == 0 and prec0 > 0.0:
        points = {log2_c: mean_c for _, log2_c, _, mean_c in observed}
        y, dist = _epochs_trend(points, x, noise_var, hp, slopes, one_point_slope_up)
        return y, noise_var + trend_var * dist**2
    if prec0 == 0.0:
        if n == 0:
            return math.nan, math.inf
        return own.mean, noise_var / n
    trend_prior = _edge_trend_prior(observed, b, x, noise_var, trend_var, hp, slopes)
    if trend_prior is not None:
        prior_mean, prior_var = trend_prior
        prec = 1.0 / prior_var + n / noise_var
        return (prior_mean / prior_var + n * own.mean / noise_var) / prec, 1.0 / prec
    prec = prec0 + n / noise_var
    mean = (mean0 + (n * own.mean / noise_var if n else 0.0)) / prec
    return mean, 1.0 / prec


def _epochs_trend(
    points: Mapping[float, float],
    x: float,
    noise_var: float,
    hp: Hyperparameters,
    slopes: tuple[float, float],
    one_point_slope_up: float = 0.0,
) -> tuple[float, float]:
    """Log epochs at ``x`` along the trend of the tried batch sizes' means ``points`` (``log2(b)`` ->
    mean), as :func:`extrapolate` gives it: ``(value, distance to the nearest tried x)``. Beyond the
    tried range the slope between two noisy neighbours is shrunk towards ``slopes`` (below, above),
    plus ``one_point_slope_up`` above a single tried batch size (see :func:`posterior`)."""
    shrink = 2.0 * noise_var / hp.epoch_slope_sd**2
    default_slope = slopes[0] if x < min(points) else slopes[1] if x > max(points) else 0.0
    if len(points) == 1 and x > max(points):
        default_slope += one_point_slope_up
    return extrapolate(points, x, (-hp.epoch_slope_max, hp.epoch_slope_max), default_slope, shrink)


def _edge_trend_prior(
    observed: Observed,
    b: int,
    x: float,
    noise_var: float,
    trend_var: float,
    hp: Hyperparameters,
    slopes: tuple[float, float],
) -> tuple[float, float] | None:
    """The prior of a tried batch size ``b`` (at ``x = log2(b)``) beyond every other tried one, where
    the nearest two differ by more than ``hp.edge_trend_z`` times their noise: their extrapolated
    value (the prior an untried batch size gets), as uncertain as the nearest one's mean plus the
    trend over the distance. ``None`` elsewhere (the neighbours' levels are the prior).

    At the edge of the tried range the neighbours' levels all lie on one side of the trend: where
    epochs fall steeply with the batch size (CIFAR-100: 74, 42 and 31 epochs at 1024, 512 and 256),
    they pull the smallest batch size's estimate towards the larger ones', and one unlucky run of it
    keeps the policy on a larger batch size for good. Where the two nearest are within noise of each
    other the trend is not known, and the levels stay the prior (SQuAD, whose runs need 3 to 5
    epochs at every batch size: a weaker prior let one run of 4 stop its walk).
    """
    others = [o for o in observed if o[0] != b]  # ascending
    if len(others) < 2 or not math.isfinite(hp.edge_trend_z):
        return None
    if others[0][1] > x:  # below every other tried batch size
        (_, _, n1, m1), (_, _, n2, m2) = others[0], others[1]
    elif others[-1][1] < x:  # above every other
        (_, _, n1, m1), (_, _, n2, m2) = others[-1], others[-2]
    else:
        return None
    if abs(m1 - m2) <= hp.edge_trend_z * math.sqrt(noise_var / n1 + noise_var / n2):
        return None
    y, dist = _epochs_trend({log2_c: mean_c for _, log2_c, _, mean_c in others}, x, noise_var, hp, slopes)
    return y, noise_var / n1 + trend_var * dist**2


def epochs_floor(
    data: Mapping[int, ArmStats],
    observed: Observed,
    b: int,
    noise_var: float,
    trend_var: float,
    hp: Hyperparameters,
) -> tuple[float, float]:
    """The least ``mu_b`` can be, as ``(mean, variance)``: a smaller batch never needs fewer
    optimizer steps to reach the target (``hp.steps_floor``), so ``b`` needs at least ``b / c``
    times the epochs of ``c``, the nearest larger batch size that reached the target, whose
    ``mu_c`` is known up to its posterior variance (one noisy run of ``c`` must not rule ``b``
    out). ``(-inf, 0)`` without such a ``c``, or with the floor switched off."""
    if not hp.steps_floor:
        return -math.inf, 0.0
    larger = [c for c, d in data.items() if c > b and d.ok]
    if not larger:
        return -math.inf, 0.0
    c = min(larger)
    mean, var = posterior(observed, data[c], c, noise_var, trend_var, hp)
    return mean - math.log(c / b), var
