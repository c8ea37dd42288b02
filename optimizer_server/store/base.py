"""The storage interface. The servicer never sees SQL: it talks to a :class:`Store`.

Runs, their reports and power profiles are the source of truth; a job's policy state is derived
from them and saved in the same transaction as the change that produced it. Every change to one
job happens inside :meth:`Store.job_transaction`, which serialises writers of that job (SQLite:
one writer at a time; PostgreSQL: a row lock on the job), so concurrent reports are never lost or
counted twice.

Records are passed by value: every record (and policy state, and profile) a store returns is the
caller's own, so changing it changes nothing stored until it is handed back through
:meth:`JobTransaction.update_run`, :meth:`~JobTransaction.save_job` or
:meth:`~JobTransaction.put_profile`; and a record handed in is stored as it was at that moment, so
changing it afterwards changes nothing either. ``tests/optimizer_server/store/store_contract.py``
holds every store to this and the rest of the interface.

This module knows no implementation: :func:`optimizer_server.store.open.open_store` opens one by URL.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from powerbandit.domain import JobSpec, ProfilePoint, ProfileRecord, RunGroup, RunState

T = TypeVar("T")

# the run states as the plain strings the database keeps (the domain's RunState values)
RUN_IN_FLIGHT: str = RunState.IN_FLIGHT.value
RUN_COMPLETED: str = RunState.COMPLETED.value
RUN_FAILED: str = RunState.FAILED.value
RUN_EXPIRED: str = RunState.EXPIRED.value
RUN_STATES: tuple[str, ...] = tuple(state.value for state in RunState)


@dataclass(frozen=True)
class JobRecord:
    """A stored job: its spec, derived policy state, and how many suggestions it has made."""

    spec: JobSpec
    policy_state: dict[str, Any]
    created_unix_s: float
    decisions: int = 0


@dataclass
class RunRecord:
    """One execution of a job, from suggestion to completion, failure or expiry."""

    run_id: str
    job_id: str
    state: str
    batch_size: int
    power_limit_w: float  # per GPU; 0 while the run still has to profile
    profile_power_limits_w: tuple[float, ...]
    phase: str
    explanation: str
    gpu_model: str
    gpu_count: int
    max_power_w: float
    created_unix_s: float
    lease_expires_unix_s: float
    request_id: str = ""
    finished_unix_s: float = 0.0
    energy_j: float = 0.0
    time_s: float = 0.0
    epochs: float = 0.0
    reached_target: bool = False
    cost: float = 0.0
    final_metric: float | None = None
    reason: str = ""
    profiled: bool = False
    epoch_cost: float | None = None
    seq: int = 0  # order of creation within the job, assigned by the store
    power_limit_control: str = ""  # "", "nvml", "agent", "none", "simulated" (as the SDK reported it)
    profile_stop_ratio: float = 0.0  # the profile stops past a limit this much above the cheapest (0: never)


class JobTransaction(ABC):
    """Exclusive, atomic access to one job. Obtained from :meth:`Store.job_transaction`.

    Everything done through it commits together when the ``with`` block ends normally and rolls
    back when it raises.
    """

    @property
    @abstractmethod
    def job(self) -> JobRecord:
        """The job as this transaction sees it (after :meth:`save_job`: with what was saved)."""

    @abstractmethod
    def get_run(self, run_id: str) -> RunRecord:
        """The run ``run_id`` of this job. Raises ``NotFoundError``."""

    @abstractmethod
    def find_run_by_request(self, request_id: str) -> RunRecord | None:
        """The run created by Suggest with this idempotency key, if any."""

    @abstractmethod
    def list_runs(self) -> list[RunRecord]:
        """All of this job's runs in creation order."""

    @abstractmethod
    def runs_in_flight(self) -> list[RunRecord]:
        """This job's runs in state ``in_flight``."""

    @abstractmethod
    def count_in_flight(self) -> int:
        """How many of this job's runs are in state ``in_flight`` (however many: in constant time)."""

    @abstractmethod
    def in_flight_batch_sizes(self, now_unix_s: float) -> list[int]:
        """Distinct batch sizes of this job's runs in flight whose lease is live at ``now_unix_s``."""

    @abstractmethod
    def insert_run(self, run: RunRecord) -> RunRecord:
        """Add a new run; returns a copy of it with ``seq`` assigned (``run`` itself is unchanged)."""

    @abstractmethod
    def update_run(self, run: RunRecord) -> None:
        """Overwrite a run's mutable fields (state, measurements, power limit, lease)."""

    @abstractmethod
    def profiles(self, gpu_model: str) -> dict[int, dict[float, ProfilePoint]]:
        """Stored power profiles of this job on ``gpu_model``: batch size -> power limit -> point."""

    @abstractmethod
    def put_profile(self, profile: ProfileRecord) -> None:
        """Store (replace) the profile of ``(gpu_model, batch_size)``."""

    @abstractmethod
    def save_job(self, policy_state: dict[str, Any] | None, decisions: int) -> None:
        """Persist the job's suggestion counter and, unless ``None``, its new policy state."""


