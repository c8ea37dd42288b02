"""Opening a store by URL, and the schema both SQL dialects are rendered from."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer_server.errors import InvalidArgumentError
from optimizer_server.store import schema
from optimizer_server.store.open import open_store
from optimizer_server.store.sqlite import SqliteStore


def test_bad_urls_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="unsupported database URL"):
        open_store("mysql://x")
    with pytest.raises(InvalidArgumentError, match="without a path"):
        open_store("sqlite:///")
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path}/missing/dir/x.db")
    with pytest.raises(InvalidArgumentError, match="cannot connect to PostgreSQL"):
        open_store("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")


def test_a_sqlite_url_opens_the_file_it_names(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'named.db'}")
    try:
        assert isinstance(store, SqliteStore) and (tmp_path / "named.db").exists()
    finally:
        store.close()


def test_the_dialects_differ_only_in_column_types() -> None:
    for version in range(1, schema.SCHEMA_VERSION + 1):
        sqlite = schema.migration_statements(version, "sqlite")
        postgres = schema.migration_statements(version, "postgresql")
        assert len(sqlite) == len(postgres)
        for ours, theirs in zip(sqlite, postgres, strict=True):
            for kind, name in schema.COLUMN_TYPES["postgresql"].items():
                theirs = theirs.replace(f" {name}", f" {schema.COLUMN_TYPES['sqlite'][kind]}")
            assert ours == theirs
    assert "BIGINT" in schema.JOBS.render("postgresql") and "DOUBLE PRECISION" in schema.RUNS.render("postgresql")
    assert "PRIMARY KEY (job_id, gpu_model, batch_size, power_limit_w)" in schema.PROFILES.render("sqlite")
