"""The store written once in portable SQL; SQLite and PostgreSQL supply connections and locking.

Subclasses implement :meth:`SqlStore._session` (a connection inside one transaction, optionally
holding the lock that serialises writers of one job) and provide their dialect's schema.
Queries here use ``?`` placeholders; a subclass may rewrite them (``paramstyle``).

Records are passed by value (the contract of :mod:`~optimizer_server.store.base`), cheaply: a
run is copied field by field (its fields are immutable values) when it crosses the store's
boundary either way, a profile's points are copied into fresh dicts, and a job's policy state is
kept only serialised (:class:`StateCopy`, made when it is loaded or saved), so that every
transaction gets its own copy from one ``marshal.loads``, about 2 us for a typical state: several
times faster than ``copy.deepcopy``, and no object a caller holds is ever shared with the store.

Job transactions reuse what they decoded last time: every change to a job writes a new unique
``revision`` into its row, and a transaction that finds the revision it cached (one indexed
read, under the job's lock) skips decoding the spec and policy state and re-reading the job's
profiles, runs in flight and next run number. Any other writer (another replica, another process,
a transaction whose COMMIT failed) leaves a revision the cache does not know, so the job is
read afresh. A store that knows nobody else has written since its last transaction (see
:meth:`SqlStore._cache_is_current`) skips even the revision read. Only job transactions use the
cache; plain reads always go to the database.
"""

from __future__ import annotations

import functools
import itertools
import json
import marshal
import pickle
import secrets
import threading
import time
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from optimizer_server.errors import NotFoundError
from optimizer_server.policy.base import JobSpec, ProfilePoint
from optimizer_server.store.base import (
    RUN_IN_FLIGHT,
    RUN_STATES,
    JobRecord,
    JobTransaction,
    ProfileRecord,
    RunGroup,
    RunRecord,
    Store,
    scoped_prefixes,
)

RUN_COLUMNS = (
    "run_id", "job_id", "seq", "state", "batch_size", "power_limit_w", "profile_power_limits_w",
    "phase", "explanation", "gpu_model", "gpu_count", "max_power_w", "request_id",
    "created_unix_s", "lease_expires_unix_s", "finished_unix_s", "energy_j", "time_s", "epochs",
    "reached_target", "cost", "final_metric", "reason", "profiled", "epoch_cost", "power_limit_control",
    "profile_stop_ratio",
)  # fmt: skip
_RUN_SELECT = "SELECT " + ", ".join(RUN_COLUMNS) + " FROM runs"
_RUN_INSERT = f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' for _ in RUN_COLUMNS)})"
_RUN_UPDATE = "UPDATE runs SET " + ", ".join(f"{c} = ?" for c in RUN_COLUMNS[3:]) + " WHERE run_id = ?"
assert RUN_COLUMNS[:3] == ("run_id", "job_id", "seq")
_JOB_SELECT = "SELECT job_id, spec, policy_state, created_unix_s, decisions FROM jobs"


