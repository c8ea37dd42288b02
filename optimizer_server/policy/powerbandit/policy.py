"""``PowerBanditPolicy``: candidates, the Thompson draw, the exploration gate, the slowdown budget,
early-stop bounds and summaries (the model is in :mod:`.model`, the state in :mod:`.state`)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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
    limits_worth_profiling,
    new_recurrence_state,
)
from optimizer_server.policy.powerbandit import state as states
from optimizer_server.policy.powerbandit.hyperparameters import Hyperparameters
from optimizer_server.policy.powerbandit.model import (
    Z_90,
    ArmStats,
    Observed,
    arm_statistics,
    epochs_floor,
    exp_capped,
    extrapolate,
    extrapolate_epoch_cost,
    noise_posterior,
    observed,
    posterior,
    prior_slopes,
    trend_var,
    trial_value,
    utilisation_slopes,
)
from optimizer_server.policy.powerbandit.state import PowerBanditState
from powerbandit.domain import cost_rate

CALLED_OFF = "called off"
"""Arm status of a batch size whose only runs were called off after profiling (:meth:`PowerBanditPolicy.call_off`)."""


@dataclass(frozen=True)
class MeasuredTrial:
    """What an exploration whose epoch cost is measured is worth (:meth:`PowerBanditPolicy.call_off`)."""

    value: float
    """:func:`~.model.trial_value`: the expected saving over the horizon less the trial's expected excess."""
    expected_cost: float
    """The expected cost of one run."""
    best_mean: float
    """The best successful batch size's mean cost."""
    epoch_cost: float
    """The measured cost of one epoch."""
    least_cost: float = 0.0
    """The least one run can cost (a smaller batch needs no fewer steps: :func:`~.model.epochs_floor`;
    0 without a floor)."""


