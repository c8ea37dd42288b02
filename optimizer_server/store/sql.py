"""The store written once in portable SQL; SQLite and PostgreSQL supply connections and locking.

Subclasses implement :meth:`SqlStore._session` (a connection inside one transaction, optionally
holding the lock that serialises writers of one job) and provide their dialect's schema.
Queries here use ``?`` placeholders; a subclass may rewrite them (``paramstyle``).
"""

from __future__ import annotations

import json
import time
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from optimizer_server.errors import NotFoundError
from optimizer_server.policy.base import JobSpec, ProfilePoint
from optimizer_server.store.base import (
    RUN_IN_FLIGHT,
    RUN_STATES,
    JobRecord,
    JobTransaction,
    ProfileRecord,
    RunRecord,
    Store,
)

RUN_COLUMNS = (
    "run_id", "job_id", "seq", "state", "batch_size", "power_limit_w", "profile_power_limits_w",
    "phase", "explanation", "gpu_model", "gpu_count", "max_power_w", "request_id",
    "created_unix_s", "lease_expires_unix_s", "finished_unix_s", "energy_j", "time_s", "epochs",
    "reached_target", "cost", "final_metric", "reason", "profiled", "epoch_cost",
)  # fmt: skip
_RUN_SELECT = "SELECT " + ", ".join(RUN_COLUMNS) + " FROM runs"
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
        json.dumps(list(run.profile_power_limits_w)), run.phase, run.explanation, run.gpu_model,
        run.gpu_count, run.max_power_w, run.request_id, run.created_unix_s,
        run.lease_expires_unix_s, run.finished_unix_s, run.energy_j, run.time_s, run.epochs,
        int(run.reached_target), run.cost, run.final_metric, run.reason, int(run.profiled),
        run.epoch_cost,
    )  # fmt: skip


def row_to_run(row: Sequence[Any]) -> RunRecord:
    """Inverse of :func:`run_to_row`."""
    values = dict(zip(RUN_COLUMNS, row, strict=True))
    values["profile_power_limits_w"] = tuple(float(p) for p in json.loads(values["profile_power_limits_w"]))
    values["reached_target"] = bool(values["reached_target"])
    values["profiled"] = bool(values["profiled"])
    return RunRecord(**values)


def _state_to_json(state: dict[str, Any]) -> str:
    # allow_nan: policy states may hold inf (e.g. "no best cost yet"); Python's json reads it back.
    return json.dumps(state, allow_nan=True, separators=(",", ":"))


def row_to_job(row: Sequence[Any]) -> JobRecord:
    """A ``jobs`` row as a :class:`JobRecord`."""
    _, spec, state, created, decisions = row
    return JobRecord(JobSpec.from_dict(json.loads(spec)), json.loads(state), float(created), int(decisions))