def scoped_prefixes(prefix: str, scopes: Sequence[str] = ()) -> list[str]:
    """The id prefixes matching both ``prefix`` and one of ``scopes`` (none: no restriction).

    A job id starts with ``prefix`` and with scope ``s`` exactly when it starts with the longer of
    the two, provided one extends the other; otherwise no id can match both.
    """
    if not scopes:
        return [prefix]
    found = set()
    for scope in scopes:
        if scope.startswith(prefix):
            found.add(scope)
        elif prefix.startswith(scope):
            found.add(prefix)
    # drop prefixes that a shorter one already covers
    return sorted(p for p in found if not any(p != q and p.startswith(q) for q in found))


class Store(ABC):
    """Persistent jobs, runs and profiles. Implementations: SQLite and PostgreSQL."""

    @abstractmethod
    def create_job(self, job: JobRecord) -> tuple[JobRecord, bool]:
        """Insert ``job`` unless its id exists. Returns ``(stored job, created)``.

        When the id exists, the stored job is returned with ``created=False``; the caller decides
        whether the specs conflict.
        """

    @abstractmethod
    def get_job(self, job_id: str) -> JobRecord:
        """The job. Raises ``NotFoundError``."""

    @abstractmethod
    def list_jobs(
        self, prefix: str = "", limit: int = 100, after_job_id: str = "", scopes: Sequence[str] = ()
    ) -> list[JobRecord]:
        """Jobs whose id starts with ``prefix`` and sorts after ``after_job_id``, ascending by id.

        With ``scopes``, only jobs whose id also starts with one of them (a caller's token scopes:
        filtered in the query, so that a page never reflects jobs outside them).
        """

    @abstractmethod
    def delete_job(self, job_id: str) -> None:
        """Delete the job, its runs and profiles. Raises ``NotFoundError``."""

    @abstractmethod
    def job_transaction(self, job_id: str) -> AbstractContextManager[JobTransaction]:
        """Lock job ``job_id`` for an atomic change. Raises ``NotFoundError``."""

    @abstractmethod
    def list_runs(self, job_id: str, limit: int = 0) -> list[RunRecord]:
        """The job's runs in creation order; with ``limit`` > 0 only the most recent ``limit``."""

    @abstractmethod
    def list_runs_after(self, job_id: str, after_seq: int, limit: int) -> list[RunRecord]:
        """Up to ``limit`` of the job's runs with ``seq > after_seq``, in creation order (a page)."""

    @abstractmethod
    def run_groups(self, job_id: str, window_start_unix_s: float = 0.0) -> list[RunGroup]:
        """The job's whole run log summed per :class:`RunGroup` (one query, however many runs)."""

    @abstractmethod
    def run_counts(self, job_id: str) -> dict[str, int]:
        """Number of the job's runs in each state (every state present as a key)."""

    @abstractmethod
    def list_profiles(self, job_id: str) -> list[ProfileRecord]:
        """Every stored power profile of the job."""

    @abstractmethod
    def expired_runs(self, now_unix_s: float) -> Iterator[tuple[str, str]]:
        """``(job_id, run_id)`` of runs in flight whose lease lapsed before ``now_unix_s``."""

    @abstractmethod
    def run_gpu_models(self) -> set[str]:
        """The GPU models of every run in the store (one query)."""

    @abstractmethod
    def totals(self) -> dict[str, Any]:
        """``{"jobs": N, "runs": {state: count}}`` over the whole store (for metrics)."""

    async def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a call that changes the store, for the event loop to await (the service's changes).

        The default runs it on a worker thread, off the loop (PostgreSQL). A store may execute it
        otherwise: SQLite runs it on the loop's own thread, batched with the calls that arrive
        with it into one COMMIT (see :mod:`optimizer_server.store.group_commit`).
        """
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a read-only call (it changes nothing) on a worker thread, beside the writers.

        For reads that may be large (a job with its whole run log, a page of jobs), so that they
        never hold up suggestions and reports on the event loop.
        """
        return await asyncio.to_thread(fn, *args, **kwargs)

    transaction_observer: Callable[[float], None] | None = None
    """Called with the duration in seconds of every job transaction, when set (metrics)."""

    policy_state_upgrade: Callable[[JobSpec, dict[str, Any]], dict[str, Any]] | None = None
    """Applied to every policy state decoded from the database, once per load, when set: the
    service sets it so that its policies bring states of older versions up to date before any
    policy reads them."""

    @abstractmethod
    def close(self) -> None:
        """Release connections. Further use is an error."""


DATABASE_UNAVAILABLE = "database unavailable; retry later (the server log has the details)"
"""What callers are told when the database cannot be reached: driver text stays in the log."""
