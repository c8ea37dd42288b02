"""SQLite store: the embedded default, one file, zero setup.

Durability settings: WAL journal with ``synchronous=FULL`` (every commit is fsynced before it is
acknowledged, so a completion the client saw survives a crash or power cut), ``busy_timeout``
5 s, and ``BEGIN IMMEDIATE`` so writers are serialised. In the server, operations run on one
writer thread, and those that arrive together share one COMMIT (group commit, see
:meth:`SqliteStore.submit`), so the fsync is paid once per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from optimizer_server.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from optimizer_server.store.sql import Cursor, SqlStore

log = logging.getLogger("powerbandit.store.sqlite")

MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        policy_state TEXT NOT NULL,
        created_unix_s REAL NOT NULL,
        decisions INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        state TEXT NOT NULL,
        batch_size INTEGER NOT NULL,
        power_limit_w REAL NOT NULL,
        profile_power_limits_w TEXT NOT NULL,
        phase TEXT NOT NULL,
        explanation TEXT NOT NULL,
        gpu_model TEXT NOT NULL,
        gpu_count INTEGER NOT NULL,
        max_power_w REAL NOT NULL,
        request_id TEXT NOT NULL,
        created_unix_s REAL NOT NULL,
        lease_expires_unix_s REAL NOT NULL,
        finished_unix_s REAL NOT NULL,
        energy_j REAL NOT NULL,
        time_s REAL NOT NULL,
        epochs REAL NOT NULL,
        reached_target INTEGER NOT NULL,
        cost REAL NOT NULL,
        final_metric REAL,
        reason TEXT NOT NULL,
        profiled INTEGER NOT NULL,
        epoch_cost REAL
    );
    CREATE UNIQUE INDEX runs_job_seq ON runs (job_id, seq);
    CREATE INDEX runs_job_request ON runs (job_id, request_id);
    CREATE INDEX runs_state_lease ON runs (state, lease_expires_unix_s);
    CREATE TABLE profiles (
        job_id TEXT NOT NULL,
        gpu_model TEXT NOT NULL,
        batch_size INTEGER NOT NULL,
        power_limit_w REAL NOT NULL,
        average_power_w REAL NOT NULL,
        time_per_epoch_s REAL NOT NULL,
        run_id TEXT NOT NULL,
        PRIMARY KEY (job_id, gpu_model, batch_size, power_limit_w)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


T = TypeVar("T")


@dataclass
class _Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


class _BatchWriter:
    """The one thread that writes: takes queued calls, runs them as one batch, resolves them."""

    MAX_BATCH = 64

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="powerbandit-sqlite-writer", daemon=True)
        self.thread.start()

    def is_current_thread(self) -> bool:
        return threading.current_thread() is self.thread

    async def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self.queue.put(_Call(fn, args, kwargs, loop, future))
        return await future

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            calls = [first]
            stop = False
            while len(calls) < self.MAX_BATCH:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                calls.append(nxt)
            for call, (ok, value) in zip(calls, self.store._run_batch(calls), strict=True):
                call.loop.call_soon_threadsafe(_resolve, call.future, ok, value)
            if stop:
                return

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)


def _resolve(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class SqliteStore(SqlStore):
    """A :class:`~optimizer_server.store.base.Store` in one SQLite file.

    One connection, used by one thread at a time (the server calls the store from worker
    threads); writers take SQLite's write lock with ``BEGIN IMMEDIATE``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:" and not self.path.parent.exists():
            raise InvalidArgumentError(
                f"cannot create SQLite database {path}: folder {self.path.parent} does not exist"
            )
        try:
            self._conn = sqlite3.connect(
                str(path), check_same_thread=False, isolation_level=None, timeout=5.0
            )
        except sqlite3.Error as exc:
            raise InvalidArgumentError(f"cannot open SQLite database {path}: {exc}") from exc
        self._lock = threading.Lock()  # guards the connection
        self._worker: _BatchWriter | None = None  # started by the first submit()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                row = self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
                current = int(row[0] or 0)
                if current > SCHEMA_VERSION:
                    raise FailedPreconditionError(
                        f"database {self.path} has schema version {current}, newer than this powerbandit "
                        f"understands ({SCHEMA_VERSION}); upgrade powerbandit"
                    )
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[version - 1].split(";"):
                        if statement.strip():
                            self._conn.execute(statement)
                    self._conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                    log.info("applied schema migration %d to %s", version, self.path)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _session(self, lock_job_id: str | None = None) -> Iterator[Cursor]:
        """One store operation as one transaction, or as a savepoint of the worker's open batch."""
        if self._worker is not None and self._worker.is_current_thread():
            # Inside a batch of the writer thread: the batch holds the lock and the transaction.
            cur = self._conn.cursor()
            cur.execute("SAVEPOINT op")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK TO op")
                raise
            finally:
                cur.execute("RELEASE op")
                cur.close()
            return
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE" if lock_job_id is not None else "BEGIN")
                try:
                    yield cur
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                else:
                    cur.execute("COMMIT")
            except sqlite3.OperationalError as exc:  # locked by another process, disk full, I/O error
                raise UnavailableError(f"SQLite database {self.path} is unavailable: {exc}") from exc
            finally:
                cur.close()

    async def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the writer thread, batched with concurrent calls into one COMMIT.

        Group commit: calls that queue up while a batch runs or commits form the next batch, each
        inside its own savepoint, and one COMMIT (one fsync) makes all of them durable. A call's
        result is delivered only after that COMMIT succeeded, so nothing is acknowledged before it
        is on disk; a call that raises is rolled back to its savepoint and leaves the others intact.
        """
        if self._worker is None:
            with self._lock:
                if self._worker is None:
                    self._worker = _BatchWriter(self)
        return await self._worker.submit(fn, *args, **kwargs)

    def _run_batch(self, calls: list[_Call]) -> list[tuple[bool, Any]]:
        """Run ``calls`` in one transaction (the writer thread's job); ``(ok, result or error)`` each."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                error = UnavailableError(f"SQLite database {self.path} is busy: {exc}")
                return [(False, error) for _ in calls]
            results: list[tuple[bool, Any]] = []
            for call in calls:
                try:
                    results.append((True, call.fn(*call.args, **call.kwargs)))
                except BaseException as exc:  # delivered to that caller only
                    results.append((False, exc))
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                error = UnavailableError(f"SQLite database {self.path} could not commit: {exc}")
                return [(False, error) for _ in calls]
            return results

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        with self._lock:
            self._conn.close()
