"""SQLite store: the embedded default, one file, zero setup.

Durability settings: WAL journal with ``synchronous=FULL`` (every commit is fsynced before it is
acknowledged, so a completion the client saw survives a crash or power cut), ``busy_timeout``
5 s, and ``BEGIN IMMEDIATE`` so writers are serialised. In the server, operations run on the
event loop's thread, and those that arrive together share one COMMIT made on a committer thread
(group commit, see :meth:`SqliteStore.submit`), so the fsync is paid once per batch.
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
from pathlib import Path
from typing import Any, TypeVar

from optimizer_server.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from optimizer_server.rate_limited_log import RateLimitedLog
from optimizer_server.store.base import DATABASE_UNAVAILABLE
from optimizer_server.store.sql import Cursor, SqlStore

log = logging.getLogger("powerbandit.store.sqlite")
_outage_log = RateLimitedLog(log, interval_s=10.0)

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
    # 2: a revision token per job, changed by every write to the job (see store/sql.py)
    "ALTER TABLE jobs ADD COLUMN revision TEXT NOT NULL DEFAULT ''",
    # 3: how each run's power limit was applied ("" = not reported, "nvml", "agent", "none", "simulated")
    "ALTER TABLE runs ADD COLUMN power_limit_control TEXT NOT NULL DEFAULT ''",
]
SCHEMA_VERSION = len(MIGRATIONS)


T = TypeVar("T")


class _LoopBatcher:
    """Group commit on the event loop: operations run on the loop's thread, COMMIT on another.

    The first operation of a batch opens a transaction (``BEGIN IMMEDIATE``) and schedules the
    COMMIT for the end of the current loop iteration, so every operation that runs in that
    iteration joins the batch (each in its own savepoint). The COMMIT (the fsync) runs on a
    committer thread while the loop goes on serving; operations that arrive meanwhile wait for it
    and then form the next batch. Callers get their results only once their batch is on disk.
    Running the operations on the loop's own thread avoids handing every call to another thread
    and back, which costs more than the operations themselves.
    """

    def __init__(self, store: SqliteStore, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop
        self.thread_id = threading.get_ident()
        self.open = False  # a batch transaction is open on the loop's thread
        self.pending: list[tuple[asyncio.Future[Any], bool, Any]] = []
        self.committing: asyncio.Future[None] | None = None
        self.commits: queue.SimpleQueue[tuple[list[Any], asyncio.Future[None]] | None] = queue.SimpleQueue()
        self.committer = threading.Thread(target=self._committer, name="powerbandit-sqlite-commit", daemon=True)
        self.committer.start()

    def in_batch(self) -> bool:
        """True while an operation of the open batch runs (on the loop's thread)."""
        return self.open and threading.get_ident() == self.thread_id

    async def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        while self.committing is not None:
            await self.committing  # the previous batch is being made durable
        if not self.open:
            self.store._lock.acquire()  # released by the committer once the batch is committed
            try:
                self.store._conn.execute("BEGIN IMMEDIATE")
                self.store._check_data_version(self.store._conn)
            except sqlite3.OperationalError as exc:
                if self.store._conn.in_transaction:  # BEGIN went through, the PRAGMA did not
                    with contextlib.suppress(sqlite3.Error):
                        self.store._conn.execute("ROLLBACK")
                self.store._lock.release()
                raise self.store.unavailable("is busy", exc) from exc
            self.open = True
            self.loop.call_soon(self._commit)
        future: asyncio.Future[T] = self.loop.create_future()
        try:
            self.pending.append((future, True, fn(*args, **kwargs)))
        except Exception as exc:  # delivered to this caller only, after the batch commits
            self.pending.append((future, False, exc))
        return await future

    def _commit(self) -> None:
        if not self.open:  # already committed by close()
            return
        batch, self.pending = self.pending, []
        self.open = False
        done: asyncio.Future[None] = self.loop.create_future()
        self.committing = done
        self.commits.put((batch, done))

    def _committer(self) -> None:
        """The committer thread: COMMIT each batch handed over, then deliver it on the loop."""
        while (item := self.commits.get()) is not None:
            batch, done = item
            error = self._commit_and_unlock()
            self.loop.call_soon_threadsafe(self._deliver, batch, error, done)

    def _commit_and_unlock(self) -> Exception | None:
        """COMMIT the batch transaction (ROLLBACK if that fails) and release the connection."""
        try:
            self.store._conn.execute("COMMIT")
            return None
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self.store._conn.execute("ROLLBACK")
            self.store._cache_clear()  # the batch's jobs were cached as if it had committed
            return self.store.unavailable("could not commit", exc)
        finally:
            self.store._lock.release()

    def _deliver(
        self, batch: list[tuple[asyncio.Future[Any], bool, Any]], error: Exception | None, done: asyncio.Future[None]
    ) -> None:
        for future, ok, value in batch:
            if future.cancelled():
                continue
            if error is not None:
                future.set_exception(error)
            elif ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        self.committing = None
        done.set_result(None)

    def close(self) -> None:
        """Stop the committer once it has committed what it was handed; commit a batch still open."""
        self.commits.put(None)
        self.committer.join(timeout=10)
        if self.open:  # closed from the loop before the batch's COMMIT callback ran
            self.open = False
            batch, self.pending = self.pending, []
            error = self._commit_and_unlock()
            if threading.get_ident() == self.thread_id and not self.loop.is_closed():
                done: asyncio.Future[None] = self.loop.create_future()
                self._deliver(batch, error, done)


class SqliteStore(SqlStore):
    """A :class:`~optimizer_server.store.base.Store` in one SQLite file.

    One connection, used by one thread at a time (the server calls the store from worker
    threads); writers take SQLite's write lock with ``BEGIN IMMEDIATE``.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
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
        self._data_version: int | None = None  # PRAGMA data_version at the last write transaction
        self._batcher: _LoopBatcher | None = None  # made by the first submit(), on its event loop
        # Plain reads from other threads (read(), the metrics endpoint) use their own read-only
        # connections: WAL lets them read committed data while the writer goes on.
        self._readers = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()  # guards the list only: never wait on the writer's lock
        self._shared_reads = str(path) == ":memory:"  # a second connection would see another database
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
    def _session(self, lock_job_id: str | None = None, *, readonly: bool = False) -> Iterator[Cursor]:
        """One store operation as one transaction, or as a savepoint of the worker's open batch."""
        if self._batcher is not None and self._batcher.in_batch():
            # Inside a batch on the event loop: the batch holds the lock and the transaction.
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
        if readonly and not self._shared_reads and not self._on_loop_thread():
            with self._read_session() as cur:
                yield cur
            return
        with self._lock:
            cur = self._conn.cursor()
            try:
                if lock_job_id is not None:
                    cur.execute("BEGIN IMMEDIATE")
                    try:
                        self._check_data_version(cur)
                    except sqlite3.Error:
                        cur.execute("ROLLBACK")
                        raise
                else:
                    cur.execute("BEGIN")
                try:
                    yield cur
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                else:
                    cur.execute("COMMIT")
            except sqlite3.OperationalError as exc:  # locked by another process, disk full, I/O error
                raise self.unavailable("is unavailable", exc) from exc
            finally:
                cur.close()

    def unavailable(self, what: str, exc: Exception) -> UnavailableError:
        """The error callers get when the file cannot be used; the details go to the log only."""
        _outage_log.warning("SQLite database %s %s: %s", self.path, what, exc)
        return UnavailableError(DATABASE_UNAVAILABLE)

    def _check_data_version(self, cur: Cursor) -> None:
        """At the start of a write transaction (under SQLite's write lock): if another connection
        has committed since the last one, forget every cached job."""
        version = cur.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._cache_clear()
            self._data_version = version

    def _cache_is_current(self) -> bool:
        # Every write transaction starts with _check_data_version, and holds the write lock from
        # then on: what is cached is what the database holds (see SqlStore._cache_is_current).
        return True

    def _on_loop_thread(self) -> bool:
        return self._batcher is not None and threading.get_ident() == self._batcher.thread_id

    @contextmanager
    def _read_session(self) -> Iterator[Cursor]:
        """A read transaction on this thread's read-only connection (one consistent snapshot)."""
        conn = getattr(self._readers, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=5.0)
                conn.execute("PRAGMA query_only=1")
                conn.execute("PRAGMA busy_timeout=5000")
            except sqlite3.Error as exc:
                raise self.unavailable("is unavailable", exc) from exc
            self._readers.conn = conn
            with self._readers_lock:
                self._reader_conns.append(conn)
        cur = conn.cursor()
        try:
            cur.execute("BEGIN")
            try:
                yield cur
            finally:
                cur.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise self.unavailable("is unavailable", exc) from exc
        finally:
            cur.close()

    async def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the event loop's thread, batched with concurrent calls into one COMMIT.

        Group commit (see :class:`_LoopBatcher`): calls in the same loop iteration share one
        transaction, each inside its own savepoint, and one COMMIT (one fsync, on a committer
        thread) makes all of them durable. A call's result is delivered only after that COMMIT
        succeeded, so nothing is acknowledged before it is on disk; a call that raises is rolled
        back to its savepoint and leaves the others intact. ``fn`` blocks the loop while it runs:
        store calls are short.
        """
        loop = asyncio.get_running_loop()
        if self._batcher is None or self._batcher.loop is not loop:
            if self._batcher is not None:
                self._batcher.close()
            self._batcher = _LoopBatcher(self, loop)
        return await self._batcher.submit(fn, *args, **kwargs)

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None
        with self._lock:
            self._conn.close()
        with self._readers_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
