"""The hyperparameters of ``powerbandit``: one frozen record, the same for every job.

They are never tuned per workload. :class:`~optimizer_server.policy.powerbandit.PowerBanditPolicy`
takes a :class:`Hyperparameters` in its constructor (the defaults below when none is given), so an
experiment changes one field of one policy object instead of a module constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Hyperparameters:
    """Every constant of the ``powerbandit`` model and policy (see the package docstring).

    Slopes are per doubling of the batch size (per unit of ``log2(b)``), on the log scale of the
    quantity they describe; standard deviations are on the log scale too.
    """

    noise_shape: float = 2.0
    """Gamma prior shape of the log-epochs precision."""
    noise_sd: float = 0.15
    """Prior guess of the sd of log epochs-to-target between seeds."""
    trend_sd: float = 0.35
    """Prior sd of log epochs between batch sizes one doubling apart."""
    trend_prior_n: float = 0.5
    """Weight (in neighbour pairs) of that prior against the observed differences."""
    ec_slope_prior: float = 0.0
    """Slope of log epoch cost assumed from one profiled batch size (without a utilisation hint)."""
    ec_slope_max: float = 1.2
    """Extrapolated slopes of log epoch cost (and log epoch time) are clamped to +- this."""
    epoch_slope_max: float = 1.5
    """Extrapolated slopes of log epochs-to-target are clamped to +- this."""
    epoch_slope_sd: float = 0.3
    """Prior sd of that slope: a slope from noisy neighbours is shrunk towards the default slope."""
    ec_down_slope: float = -math.log(2.0)
    """Steepest plausible slope of log epoch cost going down: at most 2x per halving."""
    ec_down_weight: float = 0.4
    """Below the profiled range, an extrapolated slope moves this far towards ``ec_down_slope``."""
    ec_flat_slope: float = 0.05
    """A slope of log epoch cost flatter than this is not steepened below the profiled range."""
    ec_sd: float = 0.1
    """Sd of an extrapolated log epoch cost per doubling of distance from the profiled range."""
    util_saturated: float = 0.5
    """A GPU drawing this share of its highest power limit or more counts as busy (saturated)."""
    ec_starved_slope: float = -math.log(2.0)
    """Slope of log epoch cost of a starved GPU (doubling the batch halves the steps)."""
    censor_factor: float = 1.2
    """A failed run of ``e`` epochs counts as one that needed ``censor_factor * e``."""
    explore_bound: float = 1.7
    """An untried batch size's run is stopped at this multiple of the best arm's mean cost."""
    ts_scale: float = 0.5
    """Scale of the posterior sd of tried batch sizes in a Thompson draw."""
    explore_scale: float = 1.0
    """Scale of the posterior sd of untried batch sizes in a Thompson draw."""
    fail_limit: int = 2
    """This many failures without any success take a batch size out."""
    neighbour_reach: int = 1
    """Untried batch sizes up to this many steps beyond a successful one are candidates (larger
    batch sizes further still while each is expected to cost less than the one before it)."""
    first_step_epochs_slope_up: float = 0.1
    """With one batch size tried, the slope of log epochs-to-target assumed towards larger batch
    sizes (added to the cluster prior's): a larger batch never needs fewer epochs (the critical
    batch size), so where an epoch costs about the same at any batch size (a saturated GPU) the
    smaller neighbour is tried first. Its sign matters, not its size: 0.05 to 0.2 score the same."""
    steps_floor: bool = True
    """A smaller batch never needs fewer optimizer steps to reach the target than a larger one (the
    critical batch size: McCandlish et al., 2018, "An Empirical Model of Large-Batch Training").
    An epoch is ``N / b`` steps, so a batch size ``b`` below a successful ``c`` needs at least
    ``b / c`` times ``c``'s epochs: the cost of a batch size that has not reached the target yet is
    floored there in the exploration gate, as uncertain as ``c``'s posterior mean
    (:func:`~.model.epochs_floor`). On a starved GPU, where
    halving the batch doubles an epoch's cost, a smaller batch can then at best tie, and its trial
    is not worth running."""
    edge_trend_z: float = 2.0
    """A tried batch size beyond every other tried one takes the extrapolated value of the nearest
    two as its prior, instead of the others' levels, when those two differ by more than this many
    times their noise (a trend, not noise: :func:`~.model.posterior`). ``inf``: the levels always."""
    horizon_min_runs: float = 20.0
    """An exploration is weighed against at least this many future runs (else the job's age)."""
    call_off_margin: float = 0.05
    """An exploration whose measured epoch cost rules it out is called off only when it is expected
    to lose more than this share of the best batch size's mean cost beyond what it has already spent
    (a borderline estimate, one noisy run away from the other side, lets the run go on)."""
    profile_tolerance: float = 0.25
    """The first profile of a batch size skips the power limits that cost more than this share above
    the best at the nearest profiled batch sizes (one on each side, within
    ``profile_reach_doublings``; :func:`~optimizer_server.policy.base.limits_worth_profiling`): a
    profile spends equal slices of its epoch on every limit it tries, and the slow low limits cost
    the most. The profile then walks its limits from the highest down and stops after the first that
    costs more than ``1 + profile_tolerance`` times the cheapest before it
    (:func:`~powerbandit.domain.profiles.stops_profiling`): the default's profile too, which has no
    neighbour to narrow it. ``inf`` tries every limit. A job with a slowdown budget is not narrowed
    (its limit is chosen by time, and a limit costly at a neighbour may be the one its budget allows)
    but stops the same way: its cost is energy, and a limit past the stop takes more energy and more
    time than one before it."""
    profile_reach_doublings: float = 1.0
    """A profile says which limits are worth trying for batch sizes up to this many doublings away:
    how the cost moves with the limit shifts as the batch size grows (CIFAR-100 on the A40 at eta
    0.8: 125 W is the best limit at batch size 128, 1.15x the best at 256, 1.31x at 512, 1.51x at
    1024)."""