class SqlJobTransaction(JobTransaction):
    """A job transaction over one cursor."""

    def __init__(self, store: SqlStore, cursor: Cursor, job: JobRecord) -> None:
        self._store = store
        self._cur = cursor
        self.job = job

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cur.execute(self._store.sql(sql), params)

    def get_run(self, run_id: str) -> RunRecord:
        self._execute(_RUN_SELECT + " WHERE run_id = ? AND job_id = ?", (run_id, self.job.spec.job_id))
        row = self._cur.fetchone()
        if row is None:
            raise NotFoundError(f"run {run_id!r} not found in job {self.job.spec.job_id!r}")
        return row_to_run(row)

    def find_run_by_request(self, request_id: str) -> RunRecord | None:
        self._execute(
            _RUN_SELECT + " WHERE job_id = ? AND request_id = ?", (self.job.spec.job_id, request_id)
        )
        row = self._cur.fetchone()
        return None if row is None else row_to_run(row)

    def list_runs(self) -> list[RunRecord]:
        self._execute(_RUN_SELECT + " WHERE job_id = ? ORDER BY seq", (self.job.spec.job_id,))
        return [row_to_run(r) for r in self._cur.fetchall()]

    def runs_in_flight(self) -> list[RunRecord]:
        self._execute(
            _RUN_SELECT + " WHERE job_id = ? AND state = ? ORDER BY seq",
            (self.job.spec.job_id, RUN_IN_FLIGHT),
        )
        return [row_to_run(r) for r in self._cur.fetchall()]

    def insert_run(self, run: RunRecord) -> RunRecord:
        self._execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM runs WHERE job_id = ?", (run.job_id,))
        run.seq = int(self._cur.fetchone()[0])
        placeholders = ", ".join("?" for _ in RUN_COLUMNS)
        self._execute(f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({placeholders})", run_to_row(run))
        return run

    def update_run(self, run: RunRecord) -> None:
        mutable = [c for c in RUN_COLUMNS if c not in ("run_id", "job_id", "seq")]
        row = dict(zip(RUN_COLUMNS, run_to_row(run), strict=True))
        assignments = ", ".join(f"{c} = ?" for c in mutable)
        self._execute(
            f"UPDATE runs SET {assignments} WHERE run_id = ?", [row[c] for c in mutable] + [run.run_id]
        )

    def profiles(self, gpu_model: str) -> dict[int, dict[float, ProfilePoint]]:
        self._execute(
            "SELECT batch_size, power_limit_w, average_power_w, time_per_epoch_s FROM profiles"
            " WHERE job_id = ? AND gpu_model = ?",
            (self.job.spec.job_id, gpu_model),
        )
        result: dict[int, dict[float, ProfilePoint]] = {}
        for batch_size, limit, power, epoch_time in self._cur.fetchall():
            result.setdefault(int(batch_size), {})[float(limit)] = ProfilePoint(limit, power, epoch_time)
        return result

    def put_profile(self, profile: ProfileRecord) -> None:
        job_id = self.job.spec.job_id
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

    def save_job(self, policy_state: dict[str, Any] | None, decisions: int) -> None:
        if policy_state is None:  # a suggestion: only the counter moves
            self._execute("UPDATE jobs SET decisions = ? WHERE job_id = ?", (decisions, self.job.spec.job_id))
        else:
            self._execute(
                "UPDATE jobs SET policy_state = ?, decisions = ? WHERE job_id = ?",
                (_state_to_json(policy_state), decisions, self.job.spec.job_id),
            )
            self.job.policy_state = policy_state
        self.job.decisions = decisions


class SqlStore(Store):
    """Everything of :class:`Store` except connections, locking and schema."""

    paramstyle = "qmark"

    def sql(self, query: str) -> str:
        """``query`` in this driver's parameter style."""
        return query if self.paramstyle == "qmark" else query.replace("?", "%s")

    @abstractmethod
    def _session(self, lock_job_id: str | None = None) -> AbstractContextManager[Cursor]:
        """A cursor inside one transaction (commit on success, rollback on error).

        With ``lock_job_id``, the transaction first serialises against other writers of that job.
        """

    def _query(self, cur: Cursor, query: str, params: Sequence[Any] = ()) -> Any:
        return cur.execute(self.sql(query), params)

    def create_job(self, job: JobRecord) -> tuple[JobRecord, bool]:
        with self._session() as cur:
            self._query(
                cur,
                "INSERT INTO jobs (job_id, spec, policy_state, created_unix_s, decisions)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (job_id) DO NOTHING",
                (
                    job.spec.job_id,
                    json.dumps(job.spec.to_dict()),
                    _state_to_json(job.policy_state),
                    job.created_unix_s,
                    job.decisions,
                ),
            )
            created = cur.rowcount == 1 if hasattr(cur, "rowcount") else True
            self._query(cur, _JOB_SELECT + " WHERE job_id = ?", (job.spec.job_id,))
            return row_to_job(cur.fetchone()), created

    def get_job(self, job_id: str) -> JobRecord:
        with self._session() as cur:
            self._query(cur, _JOB_SELECT + " WHERE job_id = ?", (job_id,))
            row = cur.fetchone()
        if row is None:
            raise NotFoundError(f"job {job_id!r} not found")
        return row_to_job(row)

    def list_jobs(self, prefix: str = "", limit: int = 100, after_job_id: str = "") -> list[JobRecord]:
        with self._session() as cur:
            # Prefix match without LIKE so that '%' and '_' in ids are literal.
            self._query(
                cur,
                _JOB_SELECT + " WHERE substr(job_id, 1, ?) = ? AND job_id > ? ORDER BY job_id LIMIT ?",
                (len(prefix), prefix, after_job_id, limit),
            )
            return [row_to_job(r) for r in cur.fetchall()]

    def delete_job(self, job_id: str) -> None:
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
                self._query(cur, _JOB_SELECT + " WHERE job_id = ?", (job_id,))
                row = cur.fetchone()
                if row is None:
                    raise NotFoundError(f"job {job_id!r} not found")
                yield SqlJobTransaction(self, cur, row_to_job(row))
        finally:
            if self.transaction_observer is not None:
                self.transaction_observer(time.perf_counter() - started)

    def totals(self) -> dict[str, Any]:
        with self._session() as cur:
            self._query(cur, "SELECT COUNT(*) FROM jobs")
            jobs = int(cur.fetchone()[0])
            self._query(cur, "SELECT state, COUNT(*) FROM runs GROUP BY state")
            runs = dict.fromkeys(RUN_STATES, 0) | {str(s): int(n) for s, n in cur.fetchall()}
        return {"jobs": jobs, "runs": runs}

    def list_runs(self, job_id: str, limit: int = 0) -> list[RunRecord]:
        with self._session() as cur:
            if limit > 0:
                self._query(cur, _RUN_SELECT + " WHERE job_id = ? ORDER BY seq DESC LIMIT ?", (job_id, limit))
                return [row_to_run(r) for r in reversed(cur.fetchall())]
            self._query(cur, _RUN_SELECT + " WHERE job_id = ? ORDER BY seq", (job_id,))
            return [row_to_run(r) for r in cur.fetchall()]

    def run_counts(self, job_id: str) -> dict[str, int]:
        counts = dict.fromkeys(RUN_STATES, 0)
        with self._session() as cur:
            self._query(cur, "SELECT state, COUNT(*) FROM runs WHERE job_id = ? GROUP BY state", (job_id,))
            for state, count in cur.fetchall():
                counts[state] = int(count)
        return counts

    def list_profiles(self, job_id: str) -> list[ProfileRecord]:
        with self._session() as cur:
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
        with self._session() as cur:
            self._query(
                cur,
                "SELECT job_id, run_id FROM runs WHERE state = ? AND lease_expires_unix_s < ?",
                (RUN_IN_FLIGHT, now_unix_s),
            )
            rows = cur.fetchall()
        yield from ((str(j), str(r)) for j, r in rows)