class Cursor(Protocol):
    """The part of a DB-API cursor the store uses."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


def run_to_row(run: RunRecord) -> tuple[Any, ...]:
    """A :class:`RunRecord` as a row in ``RUN_COLUMNS`` order."""
    return (
        run.run_id, run.job_id, run.seq, run.state, run.batch_size, run.power_limit_w,
        _limits_json(run.profile_power_limits_w), run.phase, run.explanation, run.gpu_model,
        run.gpu_count, run.max_power_w, run.request_id, run.created_unix_s,
        run.lease_expires_unix_s, run.finished_unix_s, run.energy_j, run.time_s, run.epochs,
        int(run.reached_target), run.cost, run.final_metric, run.reason, int(run.profiled),
        run.epoch_cost, run.power_limit_control, run.profile_stop_ratio,
    )  # fmt: skip


@functools.lru_cache(maxsize=256)
def _limits_json(limits: tuple[float, ...]) -> str:
    return json.dumps(list(limits))  # the same few lists of power limits come back run after run


def row_to_run(row: Sequence[Any]) -> RunRecord:
    """Inverse of :func:`run_to_row`."""
    values = dict(zip(RUN_COLUMNS, row, strict=True))
    values["profile_power_limits_w"] = tuple(float(p) for p in json.loads(values["profile_power_limits_w"]))
    values["reached_target"] = bool(values["reached_target"])
    values["profiled"] = bool(values["profiled"])
    return RunRecord(**values)


# allow_nan: policy states may hold inf (e.g. "no best cost yet"); Python's json reads it back.
# One encoder for every state: json.dumps with options builds a new one per call.
_STATE_ENCODER = json.JSONEncoder(allow_nan=True, separators=(",", ":"))


def _state_to_json(state: dict[str, Any]) -> str:
    return _STATE_ENCODER.encode(state)


@dataclass(frozen=True)
class StateCopy:
    """The store's own copy of a policy state, serialised: :meth:`thaw` makes a new object each time.

    ``marshal`` where the state is plain data (JSON's types: the usual case, the fastest way to
    copy it); ``pickle`` for anything marshal refuses (e.g. a NumPy scalar a policy left in it).
    """

    data: bytes
    marshalled: bool

    @classmethod
    def of(cls, state: dict[str, Any]) -> StateCopy:
        """A copy of ``state`` as it is now."""
        try:
            return cls(marshal.dumps(state), True)
        except ValueError:
            return cls(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), False)

    def thaw(self) -> dict[str, Any]:
        """A new copy of the state."""
        return marshal.loads(self.data) if self.marshalled else pickle.loads(self.data)  # type: ignore[no-any-return]


def _copy_run(run: RunRecord) -> RunRecord:
    """A shallow copy of a run (its fields are immutable values), without copy.copy's detour."""
    clone = object.__new__(RunRecord)
    clone.__dict__.update(run.__dict__)
    return clone


