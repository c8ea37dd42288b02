"""SQLite store: the embedded default, one file, zero setup.

Durability settings: WAL journal with ``synchronous=FULL`` (every commit is fsynced before it is
acknowledged, so a completion the client saw survives a crash or power cut), ``busy_timeout``
5 s, and ``BEGIN IMMEDIATE`` so writers are serialised.

Which thread runs what, in the server: changes (:meth:`SqliteStore.submit`) run on the event
loop's thread on the writer connection, and those that arrive together share one COMMIT made on
a committer thread (group commit, :mod:`optimizer_server.store.group_commit`), so the fsync is
paid once per batch. Plain reads (:meth:`Store.read`, the metrics endpoint) run on worker threads,
each on its own read-only connection, and never wait for the writer. Outside a server (the CLI,
tests) every call is its own transaction on the writer connection, on the caller's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from optimizer_server.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from optimizer_server.rate_limited_log import RateLimitedLog
from optimizer_server.store.base import DATABASE_UNAVAILABLE
from optimizer_server.store.group_commit import GroupCommitBatcher
from optimizer_server.store.schema import SCHEMA_VERSION, VERSION_TABLE, migration_statements
from optimizer_server.store.sql import Cursor, SqlStore

log = logging.getLogger("powerbandit.store.sqlite")
_outage_log = RateLimitedLog(log, interval_s=10.0)

T = TypeVar("T")


class SqliteStore(SqlStore):
    """A :class:`~optimizer_server.store.base.Store` in one SQLite file.

    One writer connection, used by one thread at a time (guarded by a lock; in the server, the
    event loop's thread and the committer thread), plus a read-only connection per reading thread.
    Writers take SQLite's write lock with ``BEGIN IMMEDIATE``.
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
        self._batcher: GroupCommitBatcher | None = None  # made by the first submit(), on its event loop
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
                self._conn.execute(VERSION_TABLE)
                row = self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
                current = int(row[0] or 0)
                if current > SCHEMA_VERSION:
                    raise FailedPreconditionError(
                        f"database {self.path} has schema version {current}, newer than this powerbandit "
                        f"understands ({SCHEMA_VERSION}); upgrade powerbandit"
                    )
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    for statement in migration_statements(version, "sqlite"):
                        self._conn.execute(statement)
                    self._conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                    log.info("applied schema migration %d to %s", version, self.path)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _session(self, lock_job_id: str | None = None, *, readonly: bool = False) -> Iterator[Cursor]:
        """One store operation as one transaction, or as a savepoint of the open group-commit batch."""
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
        return self._batcher is not None and self._batcher.on_loop_thread()

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

    # --------------------------------------------------------- group commit (the batcher's interface)
    def begin_batch(self) -> None:
        """Take the writer connection and open a batch transaction (see :class:`GroupCommitBatcher`).

        Raises ``UnavailableError`` when the database is locked or unusable, with the writer released.
        """
        self._lock.acquire()  # released by end_batch once the batch is committed
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._check_data_version(self._conn)
        except sqlite3.OperationalError as exc:
            if self._conn.in_transaction:  # BEGIN went through, the PRAGMA did not
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            self._lock.release()
            raise self.unavailable("is busy", exc) from exc
        except BaseException:
            self._lock.release()
            raise

    def end_batch(self) -> Exception | None:
        """COMMIT the batch transaction (ROLLBACK if that fails) and release the writer connection.

        Returns the error the batch's callers get when the COMMIT failed; the jobs the batch cached
        as if it had committed are forgotten then.
        """
        try:
            self._conn.execute("COMMIT")
            return None
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            self._cache_clear()
            return self.unavailable("could not commit", exc)
        finally:
            self._lock.release()

    async def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the event loop's thread, batched with concurrent calls into one COMMIT.

        Group commit (see :mod:`~optimizer_server.store.group_commit`): calls in the same loop iteration share one
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
            self._batcher = GroupCommitBatcher(self, loop)
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
