"""SQLite store: the embedded default, one file, zero setup.

Durability settings: WAL journal with ``synchronous=FULL`` (every commit is fsynced before it is
acknowledged, so a completion the client saw survives a crash or power cut), ``busy_timeout``
5 s, and ``BEGIN IMMEDIATE`` for every write so writers are serialised.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
        self._lock = threading.Lock()
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
        with self._lock:
            cur = self._conn.cursor()
            # Every session takes the write lock: simple, and SQLite serialises writers anyway.
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

    def close(self) -> None:
        with self._lock:
            self._conn.close()