class Revisions:
    """Fresh job revisions: a random prefix per store and a counter, so that two writers (two
    stores, or one store before and after a restart) never produce the same one, at the cost of
    an integer increment (a random token per write cost more than the rest of a heartbeat)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8) + "-"
        self._counter = itertools.count(1)  # next() is atomic under the GIL

    def new(self) -> str:
        """A revision no writer has used."""
        return f"{self._prefix}{next(self._counter)}"


class InFlightRuns:
    """A job's runs in flight, indexed by run id, request id and batch size.

    What a suggestion asks of them (is this request id known? which batch sizes are busy?) costs
    the same however many runs are in flight.
    """

    def __init__(self, runs: Iterator[RunRecord] | Sequence[RunRecord] = ()) -> None:
        self.by_id: dict[str, RunRecord] = {}
        self._by_request: dict[str, str] = {}
        self._by_batch_size: dict[int, dict[str, RunRecord]] = {}
        for run in runs:
            self.put(run)

    def __len__(self) -> int:
        return len(self.by_id)

    def get(self, run_id: str) -> RunRecord | None:
        """The run in flight with this id, if any."""
        return self.by_id.get(run_id)

    def put(self, run: RunRecord) -> None:
        """Add or replace a run in flight."""
        self.pop(run.run_id)
        self.by_id[run.run_id] = run
        if run.request_id:
            self._by_request[run.request_id] = run.run_id
        self._by_batch_size.setdefault(run.batch_size, {})[run.run_id] = run

    def pop(self, run_id: str) -> None:
        """Forget a run (it finished), if it was in flight."""
        run = self.by_id.pop(run_id, None)
        if run is None:
            return
        if run.request_id and self._by_request.get(run.request_id) == run_id:
            del self._by_request[run.request_id]
        same_size = self._by_batch_size[run.batch_size]
        del same_size[run_id]
        if not same_size:
            del self._by_batch_size[run.batch_size]

    def by_request(self, request_id: str) -> RunRecord | None:
        """The run in flight created by ``request_id``, if any."""
        run_id = self._by_request.get(request_id)
        return None if run_id is None else self.by_id[run_id]

    def leased_batch_sizes(self, now_unix_s: float) -> list[int]:
        """Batch sizes with at least one run whose lease has not lapsed at ``now_unix_s``."""
        return [
            b
            for b, runs in self._by_batch_size.items()
            if any(r.lease_expires_unix_s >= now_unix_s for r in runs.values())
        ]


@dataclass
class JobAggregate:
    """A job as its transactions see it, decoded once and reused while its revision is unchanged.

    The policy state is kept only as a :class:`StateCopy` (never as an object a caller could hold).
    ``profiles`` (per GPU key), ``in_flight`` and ``next_seq`` are read on first use.
    """

    revision: str
    spec: JobSpec
    state: StateCopy
    created_unix_s: float
    decisions: int
    profiles: dict[str, dict[int, dict[float, ProfilePoint]]] = field(default_factory=dict)
    in_flight: InFlightRuns | None = None
    next_seq: int | None = None

    @classmethod
    def of(cls, revision: str, job: JobRecord) -> JobAggregate:
        """The aggregate of a job just decoded from its row."""
        return cls(revision, job.spec, StateCopy.of(job.policy_state), job.created_unix_s, job.decisions)

    def job_record(self) -> JobRecord:
        """The job as a new record with its own copy of the policy state."""
        return JobRecord(self.spec, self.state.thaw(), self.created_unix_s, self.decisions)


class SqlJobTransaction(JobTransaction):
    """A job transaction over one cursor, reading through and updating the job's aggregate."""

    def __init__(self, store: SqlStore, cursor: Cursor, aggregate: JobAggregate) -> None:
        self._store = store
        self._cur = cursor
        self._agg = aggregate
        self._job: JobRecord | None = None  # made on first use (a heartbeat never needs the state)
        self._dirty = False  # something was written: the job gets a new revision
        self._state_json: str | None = None  # the state saved by this transaction, encoded

    @property
    def job(self) -> JobRecord:
        if self._job is None:
            self._job = self._agg.job_record()
        return self._job

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cur.execute(self._store.sql(sql), params)

    def get_run(self, run_id: str) -> RunRecord:
        cached = self._in_flight().get(run_id)
        if cached is not None:
            return _copy_run(cached)
        self._execute(_RUN_SELECT + " WHERE run_id = ? AND job_id = ?", (run_id, self._agg.spec.job_id))
        row = self._cur.fetchone()
        if row is None:
            raise NotFoundError(f"run {run_id!r} not found in job {self._agg.spec.job_id!r}")
        return row_to_run(row)

    def find_run_by_request(self, request_id: str) -> RunRecord | None:
        found = self._in_flight().by_request(request_id)
        if found is not None:
            return _copy_run(found)
        self._execute(
            _RUN_SELECT + " WHERE job_id = ? AND request_id = ?", (self._agg.spec.job_id, request_id)
        )
        row = self._cur.fetchone()
        return None if row is None else row_to_run(row)

    def list_runs(self) -> list[RunRecord]:
        self._execute(_RUN_SELECT + " WHERE job_id = ? ORDER BY seq", (self._agg.spec.job_id,))
        return [row_to_run(r) for r in self._cur.fetchall()]

    def _in_flight(self) -> InFlightRuns:
        if self._agg.in_flight is None:
            self._execute(
                _RUN_SELECT + " WHERE job_id = ? AND state = ? ORDER BY seq",
                (self._agg.spec.job_id, RUN_IN_FLIGHT),
            )
            self._agg.in_flight = InFlightRuns(list(map(row_to_run, self._cur.fetchall())))
        return self._agg.in_flight

    def runs_in_flight(self) -> list[RunRecord]:
        return [_copy_run(run) for run in self._in_flight().by_id.values()]

    def count_in_flight(self) -> int:
        return len(self._in_flight())

    def in_flight_batch_sizes(self, now_unix_s: float) -> list[int]:
        return self._in_flight().leased_batch_sizes(now_unix_s)

    def insert_run(self, run: RunRecord) -> RunRecord:
        if self._agg.next_seq is None:
            self._execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM runs WHERE job_id = ?", (run.job_id,))
            self._agg.next_seq = int(self._cur.fetchone()[0])
        stored = _copy_run(run)  # the caller's record is left as it was
        stored.seq = self._agg.next_seq
        self._execute(_RUN_INSERT, run_to_row(stored))
        self._agg.next_seq += 1
        self._dirty = True
        if stored.state == RUN_IN_FLIGHT:
            self._in_flight().put(stored)
            return _copy_run(stored)
        return stored

    def update_run(self, run: RunRecord) -> None:
        row = run_to_row(run)
        self._execute(_RUN_UPDATE, [*row[3:], run.run_id])  # every column after run_id, job_id, seq
        self._dirty = True
        in_flight = self._in_flight()
        if run.state == RUN_IN_FLIGHT:
            in_flight.put(_copy_run(run))
        else:
            in_flight.pop(run.run_id)

    def profiles(self, gpu_model: str) -> dict[int, dict[float, ProfilePoint]]:
        cached = self._agg.profiles.get(gpu_model)
        if cached is None:
            self._execute(
                "SELECT batch_size, power_limit_w, average_power_w, time_per_epoch_s FROM profiles"
                " WHERE job_id = ? AND gpu_model = ?",
                (self._agg.spec.job_id, gpu_model),
            )
            cached = {}
            for batch_size, limit, power, epoch_time in self._cur.fetchall():
                cached.setdefault(int(batch_size), {})[float(limit)] = ProfilePoint(limit, power, epoch_time)
            self._agg.profiles[gpu_model] = cached
        return {batch_size: dict(points) for batch_size, points in cached.items()}  # points are frozen

    def put_profile(self, profile: ProfileRecord) -> None:
        job_id = self._agg.spec.job_id
        self._execute(
            "DELETE FROM profiles WHERE job_id = ? AND gpu_model = ? AND batch_size = ?",
            (job_id, profile.gpu_model, profile.batch_size),
        )
        for point in profile.points.values():
            self._execute(
                "INSERT INTO profiles (job_id, gpu_model, batch_size, power_limit_w, average_power_w,"
                " time_per_epoch_s, run_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id, profile.gpu_model, profile.batch_size, point.power_limit_w,
                    point.average_power_w, point.time_per_epoch_s, profile.run_id,
                ),
            )  # fmt: skip
        self._dirty = True
        cached = self._agg.profiles.get(profile.gpu_model)
        if cached is not None:
            cached[profile.batch_size] = dict(profile.points)

    def save_job(self, policy_state: dict[str, Any] | None, decisions: int) -> None:
        agg = self._agg
        if policy_state is None:
            if self._job is not None:  # (dataclasses.replace costs more than the rest of this call)
                self._job = JobRecord(agg.spec, self._job.policy_state, agg.created_unix_s, decisions)
        else:
            # encoded now: what the caller does with its dict afterwards is not stored
            self._state_json = _state_to_json(policy_state)
            agg.state = StateCopy.of(policy_state)
            self._job = JobRecord(agg.spec, policy_state, agg.created_unix_s, decisions)
        agg.decisions = decisions
        self._dirty = True

    def finish(self) -> None:
        """Write the job row once at the end: a new revision, the counter, the state if it changed."""
        if not self._dirty:
            return
        agg = self._agg
        agg.revision = self._store.revisions.new()
        if self._state_json is not None:
            self._execute(
                "UPDATE jobs SET policy_state = ?, decisions = ?, revision = ? WHERE job_id = ?",
                (self._state_json, agg.decisions, agg.revision, agg.spec.job_id),
            )
        else:
            self._execute(
                "UPDATE jobs SET decisions = ?, revision = ? WHERE job_id = ?",
                (agg.decisions, agg.revision, agg.spec.job_id),
            )


