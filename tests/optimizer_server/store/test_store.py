"""The store on its own: one behaviour suite (SQLite here; other implementations reuse it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from optimizer_server.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from optimizer_server.policy import JobSpec, ProfilePoint
from optimizer_server.store.base import (
    RUN_COMPLETED,
    RUN_IN_FLIGHT,
    JobRecord,
    ProfileRecord,
    RunRecord,
    Store,
    open_store,
)

SPEC = JobSpec("s/job", (32, 64), 64, 0.8, 10, seed=3)


def make_run(run_id: str, job_id: str = "s/job", **kw: object) -> RunRecord:
    values: dict[str, object] = dict(
        run_id=run_id, job_id=job_id, state=RUN_IN_FLIGHT, batch_size=64, power_limit_w=0.0,
        profile_power_limits_w=(100.0, 200.0), phase="explore", explanation="why", gpu_model="A40",
        gpu_count=1, max_power_w=300.0, created_unix_s=1.0, lease_expires_unix_s=100.0,
    )  # fmt: skip
    values.update(kw)
    return RunRecord(**values)  # type: ignore[arg-type]


@pytest.fixture
def store(any_db_url: str) -> Iterator[Store]:
    """Each test runs against SQLite and against PostgreSQL."""
    s = open_store(any_db_url)
    yield s
    s.close()


def test_jobs_create_get_list_delete(store: Store) -> None:
    job, created = store.create_job(JobRecord(SPEC, {"n": 1}, 5.0))
    assert created and job.spec == SPEC and job.policy_state == {"n": 1}
    again, created = store.create_job(JobRecord(SPEC, {"n": 2}, 6.0))
    assert not created and again.policy_state == {"n": 1}
    store.create_job(JobRecord(JobSpec("s/other_", (8,), 8, 1.0, 2), {}, 1.0))
    store.create_job(JobRecord(JobSpec("t/job", (8,), 8, 1.0, 2), {}, 1.0))
    assert [j.spec.job_id for j in store.list_jobs("s/")] == ["s/job", "s/other_"]
    assert [j.spec.job_id for j in store.list_jobs("s/other_")] == ["s/other_"]  # '_' is literal
    assert [j.spec.job_id for j in store.list_jobs(limit=1, after_job_id="s/job")] == ["s/other_"]
    store.delete_job("s/job")
    with pytest.raises(NotFoundError):
        store.get_job("s/job")
    with pytest.raises(NotFoundError):
        store.delete_job("s/job")


def test_transaction_commits_runs_profiles_and_state_together(store: Store) -> None:
    store.create_job(JobRecord(SPEC, {}, 0.0))
    with store.job_transaction("s/job") as tx:
        first = tx.insert_run(make_run("r1"))
        second = tx.insert_run(make_run("r2", request_id="key"))
        assert (first.seq, second.seq) == (0, 1)
        tx.put_profile(ProfileRecord("A40", 64, {100.0: ProfilePoint(100.0, 90.0, 12.0)}, "r1"))
        tx.save_job({"seen": 2, "best": float("inf")}, 2)
    with store.job_transaction("s/job") as tx:
        assert tx.find_run_by_request("key").run_id == "r2"
        assert tx.find_run_by_request("nope") is None
        assert [r.run_id for r in tx.runs_in_flight()] == ["r1", "r2"]
        assert tx.profiles("A40") == {64: {100.0: ProfilePoint(100.0, 90.0, 12.0)}}
        assert tx.profiles("V100") == {}
        run = tx.get_run("r1")
        run.state, run.energy_j, run.reached_target = RUN_COMPLETED, 5.0, True
        tx.update_run(run)
    job = store.get_job("s/job")
    assert job.policy_state == {"seen": 2, "best": float("inf")} and job.decisions == 2
    assert store.run_counts("s/job")["completed"] == 1 and store.run_counts("s/job")["in_flight"] == 1
    assert [r.run_id for r in store.list_runs("s/job", limit=1)] == ["r2"]
    stored = store.list_runs("s/job")[0]
    assert (
        stored.energy_j == 5.0 and stored.reached_target and stored.profile_power_limits_w == (100.0, 200.0)
    )
    assert [(p.gpu_model, p.batch_size) for p in store.list_profiles("s/job")] == [("A40", 64)]


def test_a_failed_transaction_changes_nothing(store: Store) -> None:
    store.create_job(JobRecord(SPEC, {"v": 0}, 0.0))
    with pytest.raises(RuntimeError), store.job_transaction("s/job") as tx:
        tx.insert_run(make_run("r1"))
        tx.save_job({"v": 1}, 1)
        raise RuntimeError("boom")
    assert store.get_job("s/job").policy_state == {"v": 0}
    assert store.list_runs("s/job") == []


def test_a_failed_transaction_leaves_no_changed_copy_in_the_cache(store: Store) -> None:
    """Transactions reuse the decoded job; one that fails half-way must not leak its changes."""
    store.create_job(JobRecord(SPEC, {"v": 0}, 0.0))
    with store.job_transaction("s/job") as tx:
        tx.insert_run(make_run("r1"))
    with pytest.raises(RuntimeError), store.job_transaction("s/job") as tx:
        tx.job.policy_state["v"] = 99  # a policy mutates the state in place before saving it
        run = tx.get_run("r1")
        run.state = RUN_COMPLETED
        tx.update_run(run)
        tx.insert_run(make_run("r2"))
        raise RuntimeError("boom")
    with store.job_transaction("s/job") as tx:
        assert tx.job.policy_state == {"v": 0}
        assert [r.run_id for r in tx.runs_in_flight()] == ["r1"]
        assert tx.get_run("r1").state == RUN_IN_FLIGHT
        assert tx.insert_run(make_run("r3")).seq == 1


def test_a_write_by_another_store_is_seen(any_db_url: str) -> None:
    """Two stores on one database (two replicas, or the CLI beside a server): each sees the
    other's writes although both keep decoded jobs between transactions."""
    first, second = open_store(any_db_url), open_store(any_db_url)
    try:
        first.create_job(JobRecord(SPEC, {"v": 0}, 0.0))
        with first.job_transaction("s/job") as tx:
            tx.insert_run(make_run("r1"))
            tx.put_profile(ProfileRecord("A40", 64, {100.0: ProfilePoint(100.0, 90.0, 12.0)}, "r1"))
            assert tx.profiles("A40")[64][100.0].average_power_w == 90.0
        with second.job_transaction("s/job") as tx:
            run = tx.get_run("r1")
            run.state = RUN_COMPLETED
            tx.update_run(run)
            tx.insert_run(make_run("r2"))
            tx.put_profile(ProfileRecord("A40", 64, {100.0: ProfilePoint(100.0, 80.0, 12.0)}, "r2"))
            tx.save_job({"v": 1}, 5)
        with first.job_transaction("s/job") as tx:
            assert tx.job.policy_state == {"v": 1} and tx.job.decisions == 5
            assert [r.run_id for r in tx.runs_in_flight()] == ["r2"]
            assert tx.profiles("A40")[64][100.0].average_power_w == 80.0
            assert tx.insert_run(make_run("r3")).seq == 2
    finally:
        first.close()
        second.close()


