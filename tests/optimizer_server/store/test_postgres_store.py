"""The PostgreSQL store: the store contract, on a real PostgreSQL cluster (``postgres_server``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from tests.helpers import PostgresServer
from tests.optimizer_server.store.store_contract import StoreContract


class TestPostgresStore(StoreContract):
    dialect = "postgresql"

    @pytest.fixture
    def url(self, postgres_server: PostgresServer) -> str:
        return postgres_server.new_database()

    def execute_raw(self, url: str, statements: Sequence[str]) -> tuple[list[str], list[tuple[Any, ...]]]:
        import psycopg

        with psycopg.connect(url) as conn, conn.cursor() as cur:  # one transaction, committed on exit
            for statement in statements:
                cur.execute(statement)  # type: ignore[arg-type]
            names = [d.name for d in cur.description or ()]
            rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
            return names, rows
