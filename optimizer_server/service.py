"""The optimizer's domain logic: jobs, runs, reports. No gRPC here, no SQL.

The gRPC servicer validates and translates requests, then awaits :class:`OptimizerService`;
this class keeps the run log in a :class:`~optimizer_server.store.base.Store` and asks the job's
policy (pure code from :mod:`optimizer_server.policy`) for decisions, inside one store
transaction per change so that concurrent reports are never lost or double counted.

How work is executed is decided here, in one place: each operation is a blocking method (one store
transaction; in-process callers such as the operator CLI call these directly), and its ``*_async``
twin is what the event loop awaits. Changes go through :meth:`Store.submit` (SQLite: on the event
loop's thread, batched into one COMMIT by its group-commit batcher; PostgreSQL: on a worker thread);
the large reads (``get_job``, ``list_jobs``) through :meth:`Store.read`, on a worker thread, so
that they never hold up suggestions and reports.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Concatenate, ParamSpec, TypeVar

from optimizer_server.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    NotFoundError,
    ResourceExhaustedError,
)
from optimizer_server.policy import (
    ArmSummary,
    JobSpec,
    Observation,
    PolicyRegistry,
    ProfilePoint,
    SuggestContext,
    decision_rng,
    default_registry,
    energy_time_cost,
    epoch_cost,
    profiled_power_limit,
)
from optimizer_server.safe_policy import SafePolicy
from optimizer_server.store.base import (
    RUN_COMPLETED,
    RUN_EXPIRED,
    RUN_FAILED,
    RUN_IN_FLIGHT,
    JobRecord,
    JobTransaction,
    ProfileRecord,
    RunGroup,
    RunRecord,
    Store,
)
from powerbandit.domain import StopReason, called_off_reason, called_off_why, candidate_power_limits

log = logging.getLogger("powerbandit.server")

DEFAULT_LEASE_S = 300.0
RUNS_PAGE_SIZE = 5000
"""Runs per ``GetJob`` page at most (the gRPC layer may cut a page shorter to fit a message)."""
DEFAULT_MAX_RUNS_IN_FLIGHT = 1000
"""Runs one job may have in flight at once; a Suggest beyond it answers RESOURCE_EXHAUSTED."""


def gpu_key(model: str, count: int) -> str:
    """How profiles and per-GPU costs are keyed: the model, and the count when it is not 1.

    A profile's average power is summed over the run's GPUs, so a 2-GPU profile must not be reused
    by a 1-GPU run of the same model.
    """
    return model if count == 1 else f"{model} x{count}"


@dataclass(frozen=True)
class RunGpu:
    """The GPUs a run executes on (per-GPU power limits, watts)."""

    model: str
    count: int
    min_power_limit_w: float
    max_power_limit_w: float
    power_limits_w: tuple[float, ...] = ()

    @property
    def max_power_w(self) -> float:
        """The cost's MAX_POWER: the maximum power limit summed over the run's GPUs."""
        return self.max_power_limit_w * self.count

    def candidate_power_limits(self) -> tuple[float, ...]:
        """The limits a profile tries: the given ones, or the domain's default ladder (25 W steps
        down from the maximum, and the minimum)."""
        if self.power_limits_w:
            return tuple(sorted(set(self.power_limits_w)))
        return candidate_power_limits(self.min_power_limit_w, self.max_power_limit_w)


@dataclass(frozen=True)
class ProgressVerdict:
    """The answer to a progress report."""

    stop: bool
    reason: str  # a StopReason value: "", "target_reached", "cost_bound", "max_epochs", "exploration_called_off"
    message: str
    cost: float
    max_cost: float


@dataclass(frozen=True)
class Suggestion:
    """A new (or, for a retried request id, the existing) run with what it needs to know."""

    run: RunRecord
    spec: JobSpec
    max_cost: float


@dataclass
class JobView:
    """Everything known about a job, for ``GetJob``/``ListJobs`` and the operator CLI."""

    record: JobRecord
    arms: list[ArmSummary]
    best_batch_size: int
    best_power_limit_w: float
    counts: dict[str, int]
    max_cost: float
    outlook: str
    runs: list[RunRecord] = field(default_factory=list)
    profiles: list[ProfileRecord] = field(default_factory=list)
    groups: list[RunGroup] = field(default_factory=list)
    window_start_unix_s: float = 0.0  # what the groups' in_window was computed with
    more_runs: bool = False  # a page of runs: more follow the last one


def spec_differences(stored: JobSpec, requested: JobSpec) -> list[str]:
    """Names of the fields in which two specs differ (seed 0 in ``requested`` means "any")."""
    a, b = stored.to_dict(), requested.to_dict()
    if requested.seed == 0:
        b["seed"] = a["seed"]
    return [name for name in a if a[name] != b[name]]


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _awaited(
    operation: Callable[Concatenate[OptimizerService, _P], _T], *, read: bool = False
) -> Callable[Concatenate[OptimizerService, _P], Awaitable[_T]]:
    """``operation`` as a coroutine the event loop awaits: a change through :meth:`Store.submit`, or
    with ``read`` a large read through :meth:`Store.read` (a worker thread)."""
    how = "a read on a worker thread (:meth:`Store.read`)" if read else "a change (:meth:`Store.submit`)"

    async def awaited(self: OptimizerService, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        execute = self.store.read if read else self.store.submit
        return await execute(operation, self, *args, **kwargs)

    awaited.__name__ = f"{operation.__name__}_async"
    awaited.__doc__ = f":meth:`{operation.__name__}`, as {how}."
    return awaited


class OptimizerService:
    """Jobs and runs over a store. Thread-safe as far as the store is (each call is one transaction).

    ``policies``: the policies jobs may name (``None``: :func:`~optimizer_server.policy.default_registry`,
    as Vizier's Pythia service defaults its policy factory); the server passes its own.
    """

    def __init__(
        self,
        store: Store,
        policies: PolicyRegistry | None = None,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        max_runs_in_flight: int = DEFAULT_MAX_RUNS_IN_FLIGHT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.policies = policies if policies is not None else default_registry()
        self._safe_policies = {name: SafePolicy(self.policies.get(name)) for name in self.policies.names}
        store.policy_state_upgrade = self._upgraded_state  # once, where the store decodes a state
        self.lease_s = lease_s
        self.max_runs_in_flight = max_runs_in_flight
        self.clock = clock
        #: Called with each run this service finished (completed, failed, expired), after its
        #: transaction committed, once per run: retries of a report are not passed again (metrics).
        self.run_observer: Callable[[RunRecord], None] | None = None

    # ----------------------------------------------------------------------------------- jobs
    def register_job(self, spec: JobSpec) -> tuple[JobSpec, bool]:
        """Create the job, or return it if it exists with the same spec.

        Raises ``AlreadyExistsError`` naming the differing fields otherwise.
        """
        requested = spec
        if spec.seed == 0:
            spec = replace(spec, seed=secrets.randbits(63) or 1)
        policy = self._policy(spec.policy)
        record = JobRecord(spec, policy.new_state(spec), self.clock())
        stored, created = self.store.create_job(record)
        if not created:
            differing = spec_differences(stored.spec, requested)
            if differing:
                details = ", ".join(
                    f"{name} (stored {stored.spec.to_dict()[name]!r}, requested {spec.to_dict()[name]!r})"
                    for name in differing
                )
                raise AlreadyExistsError(
                    f"job {spec.job_id!r} already exists with a different spec: {details}; "
                    "register under a new job id or delete the job first"
                )
        else:
            log.info("job registered", extra={"job_id": spec.job_id, "policy": spec.policy})
        return stored.spec, created

    def delete_job(self, job_id: str) -> None:
        """Delete a job and its runs and profiles. Raises ``NotFoundError``."""
        self.store.delete_job(job_id)
        log.info("job deleted", extra={"job_id": job_id})

    def get_job(
        self,
        job_id: str,
        max_runs: int = 0,
        *,
        with_runs: bool = True,
        after_seq: int = -1,
        window_start_unix_s: float = 0.0,
    ) -> JobView:
        """A job with its arms, best configuration, profiles, run groups and (optionally) runs.

        ``max_runs`` > 0: the most recent ``max_runs`` runs. 0: a page of at most
        :data:`RUNS_PAGE_SIZE` runs after ``after_seq`` (``view.more_runs`` says whether more follow).
        """
        record = self.store.get_job(job_id)
        view = self._view(record, window_start_unix_s)
        if with_runs and max_runs > 0:
            view.runs = self.store.list_runs(job_id, limit=max_runs)
        elif with_runs:
            page = self.store.list_runs_after(job_id, after_seq, RUNS_PAGE_SIZE + 1)
            view.runs, view.more_runs = page[:RUNS_PAGE_SIZE], len(page) > RUNS_PAGE_SIZE
        return view

    def list_jobs(
        self,
        prefix: str = "",
        page_size: int = 100,
        page_token: str = "",
        scopes: Sequence[str] = (),
        window_start_unix_s: float = 0.0,
    ) -> tuple[list[JobView], str]:
        """A page of jobs (without runs, with run groups) and the token of the next page ("" on the last).

        With ``scopes`` (a caller's job-id prefixes), only jobs inside them, filtered by the store.
        """
        records = self.store.list_jobs(prefix, page_size + 1, page_token, scopes)
        more = len(records) > page_size
        records = records[:page_size]
        views = [self._view(r, window_start_unix_s) for r in records]
        return views, (records[-1].spec.job_id if more and records else "")

    def _view(self, record: JobRecord, window_start_unix_s: float = 0.0) -> JobView:
        spec = record.spec
        policy = self._policy(spec.policy)
        arms = policy.summarize(spec, record.policy_state)
        known = [a for a in arms if a.successes > 0 and math.isfinite(a.cost_mean)]
        best = min(known, key=lambda a: a.cost_mean).batch_size if known else 0
        profiles = self.store.list_profiles(spec.job_id)
        recent = self.store.list_runs(spec.job_id, limit=1)
        best_limit = 0.0
        outlook = "next run: the default batch size, profiling power limits (nothing learned yet)"
        if recent:
            last = recent[-1]
            last_key = gpu_key(last.gpu_model, last.gpu_count)
            gpu_profiles = {p.batch_size: p.points for p in profiles if p.gpu_model == last_key}
            limits = last.profile_power_limits_w or (last.power_limit_w,)
            context = SuggestContext(last_key, last.max_power_w, tuple(limits), gpu_profiles)
            if best and best in gpu_profiles:  # what a run of it would get: the same rule as Suggest
                best_limit = policy.power_limit(spec, record.policy_state, context, best) or 0.0
            decision = policy.suggest(
                spec, record.policy_state, context, decision_rng(spec.seed, record.decisions)
            )
            action = (
                f"power limit {decision.power_limit_w:g} W"
                if decision.power_limit_w is not None
                else "profiling power limits"
            )
            outlook = (
                f"next run on {last.gpu_model}: {decision.phase} batch size {decision.batch_size}, "
                f"{action} ({decision.explanation})"
            )
        return JobView(
            record=record,
            arms=arms,
            best_batch_size=best,
            best_power_limit_w=best_limit,
            counts=self.store.run_counts(spec.job_id),
            max_cost=policy.cost_bound(spec, record.policy_state),
            outlook=outlook,
            profiles=profiles,
            groups=self.store.run_groups(spec.job_id, window_start_unix_s),
            window_start_unix_s=window_start_unix_s,
        )

    # ----------------------------------------------------------------------------------- runs
    def suggest(self, job_id: str, gpu: RunGpu, request_id: str = "") -> Suggestion:
        """Start a run: choose its batch size and power limit (or ask it to profile).

        With a ``request_id`` already used for this job, the run it created is returned again.
        """
        now = self.clock()
        with self.store.job_transaction(job_id) as tx:
            spec = tx.job.spec
            policy = self._policy(spec.policy)
            if request_id:
                existing = tx.find_run_by_request(request_id)
                if existing is not None:
                    key = gpu_key(existing.gpu_model, existing.gpu_count)
                    bound = policy.cost_bound(spec, tx.job.policy_state, existing.batch_size, key)
                    return Suggestion(existing, spec, bound)
            in_flight_count = tx.count_in_flight()
            if in_flight_count >= self.max_runs_in_flight:
                raise ResourceExhaustedError(
                    f"job {job_id!r} has {in_flight_count} runs in flight, the most one job may have "
                    f"(--max-runs-in-flight {self.max_runs_in_flight}); complete or fail runs that ended, "
                    f"or wait for the leases of abandoned ones ({self.lease_s:g} s) to lapse"
                )
            in_flight = tx.in_flight_batch_sizes(now)
            limits = gpu.candidate_power_limits()
            key = gpu_key(gpu.model, gpu.count)
            context = SuggestContext(key, gpu.max_power_w, limits, tx.profiles(key), in_flight)
            decision = policy.suggest(
                spec, tx.job.policy_state, context, decision_rng(spec.seed, tx.job.decisions)
            )
            run = tx.insert_run(
                RunRecord(
                    run_id=uuid.uuid4().hex,
                    job_id=job_id,
                    state=RUN_IN_FLIGHT,
                    batch_size=decision.batch_size,
                    power_limit_w=decision.power_limit_w or 0.0,
                    profile_power_limits_w=decision.profile_power_limits_w,
                    profile_stop_ratio=decision.profile_stop_ratio if decision.power_limit_w is None else 0.0,
                    phase=decision.phase,
                    explanation=decision.explanation,
                    gpu_model=gpu.model,
                    gpu_count=gpu.count,
                    max_power_w=gpu.max_power_w,
                    created_unix_s=now,
                    lease_expires_unix_s=now + self.lease_s,
                    request_id=request_id,
                    profiled=decision.power_limit_w is None,
                )
            )
            tx.save_job(None, tx.job.decisions + 1)
            max_cost = policy.cost_bound(spec, tx.job.policy_state, run.batch_size, key)
        log.info(
            "run suggested",
            extra={"job_id": job_id, "run_id": run.run_id, "batch_size": run.batch_size, "phase": run.phase},
        )
        return Suggestion(run, spec, max_cost)

    def report_profile(
        self,
        job_id: str,
        run_id: str,
        steps_per_epoch: float,
        measurements: Sequence[tuple[float, float, float]],
    ) -> tuple[float, float]:
        """Store a run's power profile ``(limit W, average power W, seconds per step)``.

        Returns ``(best power limit, its epoch cost)``; the run switches to that limit.
        """
        with self.store.job_transaction(job_id) as tx:
            run = self._in_flight_run(tx, run_id, "report a profile")
            spec = tx.job.spec
            points = {
                limit: ProfilePoint(limit, power, step_s * steps_per_epoch)
                for limit, power, step_s in measurements
            }
            best = profiled_power_limit(spec, points, run.max_power_w)
            tx.put_profile(ProfileRecord(gpu_key(run.gpu_model, run.gpu_count), run.batch_size, points, run_id))
            run.power_limit_w = best
            run.profiled = True
            run.lease_expires_unix_s = self.clock() + self.lease_s
            tx.update_run(run)
        return best, epoch_cost(spec.eta, points[best], run.max_power_w)

    def report_progress(
        self, job_id: str, run_id: str, epochs: float, energy_j: float, time_s: float, metric: float | None
    ) -> ProgressVerdict:
        """Record a run's cumulative progress and say whether it should stop."""
        with self.store.job_transaction(job_id) as tx:
            run = self._in_flight_run(tx, run_id, "report progress")
            spec = tx.job.spec
            cost = energy_time_cost(spec.eta, energy_j, time_s, run.max_power_w)
            key = gpu_key(run.gpu_model, run.gpu_count)
            policy = self._policy(spec.policy)
            bound = policy.cost_bound(spec, tx.job.policy_state, run.batch_size, key)
            reached = metric is not None and spec.reached(metric)
            called_off = None
            if not reached and cost < bound:
                context = SuggestContext(key, run.max_power_w, (), tx.profiles(key))
                called_off = policy.call_off(spec, tx.job.policy_state, context, run.batch_size, cost)
            run.epochs, run.energy_j, run.time_s, run.cost = epochs, energy_j, time_s, cost
            if metric is not None:
                run.final_metric = metric
            if called_off is not None:
                run.reason = called_off_reason(called_off)
            run.lease_expires_unix_s = self.clock() + self.lease_s
            tx.update_run(run)
        if reached:
            return ProgressVerdict(
                True, "target_reached", f"target {spec.target_metric:g} reached", cost, bound
            )
        if called_off is not None:
            return ProgressVerdict(True, StopReason.EXPLORATION_CALLED_OFF, called_off, cost, bound)
        if cost >= bound:
            return ProgressVerdict(
                True,
                "cost_bound",
                f"cost so far {cost:.4g} reached the early-stop bound {bound:.4g} "
                "(set by beta x the best run cost, tighter for unproven batch sizes); "
                "this run is unlikely to pay off",
                cost,
                bound,
            )
        if epochs >= spec.max_epochs:
            return ProgressVerdict(True, "max_epochs", f"max_epochs {spec.max_epochs} reached", cost, bound)
        return ProgressVerdict(False, "", "keep training", cost, bound)

    def complete_run(
        self,
        job_id: str,
        run_id: str,
        *,
        energy_j: float,
        time_s: float,
        epochs: float,
        reached_target: bool,
        final_metric: float | None = None,
        power_limit_w: float = 0.0,
        power_limit_control: str = "",
    ) -> RunRecord:
        """Record a run that trained and feed it to the policy. Idempotent for identical reports.

        ``power_limit_control`` says how the SDK applied the limit ("nvml", "agent", "none",
        "simulated"; "" = not reported).

        A run whose lease lapsed is still accepted (a late result is evidence too).
        """
        with self.store.job_transaction(job_id) as tx:
            run = tx.get_run(run_id)
            if run.state == RUN_COMPLETED:
                if (run.energy_j, run.time_s, run.epochs, run.reached_target) == (
                    energy_j,
                    time_s,
                    epochs,
                    reached_target,
                ):
                    return run  # a retry of the same report: counted once
                raise FailedPreconditionError(
                    f"run {run_id!r} was already completed with different measurements "
                    f"(energy_j={run.energy_j:g}, time_s={run.time_s:g}, epochs={run.epochs:g}, "
                    f"reached_target={run.reached_target})"
                )
            if run.state == RUN_FAILED:
                raise FailedPreconditionError(f"run {run_id!r} was reported failed; it cannot also complete")
            spec = tx.job.spec
            if power_limit_w > 0:
                run.power_limit_w = power_limit_w
            run.power_limit_control = power_limit_control
            run.state = RUN_COMPLETED
            run.energy_j, run.time_s, run.epochs = energy_j, time_s, epochs
            run.reached_target = reached_target
            run.final_metric = final_metric
            run.cost = energy_time_cost(spec.eta, energy_j, time_s, run.max_power_w)
            run.finished_unix_s = self.clock()
            run.epoch_cost = self._epoch_cost(tx, run)
            tx.update_run(run)
            policy = self._policy(spec.policy)
            state = policy.observe(spec, tx.job.policy_state, observation_of(run))
            if state is None:  # logged; rebuild the state from the run log, skipping what cannot fold in
                state = self._replayed_state(policy, spec, tx.list_runs())
            tx.save_job(state, tx.job.decisions)
        if self.run_observer is not None:
            self.run_observer(run)
        log.info(
            "run completed",
            extra={"job_id": job_id, "run_id": run_id, "cost": run.cost, "reached_target": reached_target},
        )
        return run

    def fail_run(
        self,
        job_id: str,
        run_id: str,
        reason: str,
        energy_j: float = 0.0,
        time_s: float = 0.0,
        epochs: float = 0.0,
        power_limit_control: str = "",
        power_limit_w: float = 0.0,
    ) -> RunRecord:
        """Record a crashed run. It is not evidence against its configuration. Idempotent.

        ``power_limit_w`` > 0: the per-GPU limit in force when it failed (kept over the suggested one).
        """
        with self.store.job_transaction(job_id) as tx:
            run = tx.get_run(run_id)
            if run.state == RUN_FAILED:
                return run
            if run.state == RUN_COMPLETED:
                raise FailedPreconditionError(f"run {run_id!r} was already completed; it cannot also fail")
            run.state = RUN_FAILED
            run.reason = reason
            if power_limit_w > 0:
                run.power_limit_w = power_limit_w
            run.power_limit_control = power_limit_control
            run.energy_j, run.time_s, run.epochs = energy_j, time_s, epochs
            run.cost = energy_time_cost(tx.job.spec.eta, energy_j, time_s, run.max_power_w)
            run.finished_unix_s = self.clock()
            tx.update_run(run)
        if self.run_observer is not None:
            self.run_observer(run)
        log.info("run failed", extra={"job_id": job_id, "run_id": run_id, "reason": reason})
        return run

    def heartbeat(self, job_id: str, run_id: str) -> float:
        """Renew a run's lease; returns when it lapses (seconds since the epoch)."""
        with self.store.job_transaction(job_id) as tx:
            run = self._in_flight_run(tx, run_id, "heartbeat")
            run.lease_expires_unix_s = self.clock() + self.lease_s
            tx.update_run(run)
        return run.lease_expires_unix_s

    def expire_lapsed_runs(self) -> int:
        """Mark in-flight runs whose lease lapsed as expired. Safe to run on every replica at once."""
        now = self.clock()
        expired = 0
        for job_id, run_id in list(self.store.expired_runs(now)):
            try:
                with self.store.job_transaction(job_id) as tx:
                    run = tx.get_run(run_id)
                    if run.state != RUN_IN_FLIGHT or run.lease_expires_unix_s >= now:
                        continue  # another replica got there first, or a heartbeat arrived
                    run.state = RUN_EXPIRED
                    run.reason = "lease expired: no heartbeat or report"
                    run.finished_unix_s = now
                    tx.update_run(run)
                expired += 1
                if self.run_observer is not None:
                    self.run_observer(run)
                log.info("run expired", extra={"job_id": job_id, "run_id": run_id})
            except NotFoundError:
                continue  # the job was deleted meanwhile
        return expired

    def rebuild_job(self, job_id: str) -> JobRecord:
        """Recompute a job's policy state from its run log (completed runs in completion order)."""
        with self.store.job_transaction(job_id) as tx:
            spec = tx.job.spec
            state = self._replayed_state(self._policy(spec.policy), spec, tx.list_runs())
            tx.save_job(state, tx.job.decisions)
            return tx.job

    # ------------------------------------------------------------ execution: what the loop awaits
    # Each operation above, as the coroutine the gRPC layer awaits: changes run through
    # Store.submit (on SQLite inside the open group-commit batch), large reads through Store.read
    # (a worker thread on a read-only connection). Same arguments, same result.
    register_job_async = _awaited(register_job)
    delete_job_async = _awaited(delete_job)
    get_job_async = _awaited(get_job, read=True)
    list_jobs_async = _awaited(list_jobs, read=True)
    suggest_async = _awaited(suggest)
    report_profile_async = _awaited(report_profile)
    report_progress_async = _awaited(report_progress)
    complete_run_async = _awaited(complete_run)
    fail_run_async = _awaited(fail_run)
    heartbeat_async = _awaited(heartbeat)
    expire_lapsed_runs_async = _awaited(expire_lapsed_runs)  # the server's lease sweeper awaits it

    # -------------------------------------------------------------------------------- helpers
    def _upgraded_state(self, spec: JobSpec, state: dict[str, Any]) -> dict[str, Any]:
        """A state just loaded from the store, in its policy's current version (a policy this
        service does not know leaves it as it is: using the job then fails as before)."""
        safe = self._safe_policies.get(spec.policy)
        return state if safe is None else safe.upgrade_state(spec, state)

    def _policy(self, name: str) -> SafePolicy:
        """The job's policy, wrapped; a name the registry does not know raises ``KeyError``."""
        safe = self._safe_policies.get(name)
        return safe if safe is not None else SafePolicy(self.policies.get(name))

    @staticmethod
    def _replayed_state(policy: SafePolicy, spec: JobSpec, runs: Sequence[RunRecord]) -> dict[str, Any]:
        """A policy state from the run log: completed runs in completion order, unusable ones skipped."""
        completed = sorted((r for r in runs if r.state == RUN_COMPLETED), key=lambda r: (r.finished_unix_s, r.seq))
        return policy.replay(spec, (observation_of(r) for r in completed))

    @staticmethod
    def _in_flight_run(tx: JobTransaction, run_id: str, action: str) -> RunRecord:
        run = tx.get_run(run_id)
        if run.state != RUN_IN_FLIGHT:
            raise FailedPreconditionError(f"cannot {action}: run {run_id!r} is {run.state.replace('_', ' ')}")
        return run

    @staticmethod
    def _epoch_cost(tx: JobTransaction, run: RunRecord) -> float | None:
        profile = tx.profiles(gpu_key(run.gpu_model, run.gpu_count)).get(run.batch_size, {})
        point = profile.get(run.power_limit_w)
        if point is not None:
            return epoch_cost(tx.job.spec.eta, point, run.max_power_w)
        if run.epochs > 0:
            return run.cost / run.epochs
        return None


def observation_of(run: RunRecord) -> Observation:
    """What the policy learns from a completed run."""
    return Observation(
        batch_size=run.batch_size,
        gpu_model=gpu_key(run.gpu_model, run.gpu_count),
        power_limit_w=run.power_limit_w,
        epochs=run.epochs,
        energy_j=run.energy_j,
        time_s=run.time_s,
        cost=run.cost,
        reached_target=run.reached_target,
        max_power_w=run.max_power_w,
        epoch_cost=run.epoch_cost,
        called_off=not run.reached_target and called_off_why(run.reason) is not None,
    )


__all__ = [
    "RUN_COMPLETED",
    "RUN_EXPIRED",
    "RUN_FAILED",
    "RUN_IN_FLIGHT",
    "JobView",
    "OptimizerService",
    "ProgressVerdict",
    "RunGpu",
    "gpu_key",
    "Suggestion",
    "observation_of",
    "spec_differences",
]
