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
that reached the target, so exploration grows outward from what works instead of sweeping.
Towards larger batch sizes it may jump: beyond the untried neighbour above a successful batch
size, the next larger one is a candidate too as long as the last is expected to cost less than
the one before it. Going up, what a run saves is mostly the epoch cost of a GPU the batch does
not fill, which the profile's power draw tells, so a saving that keeps growing is worth a longer
jump (on the starved GPUs of the traces the walk from the default to the best batch size took
four trials); going down, the saving rests on extrapolated epochs and the walk stays one
neighbour at a time.

An untried candidate must be worth a trial (an expected-improvement gate, :func:`.model.trial_value`):
its expected saving per run over the best arm's mean cost, times a horizon (the job's age in runs,
at least ``horizon_min_runs``: the number of future recurrences is unknown), must exceed the excess
cost the trial run is expected to have. That excess counts a trial stopped at its early-stop bound
(:meth:`PowerBanditPolicy.cost_bound`) as wholly wasted, since the recurrence then runs again on
the best arm. A batch size that has only failed so far faces the same gate before it runs again
(its censored runs make it look dear, so it seldom passes). A trial that passes the gate is run at
once, before any tried batch size, rather than whenever its Thompson draw happens to win: the gate
has already judged it worth its cost, and putting it off only puts off what it may save while the
runs in between go to arms it may beat.
When several trials pass the gate, the one worth most runs first (the Thompson draw breaks ties);
a coin flip between them wasted runs on the one the model could already tell was worse. With only
one batch size tried, a larger one is expected to need a little more epochs
(``first_step_epochs_slope_up``: a larger batch never needs fewer epochs, the critical batch size),
so on a saturated GPU, where an epoch costs about the same at any batch size, the smaller
neighbour goes first. The gate alone decides how much is explored, hence its short minimum horizon.
A smaller batch never needs fewer optimizer steps than a larger one (the critical batch size), so
below a batch size ``c`` that reached the target, ``b`` needs at least ``b / c`` times ``c``'s
epochs (``steps_floor``, :func:`.model.epochs_floor`). The gate counts a draw under that floor as
the floor, a floor as uncertain as ``c``'s posterior mean (one noisy run of ``c`` must not rule
``b`` out for good): on a starved GPU, where halving the batch doubles an epoch's cost, a smaller batch can
then at best tie, and its trial is not run (or is called off once its profile measures the epoch
cost), however steeply the epochs fell on the way down.

A tried batch size beyond every other tried one takes the extrapolated value of the nearest two as
its prior where they differ by more than ``edge_trend_z`` times their noise (a trend: the others'
levels would all lie on one side of it), not the others' levels (:func:`.model.posterior`).

A batch size's first profile tries only the power limits worth it: a limit that the nearest
profiled batch size on each side (within a doubling) measured at more than ``profile_tolerance``
above its best is left out, since a profile's epoch is spent in equal slices on the limits it tries
and the slow low limits cost the most (:func:`optimizer_server.policy.base.limits_worth_profiling`;
the highest limit, and the default's whole profile, are always tried; a slowdown budget's list is
not narrowed). Every profile, the default's and a slowdown budget's included, walks its limits from
the highest down and stops after the first that costs more than ``1 + profile_tolerance`` times the
cheapest before it (``Decision.profile_stop_ratio``): past its cheapest limit a run only gets
costlier as the limit falls.

The package:

- :mod:`.hyperparameters`: :class:`Hyperparameters`, every constant in one frozen record (the
  policy's constructor takes one; the defaults are the policy's).
- :mod:`.state`: the stored state, typed (:class:`~.state.PowerBanditState`, one
  :class:`~.state.ArmSums` per batch size), its JSON form (``encode``/``decode``) and the upgrade of
  versions 1 and 2, done once where a state is loaded (:meth:`PowerBanditPolicy.upgrade_state`).
- :mod:`.model`: per-arm statistics, the posterior of log epochs-to-target, the noise and trend
  model, the extrapolation of epochs and epoch costs, the exploration gate.
- :mod:`.policy`: :class:`PowerBanditPolicy` (suggest, observe, power_limit, cost_bound, summarize;
  candidates and the slowdown budget).

Where the functions of the former single module ``powerbandit.py`` went (module constants
``NAME`` became fields ``hyperparameters.name`` in lower case, ``HORIZON_MIN`` is
``horizon_min_runs``; the per-arm dicts ``d["ok"]``, ``d["max"]`` of ``_arm_data`` are
:class:`~.model.ArmStats` records ``d.ok``, ``d.max_log_epochs``):

- ``_norm_cdf`` -> ``model._norm_cdf``
- ``_worth_exploring`` -> ``model.worth_exploring`` (on ``model.trial_value``)
- ``_extrapolate`` -> ``model.extrapolate``
- ``_extrapolate_ec`` -> ``model.extrapolate_epoch_cost`` (takes ``hp``)
- ``_prior_slopes`` -> ``model.prior_slopes``
- ``_utilisation_slopes`` -> ``model.utilisation_slopes`` (takes ``hp``)
- ``_observed`` -> ``model.observed``
- ``_posterior`` -> ``model.posterior`` (takes ``hp`` before ``slopes``)
- ``_exp`` -> ``model.exp_capped``
- ``_Z90`` -> ``model.Z_90``
- ``PowerBanditPolicy._arm_data`` -> ``model.arm_statistics`` (returns ``ArmStats`` records)
- ``PowerBanditPolicy._noise`` -> ``model.noise_posterior``
- ``PowerBanditPolicy._trend_var`` -> ``model.trend_var``
- ``STATE_VERSION``, ``MIN_EPOCHS`` -> ``state.STATE_VERSION``, ``state.MIN_EPOCHS``
- ``_new_arm``, ``_new_tails`` -> ``state.EMPTY_ARM``, ``state.EMPTY_TAILS``
- ``_push`` -> ``ArmSums.with_ok/with_fail/with_never_ran``, ``state.pushed``
- ``_stats`` -> ``state.tail_stats``, ``PowerBanditState.cost_sums``
- ``_upgrade`` -> ``state.upgrade`` (via ``PowerBanditPolicy.upgrade_state``)
- ``observe``'s in-place updates -> ``state.with_run`` (a new state) + ``fold_recurrence``
- ``suggest``, ``observe``, ... -> ``policy.PowerBanditPolicy`` (same names; ``_candidates(data)``)
- inline cost in ``_epoch_costs`` -> ``powerbandit.domain.cost_rate(eta, p, max_p) * time`` (same bits)

Dropped switches, each at the value it had: ``BRIDGE_FAILED`` (False), ``USE_PRIOR`` (True: a
context without a prior already means none), ``PRIOR_WEIGHT`` (1.0), ``UTIL_SLOPES`` (True),
``HORIZON_FRACTION`` (1.0). ``NEIGHBOUR_REACH`` is the hyperparameter ``neighbour_reach``.
"""

from optimizer_server.policy.powerbandit.hyperparameters import Hyperparameters
from optimizer_server.policy.powerbandit.policy import PowerBanditPolicy
from optimizer_server.policy.powerbandit.state import STATE_VERSION, StateVersionError

__all__ = ["STATE_VERSION", "Hyperparameters", "PowerBanditPolicy", "StateVersionError"]
