"""PostgreSQL store: several stateless server replicas in front of one database.

Every change to a job runs in one transaction that first takes a row lock on the job
(``SELECT ... FOR UPDATE``), so writers of one job are serialised across replicas while different
jobs proceed in parallel. Connections come from a ``psycopg_pool`` pool. Schema migrations are
applied at start under an advisory lock (safe when replicas start together), and a database whose
schema is newer than this code is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool

from optimizer_server.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from optimizer_server.rate_limited_log import RateLimitedLog
from optimizer_server.store.base import DATABASE_UNAVAILABLE
from optimizer_server.store.schema import SCHEMA_VERSION, VERSION_TABLE, migration_statements
from optimizer_server.store.sql import Cursor, SqlStore

log = logging.getLogger("powerbandit.store.postgres")

_outage_log = RateLimitedLog(log, interval_s=10.0)

DEFAULT_TIMEOUT_S = 3.0
"""Seconds a call waits for a pooled connection: shorter than the SDK's deadlines, so that in a
database outage callers get UNAVAILABLE (and retry) rather than a deadline of their own."""

_MIGRATION_LOCK = 0x70B4  # advisory lock key: one migrator at a time

class PostgresStore(SqlStore):
    """A :class:`~optimizer_server.store.base.Store` in PostgreSQL (psycopg 3, pooled)."""

    paramstyle = "format"

    def __init__(
        self,
        url: str,
        *,
        min_connections: int = 1,
        max_connections: int = 16,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__()
        self.url = url
        self.timeout_s = timeout_s
        try:
            psycopg.connect(url, connect_timeout=5).close()  # fail fast, with the driver's reason
            self.pool = ConnectionPool(
                url,
                min_size=min_connections,
                max_size=max_connections,
                open=True,
                timeout=timeout_s,  # how long a call waits for a connection (in an outage: then UNAVAILABLE)
                name="powerbandit",
            )
            self.pool.wait(timeout=10.0)
        except (psycopg.Error, Exception) as exc:
            raise InvalidArgumentError(f"cannot connect to PostgreSQL at {_redact(url)}: {exc}") from exc
        self._migrate()

    def _migrate(self) -> None:
        with self.pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            cur.execute(VERSION_TABLE)
            cur.execute("SELECT MAX(version) FROM schema_version")
            current = int(cur.fetchone()[0] or 0)
            if current > SCHEMA_VERSION:
                raise FailedPreconditionError(
                    f"database {_redact(self.url)} has schema version {current}, newer than this powerbandit "
                    f"understands ({SCHEMA_VERSION}); upgrade powerbandit"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in migration_statements(version, "postgresql"):
                    cur.execute(statement)
                cur.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                log.info("applied schema migration %d", version)

    @contextmanager
    def _session(self, lock_job_id: str | None = None, *, readonly: bool = False) -> Iterator[Cursor]:
        try:
            with self.pool.connection() as conn, conn.cursor() as cur:
                if lock_job_id is not None:
                    cur.execute("SELECT 1 FROM jobs WHERE job_id = %s FOR UPDATE", (lock_job_id,))
                yield cur  # the pool commits on success and rolls back on an exception
        except (psycopg.OperationalError, TimeoutError) as exc:
            # the driver's text names hosts, users and databases: it stays in the server log
            _outage_log.warning("PostgreSQL at %s is unavailable: %s", _redact(self.url), exc)
            raise UnavailableError(DATABASE_UNAVAILABLE) from exc

    def close(self) -> None:
        self.pool.close()


def _redact(url: str) -> str:
    """``url`` without its password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable URL>"
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in info.items())
