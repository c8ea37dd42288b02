"""Opening a store by URL: the one module that knows every implementation.

:mod:`optimizer_server.store.base` defines the interface and knows none of them, so that the
implementations can import it without a cycle.
"""

from __future__ import annotations

from optimizer_server.errors import InvalidArgumentError
from optimizer_server.store.base import Store


def open_store(url: str, *, timeout_s: float | None = None) -> Store:
    """Open the store named by ``url``: ``sqlite:///PATH`` or ``postgresql://...``.

    ``timeout_s``: how long a call waits for a PostgreSQL connection (default: the store's).
    """
    if url.startswith("sqlite:///"):
        from optimizer_server.store.sqlite import SqliteStore

        # SQLAlchemy's convention: sqlite:///relative/path.db and sqlite:////absolute/path.db
        path = url.removeprefix("sqlite:///")
        if not path:
            raise InvalidArgumentError("sqlite URL without a path: use sqlite:///PATH")
        return SqliteStore(path)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from optimizer_server.store.postgres import PostgresStore
        except ImportError as exc:  # psycopg is an optional extra
            raise InvalidArgumentError(
                "PostgreSQL support needs the 'postgres' extra: pip install 'powerbandit[postgres]'"
            ) from exc
        return PostgresStore(url) if timeout_s is None else PostgresStore(url, timeout_s=timeout_s)
    raise InvalidArgumentError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://...")