def test_unknown_ids_raise_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError), store.job_transaction("nope"):
        pass
    store.create_job(JobRecord(SPEC, {}, 0.0))
    with pytest.raises(NotFoundError), store.job_transaction("s/job") as tx:
        tx.get_run("nope")


def test_expired_runs_are_listed(store: Store) -> None:
    store.create_job(JobRecord(SPEC, {}, 0.0))
    with store.job_transaction("s/job") as tx:
        tx.insert_run(make_run("old", lease_expires_unix_s=10.0))
        tx.insert_run(make_run("fresh", lease_expires_unix_s=1000.0))
    assert list(store.expired_runs(50.0)) == [("s/job", "old")]


def test_newer_schema_is_refused(any_db_url: str) -> None:
    open_store(any_db_url).close()
    if any_db_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(any_db_url.removeprefix("sqlite:///")) as conn:
            conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    else:
        import psycopg

        with psycopg.connect(any_db_url, autocommit=True) as conn:
            conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    with pytest.raises(FailedPreconditionError, match="newer"):
        open_store(any_db_url)


def test_bad_urls_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="unsupported database URL"):
        open_store("mysql://x")
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path}/missing/dir/x.db")
    with pytest.raises(InvalidArgumentError, match="cannot connect to PostgreSQL"):
        open_store("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")


def test_sqlite_close_commits_a_batch_still_open(tmp_path: Path) -> None:
    """Closing the store right after a call joined a batch (before its COMMIT ran) neither hangs
    nor loses the call."""
    import asyncio

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


def test_sqlite_reads_do_not_wait_for_the_writer(tmp_path: Path) -> None:
    """Plain reads use their own read-only connection: a write transaction in progress (here: the
    writer's lock held, as during a group commit) does not hold them up, and they see the last
    committed state."""
    import concurrent.futures

    store = open_store(f"sqlite:///{tmp_path / 'reads.db'}")
    try:
        store.create_job(JobRecord(SPEC, {"v": 0}, 0.0))
        with store._lock, concurrent.futures.ThreadPoolExecutor(1) as pool:  # type: ignore[attr-defined]
            store._conn.execute("BEGIN IMMEDIATE")  # type: ignore[attr-defined]
            store._conn.execute("UPDATE jobs SET policy_state = '{\"v\": 9}'")  # type: ignore[attr-defined]
            job = pool.submit(store.get_job, "s/job").result(timeout=10)
            assert job.policy_state == {"v": 0}  # not the uncommitted change
            assert pool.submit(store.run_counts, "s/job").result(timeout=10)["in_flight"] == 0
            store._conn.execute("ROLLBACK")  # type: ignore[attr-defined]
    finally:
        store.close()


def test_sqlite_a_batch_whose_commit_fails_leaves_no_cached_change(tmp_path: Path) -> None:
    """Job transactions in a group-commit batch put their jobs back in the cache before the
    batch's COMMIT; when that COMMIT fails (here: a deferred foreign key, checked only at COMMIT),
    the next transaction must see what the database holds, not the cached change."""
    import asyncio
    import sqlite3

    from optimizer_server.errors import UnavailableError

    store = open_store(f"sqlite:///{tmp_path / 'commit.db'}")
    conn = store._conn  # type: ignore[attr-defined]
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


def test_run_gpu_models_lists_every_model_with_runs(store: Store) -> None:
    assert store.run_gpu_models() == set()
    store.create_job(JobRecord(SPEC, {}, 0.0))
    with store.job_transaction("s/job") as tx:
        tx.insert_run(make_run("r1"))
        tx.insert_run(make_run("r2", gpu_model="V100"))
        tx.insert_run(make_run("r3", gpu_model="V100"))
    assert store.run_gpu_models() == {"A40", "V100"}
