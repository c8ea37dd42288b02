"""The SQLite store: the store contract, and what only SQLite does (group commit, read connections)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from optimizer_server.errors import UnavailableError
from optimizer_server.store.base import JobRecord
from optimizer_server.store.open import open_store
from optimizer_server.store.sqlite import SqliteStore
from tests.optimizer_server.store.store_contract import SPEC, StoreContract, make_run


class TestSqliteStore(StoreContract):
    dialect = "sqlite"

    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'store.db'}"

    def execute_raw(self, url: str, statements: Sequence[str]) -> tuple[list[str], list[tuple[Any, ...]]]:
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            conn.execute("BEGIN")
            cur = conn.cursor()
            for statement in statements:
                cur.execute(statement)
            names = [d[0] for d in cur.description or ()]
            rows = [tuple(r) for r in cur.fetchall()]
            conn.execute("COMMIT")
            return names, rows
        finally:
            conn.close()


def _sqlite(tmp_path: Path, name: str) -> SqliteStore:
    store = open_store(f"sqlite:///{tmp_path / name}")
    assert isinstance(store, SqliteStore)
    return store


def test_calls_of_one_loop_iteration_share_one_commit(tmp_path: Path) -> None:
    """Group commit: the calls submitted together run in one transaction (one COMMIT), each in its
    own savepoint, so one that raises is rolled back alone and the others are kept."""
    store = _sqlite(tmp_path, "batch.db")
    try:
        for n in range(3):
            store.create_job(JobRecord(replace(SPEC, job_id=f"j{n}"), {"v": 0}, 0.0))
        commits: list[int] = []
        end_batch = store.end_batch

        def counting_end_batch() -> Exception | None:
            commits.append(1)
            return end_batch()

        store.end_batch = counting_end_batch  # type: ignore[method-assign]

        def change(job_id: str) -> str:
            with store.job_transaction(job_id) as tx:
                tx.insert_run(make_run(f"{job_id}-run", job_id=job_id))
                tx.save_job({"v": 1}, 1)
            return job_id

        def broken(job_id: str) -> None:
            with store.job_transaction(job_id) as tx:
                tx.insert_run(make_run("half", job_id=job_id))
                raise ValueError("this call only")

        async def scenario() -> list[Any]:
            return await asyncio.gather(
                store.submit(change, "j0"), store.submit(broken, "j1"), store.submit(change, "j2"),
                return_exceptions=True,
            )  # fmt: skip

        results = asyncio.run(asyncio.wait_for(scenario(), timeout=20))
        assert results[0] == "j0" and results[2] == "j2" and isinstance(results[1], ValueError)
        assert len(commits) == 1
        assert [store.get_job(j).policy_state for j in ("j0", "j1", "j2")] == [{"v": 1}, {"v": 0}, {"v": 1}]
        assert store.list_runs("j1") == [] and [r.run_id for r in store.list_runs("j2")] == ["j2-run"]
    finally:
        store.close()


def test_close_commits_a_batch_still_open(tmp_path: Path) -> None:
    """Closing the store right after a call joined a batch (before its COMMIT ran) neither hangs
    nor loses the call."""
    url = f"sqlite:///{tmp_path / 'close.db'}"
    store = open_store(url)
    store.create_job(JobRecord(SPEC, {"v": 0}, 0.0))

    def change() -> None:
        with store.job_transaction("s/job") as tx:
            tx.save_job({"v": 1}, 1)

    async def submit_then_close() -> None:
        task = asyncio.ensure_future(store.submit(change))
        await asyncio.sleep(0)  # the call runs and opens the batch; its COMMIT is only scheduled
        store.close()
        await task

    asyncio.run(asyncio.wait_for(submit_then_close(), timeout=20))
    reopened = open_store(url)
    try:
        assert reopened.get_job("s/job").policy_state == {"v": 1}
    finally:
        reopened.close()


def test_reads_do_not_wait_for_the_writer(tmp_path: Path) -> None:
    """Plain reads use their own read-only connection: a write transaction in progress (here: a
    batch open, as during a group commit) does not hold them up, and they see the last committed
    state."""
    store = _sqlite(tmp_path, "reads.db")
    try:
        store.create_job(JobRecord(SPEC, {"v": 0}, 0.0))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            store.begin_batch()  # holds the writer connection and SQLite's write lock
            try:
                store._conn.execute("UPDATE jobs SET policy_state = '{\"v\": 9}'")
                job = pool.submit(store.get_job, "s/job").result(timeout=10)
                assert job.policy_state == {"v": 0}  # not the uncommitted change
                assert pool.submit(store.run_counts, "s/job").result(timeout=10)["in_flight"] == 0
            finally:
                store._conn.execute("ROLLBACK")
                store._lock.release()
    finally:
        store.close()


def test_a_batch_whose_commit_fails_leaves_no_cached_change(tmp_path: Path) -> None:
    """Job transactions in a group-commit batch put their jobs back in the cache before the
    batch's COMMIT; when that COMMIT fails (here: a deferred foreign key, checked only at COMMIT),
    the next transaction must see what the database holds, not the cached change."""
    store = _sqlite(tmp_path, "commit.db")
    conn = store._conn
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TEMP TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute(
        "CREATE TEMP TABLE child (parent_id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    try:
        store.create_job(JobRecord(SPEC, {"v": 0}, 0.0))

        def read() -> dict[str, object]:
            with store.job_transaction("s/job") as tx:
                return dict(tx.job.policy_state)

        def change() -> None:
            with store.job_transaction("s/job") as tx:
                tx.save_job({"v": 1}, 1)

        def break_the_commit() -> None:
            conn.execute("INSERT INTO child (parent_id) VALUES (42)")  # no such parent

        async def scenario() -> None:
            assert await store.submit(read) == {"v": 0}  # the job is cached
            results = await asyncio.gather(
                store.submit(change), store.submit(break_the_commit), return_exceptions=True
            )
            assert all(isinstance(r, UnavailableError) for r in results), results
            assert await store.submit(read) == {"v": 0}

        asyncio.run(asyncio.wait_for(scenario(), timeout=20))
        assert store.get_job("s/job").policy_state == {"v": 0}
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA foreign_keys = OFF")
        store.close()