class PowerBanditPolicy:
    """Structured Thompson sampling over batch sizes (see the package docstring).

    Pure: every method is a function of its arguments and never changes the state it is handed.
    Read paths (:meth:`suggest`, :meth:`power_limit`, :meth:`cost_bound`, :meth:`summarize`) take
    a state in the current version only; :meth:`upgrade_state` converts an older one where it is
    loaded.
    """

    name = "powerbandit"

    def __init__(self, hyperparameters: Hyperparameters | None = None) -> None:
        self.hyperparameters = hyperparameters if hyperparameters is not None else Hyperparameters()

    # ---------------------------------------------------------------- state
    def new_state(self, spec: JobSpec) -> dict[str, Any]:
        """Nothing observed: every batch size unexplored."""
        return states.encode(states.new_state(spec.batch_sizes, new_recurrence_state()))

    def upgrade_state(self, spec: JobSpec, state: Mapping[str, Any]) -> dict[str, Any]:
        """``state`` in the current version, as a new dict (a copy of a current one); ``state`` is
        not changed. Raises :class:`~.state.StateVersionError` for a version it does not know."""
        return states.upgrade(state, spec.window)

    def observe(self, spec: JobSpec, state: Mapping[str, Any], observation: Observation) -> dict[str, Any]:
        """A new state with one finished run folded in: its epochs (exact or censored), epoch cost
        and recurrence (``state`` is not changed)."""
        epochs = float(observation.epochs)
        ec = observation.epoch_cost
        if ec is None and epochs > 0 and observation.cost > 0:
            ec = observation.cost / epochs
        if not (ec is not None and math.isfinite(ec) and ec > 0):
            ec = None
        if observation.called_off and not observation.reached_target:
            # stopped after profiling because its epoch cost ruled it out: its few epochs are no
            # evidence about epochs-to-target (as a censored run they would make it look cheap)
            out = states.with_called_off_run(state, int(observation.batch_size), ec, observation.gpu_model)
            fold_recurrence(out, observation)
            return out
        out = states.with_run(
            state,
            int(observation.batch_size),
            observation.reached_target,
            epochs,
            float(observation.cost),
            ec,
            observation.gpu_model,
            spec.window,
        )
        if observation.reached_target:
            # fold_recurrence then writes into the cheapest-recurrence-per-GPU map, which is still
            # the old state's: the new state gets its own copy first
            out["min_recurrence_cost_by_gpu"] = dict(out.get("min_recurrence_cost_by_gpu", {}))
        fold_recurrence(out, observation)
        return out

    def cost_bound(
        self, spec: JobSpec, state: Mapping[str, Any], batch_size: int | None = None, gpu_model: str | None = None
    ) -> float:
        """Largest cost a run may spend before it is told to stop.

        ``beta`` times the cheapest finished recurrence (``inf`` before the first). When the run's
        ``batch_size`` is given and it has never reached the target, the run is an exploration: it
        is stopped sooner, at ``explore_bound`` times the best arm's mean cost, since by then it
        is already known to be worse than what we have. With ``gpu_model``, only costs measured on
        that GPU model are compared (the cost's scale differs between models).
        """
        states.require_current(state)
        explore_bound = self.hyperparameters.explore_bound
        best = best_recurrence(state, gpu_model)
        bound = math.inf if best is None else spec.beta * float(best)
        if batch_size is None:
            return bound
        own = states.success_costs(state, spec.window, batch_size)
        if own and own[0][0]:
            return bound
        if gpu_model is not None and states.gpu_models(state) - {gpu_model}:
            # several GPU models: mean costs of other models are on another scale; use this one's
            # cheapest recurrence only
            return bound if best is None else min(bound, explore_bound * float(best))
        means = [total / n for n, total in states.success_costs(state, spec.window) if n]
        if means:
            bound = min(bound, explore_bound * min(means))
        return bound

    # -------------------------------------------------------------- helpers
    def _budget_applies(self, spec: JobSpec, data: Mapping[int, ArmStats]) -> bool:
        """Whether the job's slowdown budget constrains the choice: a default batch size that never
        reaches the target has no expected time to compare with, so no budget then."""
        default = data.get(int(spec.default_batch_size))
        ruled_out = default is not None and default.ok == 0 and default.fails >= self.hyperparameters.fail_limit
        return spec.max_slowdown > 0 and not ruled_out

    def _epoch_costs(self, spec: JobSpec, state: PowerBanditState, context: SuggestContext) -> dict[int, float]:
        """Known epoch cost per batch size on this GPU (profile first, then reported runs)."""
        known: dict[int, float] = {}
        if context.profiles:
            eta, mp = spec.eta, context.max_power_w
            batch_sizes = spec.batch_sizes
            for b, profile in context.profiles.items():
                if profile and int(b) in batch_sizes:
                    best = math.inf
                    for pt in profile.values():
                        # grouped as the cost rate times the time (the simulations' figures depend on
                        # the last bit): not epoch_cost, which groups the formula differently
                        cost = cost_rate(eta, pt.average_power_w, mp) * pt.time_per_epoch_s
                        if cost < best:
                            best = cost
                    if 0.0 < best < math.inf:  # an unusable profile (a 0 W reading) is skipped
                        known[int(b)] = best
        for b, ec in state.epoch_cost.get(context.gpu_model, {}).items():
            if 0.0 < ec < math.inf:
                known.setdefault(b, ec)
        return known

    def _candidates(self, data: Mapping[int, ArmStats]) -> list[int]:
        """Tried batch sizes that are not ruled out, plus untried neighbours of successful ones."""
        fail_limit = self.hyperparameters.fail_limit
        reach = self.hyperparameters.neighbour_reach
        arms = sorted(data)
        out: set[int] = set()
        for i, b in enumerate(arms):
            d = data[b]
            if d.never_ran and d.ok == 0:
                continue
            if d.ok == 0 and d.fails >= fail_limit:
                continue
            if d.ok or d.fails:
                out.add(b)
            if d.ok:
                for step in (-1, 1):
                    for hop in range(1, reach + 1):
                        j = i + step * hop
                        if not 0 <= j < len(arms):
                            break
                        nb = data[arms[j]]
                        if nb.ok or nb.fails or nb.never_ran:
                            break
                        out.add(arms[j])
        return sorted(out)

    @staticmethod
    def _reach_up(
        data: Mapping[int, ArmStats],
        candidates: list[int],
        moments: Mapping[int, tuple[float, float]],
        best_mean: float,
        fitting: set[int] | None,
    ) -> Iterator[int]:
        """Larger untried batch sizes that become candidates beyond the untried neighbour above a
        successful batch size: the next one up as long as the last is expected to cost less than
        the one before it (the neighbour: less than ``best_mean``, the best arm's mean cost).

        Going up, a run saves mostly on the epoch cost of a GPU the batch does not fill, which its
        power draw tells, so an expected saving that keeps growing is worth a longer jump; going
        down the saving rests on extrapolated epochs, and exploration walks one neighbour at a time.
        ``fitting``, when given, holds the batch sizes a slowdown budget allows. The caller
        evaluates each yielded batch size into ``moments`` before asking for the next.
        """
        arms = sorted(data)
        for b in [c for c in candidates if not (data[c].ok or data[c].fails)]:
            i = arms.index(b)
            if not (i > 0 and data[arms[i - 1]].ok):
                continue  # below the successful arm: no jump downwards
            previous = best_mean
            while True:
                expected = exp_capped(moments[b][0] + 0.5 * moments[b][1])
                i += 1
                if not (expected < previous and i < len(arms)):
                    break
                nxt = arms[i]
                d = data[nxt]
                if d.ok or d.fails or d.never_ran or nxt in moments or (fitting is not None and nxt not in fitting):
                    break
                yield nxt
                previous, b = expected, nxt

    def _known_costs(
        self,
        spec: JobSpec,
        current: PowerBanditState,
        data: Mapping[int, ArmStats],
        context: SuggestContext,
        observed_arms: Observed,
        noise_var: float,
        trend: float,
    ) -> tuple[dict[int, float], dict[int, float], set[int], bool]:
        """Known epoch costs on this GPU, and the slowdown budget: ``(epoch cost per batch size,
        the budget's power limit per batch size, the batch sizes expected to fit it, whether the
        budget applies)``. With a budget, a batch size's epoch cost is the one at its budget limit."""
        known = self._epoch_costs(spec, current, context)
        limits: dict[int, float] = {}
        fitting: set[int] = set()
        budget = self._budget_applies(spec, data)
        if budget:
            limits, fitting = self._budget(spec, data, context, observed_arms, noise_var, trend)
            for b, p in limits.items():
                known[b] = epoch_cost(spec.eta, context.profiles[b][p], context.max_power_w)
        return known, limits, fitting, budget

    def _measured_trials(
        self,
        spec: JobSpec,
        state: Mapping[str, Any],
        current: PowerBanditState,
        data: Mapping[int, ArmStats],
        context: SuggestContext,
        arms: list[int],
    ) -> dict[int, MeasuredTrial]:
        """What a trial of each of ``arms`` (batch sizes that have not reached the target, with an
        epoch cost measured on this GPU) is worth, at the posterior mean of the noise (no draw):
        the gate's :func:`~.model.trial_value` against the best successful batch size's mean cost.
        Arms it cannot judge (no epoch cost, no successful batch size to compare with) are left out.
        """
        hp = self.hyperparameters
        shape, rate = noise_posterior(data, hp)
        noise_var = rate / shape if shape > 0 else hp.noise_sd**2
        trend = trend_var(data, noise_var, hp)
        observed_arms = observed(data)
        known, _, fitting, budget = self._known_costs(spec, current, data, context, observed_arms, noise_var, trend)
        slopes = prior_slopes(context)

        def moments(b: int) -> tuple[float, float]:
            mean, var = posterior(observed_arms, data[b], b, noise_var, trend, hp, slopes, hp.first_step_epochs_slope_up)
            return mean + 0.5 * noise_var + math.log(known[b]), var

        proven = [b for b in data if data[b].ok and b in known and (not budget or b in fitting)]
        if not proven:
            return {}
        best_mean = min(exp_capped(m + 0.5 * v) for m, v in map(moments, proven))
        horizon = max(hp.horizon_min_runs, float(current.observations))
        out: dict[int, MeasuredTrial] = {}
        for b in arms:
            if data[b].ok or b not in known:
                continue
            mean, var = moments(b)
            if not math.isfinite(mean):
                continue
            stop = self.cost_bound(spec, state, b, context.gpu_model)
            floor, floor_var = epochs_floor(data, observed_arms, b, noise_var, trend, hp)
            floor += 0.5 * noise_var + math.log(known[b])
            value = trial_value(mean, var, best_mean, horizon, stop, floor, floor_var)
            least = exp_capped(floor) if floor > -math.inf else 0.0
            out[b] = MeasuredTrial(value, exp_capped(mean + 0.5 * var), best_mean, known[b], least)
        return out

    def call_off(
        self, spec: JobSpec, state: Mapping[str, Any], context: SuggestContext, batch_size: int, cost_so_far: float
    ) -> str | None:
        """Why a run of ``batch_size`` that has spent ``cost_so_far`` should stop now, or ``None``.

        Only an exploration is called off: a batch size that has not reached the target yet, whose
        epoch cost on this GPU is now measured (its profile, or an earlier run). Before its run the
        gate only had an extrapolated epoch cost; with the measured one, the trial may no longer be
        worth its cost. The run goes on while what the trial is still expected to be worth, counting
        what it has already spent as sunk, is positive: it stops when ``trial_value + cost_so_far``
        is below ``-call_off_margin`` times the best batch size's mean cost. The run's epochs are
        then no evidence about its epochs-to-target (see :meth:`observe`).
        """
        states.require_current(state)
        b = int(batch_size)
        if b not in spec.batch_sizes:
            return None
        own = states.success_costs(state, spec.window, b)
        if own and own[0][0]:
            return None  # it reached the target: not an exploration (the common case, every epoch)
        current = states.decode(state)
        data = arm_statistics(current, spec.batch_sizes, spec.window, self.hyperparameters)
        trial = self._measured_trials(spec, state, current, data, context, [b]).get(b)
        if trial is None:
            return None
        margin = self.hyperparameters.call_off_margin * trial.best_mean
        if trial.value + max(cost_so_far, 0.0) + margin >= 0.0:
            return None
        why = (
            f"exploring batch size {b} no longer pays off: with its epoch cost measured "
            f"({trial.epoch_cost:.4g}), a run is expected to cost {trial.expected_cost / trial.best_mean:.2f}x "
            f"the best batch size's mean cost"
        )
        if trial.least_cost >= 0.8 * trial.best_mean:
            # the floor, not the expected cost, is what rules it out: say so
            why += (
                f", and at least {trial.least_cost / trial.best_mean:.2f}x: a smaller batch needs no fewer "
                "optimizer steps than a larger one"
            )
        return why

    # -------------------------------------------------------------- suggest
    def suggest(
        self, spec: JobSpec, state: Mapping[str, Any], context: SuggestContext, rng: np.random.Generator
    ) -> Decision:
        """Thompson sample of every candidate's cost; the cheapest wins."""
        hp = self.hyperparameters
        current = states.decode(state)
        data = arm_statistics(current, spec.batch_sizes, spec.window, hp)
        if not any(d.ok or d.fails or d.never_ran for d in data.values()):
            b = int(spec.default_batch_size)
            return self._decision(spec, context, b, "explore", f"first run: the default batch size {b}")
        candidates = self._candidates(data)
        in_flight = {int(b) for b in context.in_flight}
        untried_busy = {b for b in candidates if b in in_flight and not (data[b].ok or data[b].fails)}
        if untried_busy and len(untried_busy) < len(candidates):
            candidates = [b for b in candidates if b not in untried_busy]
        if not candidates:
            return self._fallback(spec, data, context)

        shape, rate = noise_posterior(data, hp)
        noise_var = rate / float(rng.gamma(shape, 1.0)) if shape > 0 else hp.noise_sd**2
        trend = trend_var(data, noise_var, hp)
        slopes = prior_slopes(context)
        observed_arms = observed(data)
        known, limits, fitting, budget = self._known_costs(spec, current, data, context, observed_arms, noise_var, trend)
        if budget:
            candidates = [b for b in candidates if b in fitting] or [int(spec.default_batch_size)]
        ec_points = {math.log2(c): math.log(v) for c, v in known.items()}
        single_slopes: dict[float, float] | None = None  # computed when first needed
        costs: dict[int, float] = {}
        moments: dict[int, tuple[float, float]] = {}
        floors: dict[int, tuple[float, float]] = {}  # least log cost of one not proven yet: mean, variance

        def evaluate(b: int, z_epochs: float, z_epoch_cost: float) -> None:
            """A Thompson sample of ``b``'s log cost into ``costs``, its mean and variance into ``moments``."""
            nonlocal single_slopes
            own = data[b]
            mean, var = posterior(observed_arms, own, b, noise_var, trend, hp, slopes, hp.first_step_epochs_slope_up)
            if not math.isfinite(mean):
                mean, var = math.log(max(spec.max_epochs, 1) / 2.0), 1.0
            scale = hp.ts_scale if own.ok else hp.explore_scale
            mu = mean + scale * math.sqrt(var) * z_epochs
            ec_var = 0.0
            if b in known:
                log_ec = ec_mean = math.log(known[b])
            elif known:
                if single_slopes is None:
                    single_slopes = utilisation_slopes(context, hp)
                ec_mean, dist = extrapolate_epoch_cost(ec_points, math.log2(b), hp, single_slopes)
                ec_var = (hp.ec_sd * dist) ** 2
                log_ec = ec_mean + hp.explore_scale * hp.ec_sd * dist * z_epoch_cost
            else:
                log_ec = ec_mean = 0.0
            costs[b] = mu + 0.5 * noise_var + log_ec
            moments[b] = (mean + 0.5 * noise_var + ec_mean, var + ec_var)
            if not own.ok:
                floor, floor_var = epochs_floor(data, observed_arms, b, noise_var, trend, hp)
                floors[b] = (floor + 0.5 * noise_var + ec_mean, floor_var)

        draws = rng.standard_normal(2 * len(candidates)).tolist()
        for i, b in enumerate(candidates):
            evaluate(b, draws[2 * i], draws[2 * i + 1])
        # an untried batch size is only worth a run when what it may save over the remaining runs
        # (unknown: the job's age is the proxy) outweighs what the trial run is expected to waste
        tried_ok = [b for b in candidates if data[b].ok and b in known]
        jumps: set[int] = set()
        if tried_ok:
            best_mean = min(exp_capped(moments[b][0] + 0.5 * moments[b][1]) for b in tried_ok)
            for b in self._reach_up(data, candidates, moments, best_mean, fitting if budget else None):
                z_epochs, z_epoch_cost = rng.standard_normal(2).tolist()
                evaluate(b, z_epochs, z_epoch_cost)
                candidates.append(b)
                jumps.add(b)
            horizon = max(hp.horizon_min_runs, float(current.observations))
            # a batch size that has only failed so far is still an exploration: running it again
            # must pass the same gate as an untried one (its censored runs make it look dear, so it
            # seldom does; before, a lucky Thompson draw was enough to retry it)
            values = {
                b: trial_value(
                    *moments[b], best_mean, horizon, self.cost_bound(spec, state, b, context.gpu_model), *floors[b]
                )
                for b in candidates
                if not data[b].ok
            }
            keep = [b for b in candidates if data[b].ok or values[b] > 0.0]
            # a batch size whose epoch cost is measured must also pass the gate at the posterior
            # mean, the test call_off applies to its run: else a lucky draw would start a run only
            # for it to be called off after its first epoch
            measured = [b for b in keep if not data[b].ok and b in known]
            if measured:
                checked = self._measured_trials(spec, state, current, data, context, measured)
                keep = [b for b in keep if b not in checked or checked[b].value > 0.0]
            if keep:
                candidates = keep
            # a trial that passed the gate is run now rather than whenever its Thompson draw
            # happens to win: what it may save starts sooner, and the runs spent meanwhile on
            # arms it might beat are saved. Of several such trials the one worth most goes first
            # (the Thompson draw breaks ties): a coin flip between two neighbours wasted runs on
            # the one a model could already tell was worse.
            untried = [b for b in keep if not (data[b].ok or data[b].fails)]
            if untried:
                candidates = [max(untried, key=lambda b: (values[b], -costs[b]))]
        best = min(candidates, key=lambda b: (costs[b], b))
        tried = data[best].ok or data[best].fails
        phase = "exploit" if tried else "explore"
        explanation = (
            f"Thompson sample over {len(candidates)} batch sizes: {best} has the lowest sampled cost"
            if tried
            else f"exploring batch size {best}, a neighbour of one that reached the target"
            if best not in jumps
            else f"exploring batch size {best}: each larger batch size up to it is expected to cost less"
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
        hp = self.hyperparameters
        data = arm_statistics(states.decode(state), spec.batch_sizes, spec.window, hp)
        if self._budget_applies(spec, data) and context.profiles.get(batch_size) and int(batch_size) in data:
            shape, rate = noise_posterior(data, hp)
            noise_var = rate / shape if shape > 0 else hp.noise_sd**2
            limits, _ = self._budget(
                spec, data, context, observed(data), noise_var, trend_var(data, noise_var, hp)
            )
            if int(batch_size) in limits:
                return limits[int(batch_size)]
        return choose_power_limit(spec, context, batch_size)[0]

    def _budget(
        self,
        spec: JobSpec,
        data: Mapping[int, ArmStats],
        context: SuggestContext,
        observed_arms: Observed,
        noise_var: float,
        trend: float,
    ) -> tuple[dict[int, float], set[int]]:
        """The slowdown budget on this GPU: the power limit of each profiled batch size expected to fit
        it, and the batch sizes expected to fit it at all.

        A run of ``(b, p)`` is expected to take ``epochs(b) / epochs(b0) * time_per_epoch(b, p)`` over
        ``time_per_epoch(b0, p_max)`` times the default's time, with the posterior mean epochs ratio.
        An unprofiled batch size fits when its extrapolated epoch time at the highest limit does. The
        default batch size always fits (at the highest limit); before its profile nothing else is
        judged, so only it fits.
        """
        hp = self.hyperparameters
        b0 = int(spec.default_batch_size)
        profiles = {int(b): pr for b, pr in context.profiles.items() if pr and int(b) in data}
        if b0 not in profiles:
            return {}, {b0}
        budget = spec.max_slowdown
        ref = profiles[b0][max(profiles[b0])].time_per_epoch_s

        def log_epochs(b: int) -> float:
            # a batch size's own runs, when it has some: the posterior leans on the neighbours, which
            # is optimistic for a budget (a batch size that needed 3x the epochs must not look fine).
            # An untried one is judged on this job's runs alone, not the cluster prior: the prior is
            # other workloads' mean, and as a hard filter it would rule batch sizes out untried (the
            # gate still weighs it)
            if data[b].n:
                return float(data[b].mean)
            return posterior(observed_arms, data[b], b, noise_var, trend, hp)[0]

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
            ratio = exp_capped(mean_b - mean0) if b != b0 and math.isfinite(mean_b) and math.isfinite(mean0) else 1.0
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
                log_t, _ = extrapolate(t_points, math.log2(b), (-hp.ec_slope_max, hp.ec_slope_max), 0.0)
                if ratio * exp_capped(log_t) <= budget * ref:
                    fitting.add(b)
        return limits, fitting

    def _fallback(self, spec: JobSpec, data: Mapping[int, ArmStats], context: SuggestContext) -> Decision:
        """Every batch size looks bad: pick the most promising anyway and say so."""

        def score(b: int) -> tuple[float, ...]:
            d = data[b]
            furthest = exp_capped(d.max_log_epochs) if d.n else 0.0
            return (-d.ok, d.never_ran, d.fails, -furthest, abs(b - spec.default_batch_size))

        b = min(data, key=score)
        return self._decision(
            spec,
            context,
            b,
            "fallback",
            f"every batch size failed to reach the target so far; retrying {b}, the most promising",
        )

    def _decision(
        self,
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
        stop_ratio = 0.0
        if power_limit is None:
            hp = self.hyperparameters
            narrowed = profile
            if math.isfinite(hp.profile_tolerance):
                # from the highest limit down, stopping past the cheapest. With a slowdown budget the
                # cost is energy, and a limit past the stop takes more energy and more time than one
                # before it, so the budget never picks it; but a limit that a neighbour found costly
                # may be the one the budget allows, so such a job's list is not narrowed
                stop_ratio = 1.0 + hp.profile_tolerance
                if spec.max_slowdown <= 0:
                    narrowed = limits_worth_profiling(
                        spec, context, b, profile, hp.profile_tolerance, hp.profile_reach_doublings
                    )
            if narrowed and len(narrowed) < len(profile):
                explanation += (
                    f"; profiling {len(narrowed)} of {len(profile)} power limits during the first epoch "
                    f"(the others cost over {hp.profile_tolerance:.0%} more than the best at the "
                    "nearest profiled batch sizes)"
                )
                profile = narrowed
            else:
                explanation += "; profiling power limits during the first epoch"
            if stop_ratio:
                profile = tuple(sorted(profile, reverse=True))
                explanation += (
                    f", from the highest down until one costs over {hp.profile_tolerance:.0%} more than "
                    "the cheapest before it"
                )
        return Decision(b, power_limit, profile, phase, explanation, stop_ratio)

    # -------------------------------------------------------------- summary
    def summarize(self, spec: JobSpec, state: Mapping[str, Any]) -> list[ArmSummary]:
        """Per batch size: epochs-to-target posterior, and a run's cost where an epoch cost is known."""
        hp = self.hyperparameters
        current = states.decode(state)
        data = arm_statistics(current, spec.batch_sizes, spec.window, hp)
        shape, rate = noise_posterior(data, hp)
        noise_var = rate / shape
        ec_any: dict[int, float] = {}
        for per_gpu in current.epoch_cost.values():
            for b, ec in per_gpu.items():
                if 0.0 < ec < math.inf:
                    ec_any.setdefault(b, ec)
        observed_arms = observed(data)
        trend = trend_var(data, noise_var, hp)
        out = []
        for b in sorted(data):
            d = data[b]
            tried = d.ok + d.fails + d.never_ran
            if not tried and b in ec_any:
                status = CALLED_OFF  # it ran (its epoch cost is known) but says nothing about epochs
            elif not tried:
                status = "unexplored"
            elif d.ok == 0 and (d.fails >= hp.fail_limit or d.never_ran):
                status = "pruned"
            else:
                status = "active"
            mean, var = posterior(observed_arms, d, b, noise_var, trend, hp)
            epochs = exp_capped(mean + 0.5 * noise_var) if math.isfinite(mean) else math.nan
            if b in ec_any and math.isfinite(mean):
                sd = math.sqrt(var)
                cost_mean = epochs * ec_any[b]
                low = exp_capped(mean - Z_90 * sd + 0.5 * noise_var) * ec_any[b]
                high = exp_capped(mean + Z_90 * sd + 0.5 * noise_var) * ec_any[b]
            else:
                cost_mean = low = high = math.nan
            out.append(ArmSummary(b, status, tried, d.ok, cost_mean, low, high, epochs))
        return out