class SqlStore(Store):
    """Everything of :class:`Store` except connections, locking and schema."""

    paramstyle = "qmark"
    cache_size = 4096
    """Jobs whose decoded aggregate is kept between transactions (least recently used dropped)."""

    def __init__(self) -> None:
        self._cache: OrderedDict[str, JobAggregate] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.revisions = Revisions()

    def _cache_take(self, job_id: str) -> JobAggregate | None:
        """Remove and return the job's cached aggregate (a transaction owns it until it succeeds)."""
        with self._cache_lock:
            return self._cache.pop(job_id, None)

    def _cache_put(self, job_id: str, aggregate: JobAggregate) -> None:
        with self._cache_lock:
            self._cache[job_id] = aggregate
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _cache_clear(self) -> None:
        """Forget every cached aggregate (their transactions may not have reached the database)."""
        with self._cache_lock:
            self._cache.clear()

    def _cache_is_current(self) -> bool:
        """Whether, inside the current job transaction, every cached aggregate is known to match the
        database, so that checking the job's revision can be skipped.

        The default is no: each job's revision is read. A store that can tell cheaply that nobody
        else has written since it last looked (SQLite: ``PRAGMA data_version``) says yes.
        """
        return False

    def sql(self, query: str) -> str:
        """``query`` in this driver's parameter style."""
        return query if self.paramstyle == "qmark" else query.replace("?", "%s")

    @abstractmethod
    def _session(self, lock_job_id: str | None = None, *, readonly: bool = False) -> AbstractContextManager[Cursor]:
        """A cursor inside one transaction (commit on success, rollback on error).

        With ``lock_job_id``, the transaction first serialises against other writers of that job.
        ``readonly`` promises that the transaction writes nothing (it may use a read connection).
        """

    def _query(self, cur: Cursor, query: str, params: Sequence[Any] = ()) -> Any:
        return cur.execute(self.sql(query), params)

    def _row_to_job(self, row: Sequence[Any]) -> JobRecord:
        """A ``jobs`` row as a :class:`JobRecord`, its policy state brought up to date
        (:attr:`Store.policy_state_upgrade`) once, here, where it is decoded."""
        _, spec_json, state_json, created, decisions = row
        spec = JobSpec.from_dict(json.loads(spec_json))
        state = json.loads(state_json)
        if self.policy_state_upgrade is not None:
            state = self.policy_state_upgrade(spec, state)
        return JobRecord(spec, state, float(created), int(decisions))

    def create_job(self, job: JobRecord) -> tuple[JobRecord, bool]:
        with self._session() as cur:
            self._query(
                cur,
                "INSERT INTO jobs (job_id, spec, policy_state, created_unix_s, decisions, revision)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id) DO NOTHING",
                (
                    job.spec.job_id,
                    json.dumps(job.spec.to_dict()),
                    _state_to_json(job.policy_state),
                    job.created_unix_s,
                    job.decisions,
                    self.revisions.new(),
                ),
            )
            created = cur.rowcount == 1 if hasattr(cur, "rowcount") else True
            self._query(cur, _JOB_SELECT + " WHERE job_id = ?", (job.spec.job_id,))
            return self._row_to_job(cur.fetchone()), created

    def get_job(self, job_id: str) -> JobRecord:
        with self._session(readonly=True) as cur:
            self._query(cur, _JOB_SELECT + " WHERE job_id = ?", (job_id,))
            row = cur.fetchone()
        if row is None:
            raise NotFoundError(f"job {job_id!r} not found")
        return self._row_to_job(row)

    def list_jobs(
        self, prefix: str = "", limit: int = 100, after_job_id: str = "", scopes: Sequence[str] = ()
    ) -> list[JobRecord]:
        prefixes = scoped_prefixes(prefix, scopes)
        if not prefixes:
            return []
        # Prefix match without LIKE so that '%' and '_' in ids are literal.
        match = " OR ".join("substr(job_id, 1, ?) = ?" for _ in prefixes)
        params: list[Any] = [value for p in prefixes for value in (len(p), p)]
        with self._session(readonly=True) as cur:
            self._query(
                cur,
                _JOB_SELECT + f" WHERE ({match}) AND job_id > ? ORDER BY job_id LIMIT ?",
                (*params, after_job_id, limit),
            )
            return [self._row_to_job(r) for r in cur.fetchall()]

    def delete_job(self, job_id: str) -> None:
        self._cache_take(job_id)
        with self._session(lock_job_id=job_id) as cur:
            self._query(cur, "DELETE FROM profiles WHERE job_id = ?", (job_id,))
            self._query(cur, "DELETE FROM runs WHERE job_id = ?", (job_id,))
            self._query(cur, "DELETE FROM jobs WHERE job_id = ?", (job_id,))
            if cur.rowcount == 0:
                raise NotFoundError(f"job {job_id!r} not found")

    @contextmanager
    def job_transaction(self, job_id: str) -> Iterator[JobTransaction]:
        started = time.perf_counter()
        try:
            with self._session(lock_job_id=job_id) as cur:
                # The transaction owns the aggregate: it goes back into the cache only if the
                # transaction succeeds, so a failure half-way never leaves a changed copy behind.
                aggregate = self._cache_take(job_id)
                if aggregate is None or not self._cache_is_current():
                    self._query(cur, "SELECT revision FROM jobs WHERE job_id = ?", (job_id,))
                    row = cur.fetchone()
                    if row is None:
                        raise NotFoundError(f"job {job_id!r} not found")
                    if aggregate is None or aggregate.revision != row[0] or not row[0]:
                        self._query(cur, _JOB_SELECT + " WHERE job_id = ?", (job_id,))
                        aggregate = JobAggregate.of(row[0], self._row_to_job(cur.fetchone()))
                tx = SqlJobTransaction(self, cur, aggregate)
                yield tx
                tx.finish()
            self._cache_put(job_id, aggregate)
        finally:
            if self.transaction_observer is not None:
                self.transaction_observer(time.perf_counter() - started)

    def totals(self) -> dict[str, Any]:
        with self._session(readonly=True) as cur:
            self._query(cur, "SELECT COUNT(*) FROM jobs")
            jobs = int(cur.fetchone()[0])
            self._query(cur, "SELECT state, COUNT(*) FROM runs GROUP BY state")
            runs = dict.fromkeys(RUN_STATES, 0) | {str(s): int(n) for s, n in cur.fetchall()}
        return {"jobs": jobs, "runs": runs}

    def run_gpu_models(self) -> set[str]:
        with self._session(readonly=True) as cur:
            self._query(cur, "SELECT DISTINCT gpu_model FROM runs")
            return {str(model) for (model,) in cur.fetchall()}

    def list_runs(self, job_id: str, limit: int = 0) -> list[RunRecord]:
        with self._session(readonly=True) as cur:
            if limit > 0:
                self._query(cur, _RUN_SELECT + " WHERE job_id = ? ORDER BY seq DESC LIMIT ?", (job_id, limit))
                return [row_to_run(r) for r in reversed(cur.fetchall())]
            self._query(cur, _RUN_SELECT + " WHERE job_id = ? ORDER BY seq", (job_id,))
            return [row_to_run(r) for r in cur.fetchall()]

    def list_runs_after(self, job_id: str, after_seq: int, limit: int) -> list[RunRecord]:
        with self._session(readonly=True) as cur:
            self._query(
                cur, _RUN_SELECT + " WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?", (job_id, after_seq, limit)
            )
            return [row_to_run(r) for r in cur.fetchall()]

    def run_groups(self, job_id: str, window_start_unix_s: float = 0.0) -> list[RunGroup]:
        with self._session(readonly=True) as cur:
            self._query(
                cur,
                "SELECT gpu_model, batch_size, power_limit_w, state, reached_target, in_window, COUNT(*),"
                " SUM(energy_j), SUM(time_s), SUM(epochs), MAX(max_power_w / gpu_count), MAX(created_unix_s)"
                " FROM (SELECT *, CASE WHEN state <> ? AND finished_unix_s >= ? THEN 1 ELSE 0 END AS in_window"
                " FROM runs WHERE job_id = ?) AS r"
                " GROUP BY gpu_model, batch_size, power_limit_w, state, reached_target, in_window"
                " ORDER BY gpu_model, batch_size, power_limit_w, state, reached_target, in_window",
                (RUN_IN_FLIGHT, window_start_unix_s, job_id),
            )
            rows = cur.fetchall()
        return [
            RunGroup(
                str(gpu), int(b), float(limit), str(state), bool(reached), bool(in_window), int(n),
                float(energy), float(time_s), float(epochs), float(p_max), float(last),
            )  # fmt: skip
            for gpu, b, limit, state, reached, in_window, n, energy, time_s, epochs, p_max, last in rows
        ]

    def run_counts(self, job_id: str) -> dict[str, int]:
        counts = dict.fromkeys(RUN_STATES, 0)
        with self._session(readonly=True) as cur:
            self._query(cur, "SELECT state, COUNT(*) FROM runs WHERE job_id = ? GROUP BY state", (job_id,))
            for state, count in cur.fetchall():
                counts[state] = int(count)
        return counts

    def list_profiles(self, job_id: str) -> list[ProfileRecord]:
        with self._session(readonly=True) as cur:
            self._query(
                cur,
                "SELECT gpu_model, batch_size, power_limit_w, average_power_w, time_per_epoch_s, run_id"
                " FROM profiles WHERE job_id = ? ORDER BY gpu_model, batch_size, power_limit_w",
                (job_id,),
            )
            rows = cur.fetchall()
        profiles: dict[tuple[str, int], ProfileRecord] = {}
        for gpu, batch_size, limit, power, epoch_time, run_id in rows:
            record = profiles.setdefault(
                (gpu, int(batch_size)), ProfileRecord(gpu, int(batch_size), run_id=run_id)
            )
            record.points[float(limit)] = ProfilePoint(float(limit), float(power), float(epoch_time))
        return list(profiles.values())

    def expired_runs(self, now_unix_s: float) -> Iterator[tuple[str, str]]:
        with self._session(readonly=True) as cur:
            self._query(
                cur,
                "SELECT job_id, run_id FROM runs WHERE state = ? AND lease_expires_unix_s < ?",
                (RUN_IN_FLIGHT, now_unix_s),
            )
            rows = cur.fetchall()
        yield from ((str(j), str(r)) for j, r in rows)
