"""The store contract as one behaviour suite, which every store runs by subclassing.

In the manner of OSS Vizier's ``datastore_test_lib.py``: :class:`StoreContract` holds the tests of
everything :mod:`optimizer_server.store.base` promises (jobs and paging, transactions and their
atomicity, conflicts between writers, the in-flight index, run groups and counts, schema
migrations, and that records are passed by value). A store's test module subclasses it and says
how to make a fresh database URL of its kind (:meth:`StoreContract.url`) and how to run raw SQL
on it, past the store (:meth:`StoreContract.execute_raw`); pytest collects the subclass (named ``Test...``), not
this class.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import pytest

from optimizer_server.errors import FailedPreconditionError, NotFoundError
from optimizer_server.policy import JobSpec, ProfilePoint
from optimizer_server.store.base import (
    RUN_COMPLETED,
    RUN_EXPIRED,
    RUN_FAILED,
    RUN_IN_FLIGHT,
    RUN_STATES,
    JobRecord,
    ProfileRecord,
    RunRecord,
    Store,
)
from optimizer_server.store.open import open_store
from optimizer_server.store.schema import SCHEMA_VERSION, VERSION_TABLE, Dialect, migration_statements
from optimizer_server.store.sql import RUN_COLUMNS

SPEC = JobSpec("s/job", (32, 64), 64, 0.8, 10, seed=3)


def make_run(run_id: str, job_id: str = "s/job", **fields: object) -> RunRecord:
    """A run in flight of :data:`SPEC`, with ``fields`` overridden."""
    values: dict[str, object] = dict(
        run_id=run_id, job_id=job_id, state=RUN_IN_FLIGHT, batch_size=64, power_limit_w=0.0,
        profile_power_limits_w=(100.0, 200.0), phase="explore", explanation="why", gpu_model="A40",
        gpu_count=1, max_power_w=300.0, created_unix_s=1.0, lease_expires_unix_s=100.0,
    )  # fmt: skip
    values.update(fields)
    return RunRecord(**values)  # type: ignore[arg-type]


def finish(run: RunRecord, state: str = RUN_COMPLETED, **fields: object) -> RunRecord:
    """``run`` finished at ``finished_unix_s`` 50 (a copy)."""
    return replace(run, state=state, finished_unix_s=50.0, **fields)  # type: ignore[arg-type]


POINT = ProfilePoint(100.0, 90.0, 12.0)


class StoreContract:
    """What every :class:`~optimizer_server.store.base.Store` does. Subclass it as ``Test<Kind>Store``."""

    dialect: Dialect

    @pytest.fixture
    def url(self) -> str:
        """A URL of a fresh, empty database of this kind."""
        raise NotImplementedError

    def execute_raw(self, url: str, statements: Sequence[str]) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run ``statements`` on the database at ``url`` in one transaction, past the store;
        returns the column names and rows of the last one (empty when it returns none)."""
        raise NotImplementedError

    @pytest.fixture
    def store(self, url: str) -> Iterator[Store]:
        s = open_store(url)
        yield s
        s.close()

    @pytest.fixture
    def job(self, store: Store) -> Store:
        """``store`` holding :data:`SPEC` with state ``{"v": 0}``."""
        store.create_job(JobRecord(SPEC, {"v": 0}, 0.0))
        return store

    # ---------------------------------------------------------------------------------- jobs
    def test_jobs_create_get_list_delete(self, store: Store) -> None:
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

    def test_a_job_keeps_every_field(self, store: Store) -> None:
        spec = JobSpec("s/full", (8, 16), 16, 0.25, 7, 0.3, 1.5, False, "zeus", 4, 99, 1.1)
        store.create_job(JobRecord(spec, {"inf": float("inf"), "nested": {"a": [1, 2.5, None]}}, 12.5, 3))
        job = store.get_job("s/full")
        assert job == JobRecord(spec, {"inf": float("inf"), "nested": {"a": [1, 2.5, None]}}, 12.5, 3)

    def test_jobs_page_in_id_order_within_prefix_and_scopes(self, store: Store) -> None:
        for job_id in ("b/2", "a/1", "b/1", "a%x", "c/1", "b/3"):
            store.create_job(JobRecord(replace(SPEC, job_id=job_id), {}, 0.0))
        pages, after = [], ""
        while page := store.list_jobs("b/", limit=2, after_job_id=after):
            pages.append([j.spec.job_id for j in page])
            after = page[-1].spec.job_id
        assert pages == [["b/1", "b/2"], ["b/3"]]
        assert [j.spec.job_id for j in store.list_jobs("a%")] == ["a%x"]  # '%' is literal
        assert [j.spec.job_id for j in store.list_jobs(scopes=("a/", "c/"))] == ["a/1", "c/1"]
        assert [j.spec.job_id for j in store.list_jobs("b/", scopes=("b/3",))] == ["b/3"]
        assert store.list_jobs("a/", scopes=("b/",)) == []  # no id can match both
        assert [j.spec.job_id for j in store.list_jobs(limit=2, after_job_id="b/3", scopes=("a", "c"))] == ["c/1"]

    def test_deleting_a_job_deletes_its_runs_and_profiles(self, job: Store) -> None:
        with job.job_transaction("s/job") as tx:
            tx.insert_run(make_run("r1"))
            tx.put_profile(ProfileRecord("A40", 64, {100.0: POINT}, "r1"))
        job.delete_job("s/job")
        assert job.list_runs("s/job") == [] and job.list_profiles("s/job") == []
        with pytest.raises(NotFoundError), job.job_transaction("s/job"):
            pass  # a cached copy of the job does not outlive it
        job.create_job(JobRecord(SPEC, {"new": True}, 1.0))
        with job.job_transaction("s/job") as tx:
            assert tx.job.policy_state == {"new": True} and tx.runs_in_flight() == []
            assert tx.insert_run(make_run("r2")).seq == 0

    def test_unknown_ids_raise_not_found(self, store: Store) -> None:
        with pytest.raises(NotFoundError), store.job_transaction("nope"):
            pass
        with pytest.raises(NotFoundError):
            store.get_job("nope")
        store.create_job(JobRecord(SPEC, {}, 0.0))
        with pytest.raises(NotFoundError), store.job_transaction("s/job") as tx:
            tx.get_run("nope")

    def test_a_run_of_another_job_is_not_found(self, job: Store) -> None:
        job.create_job(JobRecord(replace(SPEC, job_id="s/two"), {}, 0.0))
        with job.job_transaction("s/two") as tx:
            tx.insert_run(make_run("theirs", job_id="s/two", request_id="key"))
        with job.job_transaction("s/job") as tx:
            with pytest.raises(NotFoundError):
                tx.get_run("theirs")
            assert tx.find_run_by_request("key") is None

    # --------------------------------------------------------------------------- transactions
    def test_transaction_commits_runs_profiles_and_state_together(self, store: Store) -> None:
        store.create_job(JobRecord(SPEC, {}, 0.0))
        with store.job_transaction("s/job") as tx:
            first = tx.insert_run(make_run("r1"))
            second = tx.insert_run(make_run("r2", request_id="key"))
            assert (first.seq, second.seq) == (0, 1)
            tx.put_profile(ProfileRecord("A40", 64, {100.0: POINT}, "r1"))
            tx.save_job({"seen": 2, "best": float("inf")}, 2)
        with store.job_transaction("s/job") as tx:
            assert tx.find_run_by_request("key").run_id == "r2"  # type: ignore[union-attr]
            assert tx.find_run_by_request("nope") is None
            assert [r.run_id for r in tx.runs_in_flight()] == ["r1", "r2"]
            assert tx.profiles("A40") == {64: {100.0: POINT}}
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

    def test_a_run_keeps_every_field(self, job: Store) -> None:
        run = make_run(
            "r1", state=RUN_COMPLETED, batch_size=32, power_limit_w=175.5, profile_power_limits_w=(100.0, 175.5),
            phase="exploit", explanation="because", gpu_model="H100 x2", gpu_count=2, max_power_w=1400.0,
            created_unix_s=3.25, lease_expires_unix_s=9.5, request_id="req", finished_unix_s=7.75,
            energy_j=1e6, time_s=3600.5, epochs=4.5, reached_target=True, cost=123.25, final_metric=0.91,
            reason="done", profiled=True, epoch_cost=27.5, power_limit_control="agent", profile_stop_ratio=1.25,
        )  # fmt: skip
        with job.job_transaction("s/job") as tx:
            inserted = tx.insert_run(run)
        assert job.list_runs("s/job") == [inserted] == [replace(run, seq=0)]
        with job.job_transaction("s/job") as tx:
            assert tx.get_run("r1") == inserted and tx.find_run_by_request("req") == inserted

    def test_a_failed_transaction_changes_nothing(self, job: Store) -> None:
        with pytest.raises(RuntimeError), job.job_transaction("s/job") as tx:
            tx.insert_run(make_run("r1"))
            tx.put_profile(ProfileRecord("A40", 64, {100.0: POINT}, "r1"))
            tx.save_job({"v": 1}, 1)
            raise RuntimeError("boom")
        assert job.get_job("s/job").policy_state == {"v": 0}
        assert job.list_runs("s/job") == [] and job.list_profiles("s/job") == []

    def test_a_failed_transaction_leaves_no_changed_copy_behind(self, job: Store) -> None:
        """Transactions may reuse the decoded job; one that fails half-way must not leak its changes."""
        with job.job_transaction("s/job") as tx:
            tx.insert_run(make_run("r1"))
            assert tx.profiles("A40") == {}
        with pytest.raises(RuntimeError), job.job_transaction("s/job") as tx:
            tx.job.policy_state["v"] = 99  # a policy mutates the state in place before saving it
            run = tx.get_run("r1")
            run.state = RUN_COMPLETED
            tx.update_run(run)
            tx.insert_run(make_run("r2"))
            tx.put_profile(ProfileRecord("A40", 64, {100.0: POINT}, "r1"))
            tx.save_job(tx.job.policy_state, 7)
            raise RuntimeError("boom")
        with job.job_transaction("s/job") as tx:
            assert tx.job.policy_state == {"v": 0} and tx.job.decisions == 0
            assert [r.run_id for r in tx.runs_in_flight()] == ["r1"]
            assert tx.get_run("r1").state == RUN_IN_FLIGHT
            assert tx.profiles("A40") == {}
            assert tx.insert_run(make_run("r3")).seq == 1

    def test_save_job_without_a_state_keeps_the_state(self, job: Store) -> None:
        with job.job_transaction("s/job") as tx:
            tx.save_job(None, 5)
            assert tx.job.decisions == 5 and tx.job.policy_state == {"v": 0}
        assert job.get_job("s/job") == JobRecord(SPEC, {"v": 0}, 0.0, 5)

    def test_a_transaction_sees_its_own_changes(self, job: Store) -> None:
        with job.job_transaction("s/job") as tx:
            tx.insert_run(make_run("r1", request_id="k1"))
            run = tx.get_run("r1")
            run.power_limit_w = 150.0
            tx.update_run(run)
            assert tx.get_run("r1").power_limit_w == 150.0
            assert [r.run_id for r in tx.list_runs()] == ["r1"]
            tx.put_profile(ProfileRecord("A40", 64, {100.0: POINT}, "r1"))
            assert tx.profiles("A40") == {64: {100.0: POINT}}
            tx.save_job({"v": 1}, 1)
            assert tx.job.policy_state == {"v": 1} and tx.job.decisions == 1
            tx.update_run(finish(tx.get_run("r1")))
            assert tx.runs_in_flight() == [] and tx.count_in_flight() == 0
            assert tx.find_run_by_request("k1").state == RUN_COMPLETED  # type: ignore[union-attr]

    def test_a_profile_is_replaced_whole(self, job: Store) -> None:
        with job.job_transaction("s/job") as tx:
            tx.put_profile(ProfileRecord("A40", 64, {100.0: POINT, 200.0: ProfilePoint(200.0, 150.0, 9.0)}, "r1"))
        with job.job_transaction("s/job") as tx:
            assert set(tx.profiles("A40")[64]) == {100.0, 200.0}
            tx.put_profile(ProfileRecord("A40", 64, {300.0: ProfilePoint(300.0, 250.0, 8.0)}, "r2"))
            assert set(tx.profiles("A40")[64]) == {300.0}
        [profile] = job.list_profiles("s/job")
        assert profile == ProfileRecord("A40", 64, {300.0: ProfilePoint(300.0, 250.0, 8.0)}, "r2")

    # ------------------------------------------------------------------------------ conflicts
    def test_concurrent_transactions_on_one_job_lose_nothing(self, url: str, job: Store) -> None:
        """Writers of one job are serialised, in one store and across stores on the same database
        (two replicas): every increment read-modify-written in a transaction is counted once."""
        other = open_store(url)
        errors: list[BaseException] = []

        def increment(store: Store, worker: int) -> None:
            try:
                for i in range(10):
                    with store.job_transaction("s/job") as tx:
                        tx.insert_run(make_run(f"w{worker}-{i}"))
                        tx.save_job({"v": tx.job.policy_state["v"] + 1}, tx.job.decisions + 1)
            except BaseException as exc:  # reported below
                errors.append(exc)

        try:
            threads = [threading.Thread(target=increment, args=(s, n)) for n, s in enumerate([job, job, other, other])]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            assert not errors, errors
            for store in (job, other):
                assert store.get_job("s/job").policy_state == {"v": 40} and store.get_job("s/job").decisions == 40
                with store.job_transaction("s/job") as tx:
                    assert tx.job.policy_state == {"v": 40} and tx.count_in_flight() == 40
            assert sorted(r.seq for r in job.list_runs("s/job")) == list(range(40))
        finally:
            other.close()

    def test_a_write_by_another_store_is_seen(self, url: str) -> None:
        """Two stores on one database (two replicas, or the CLI beside a server): each sees the
        other's writes although both may keep decoded jobs between transactions."""
        first, second = open_store(url), open_store(url)
        try:
            first.create_job(JobRecord(SPEC, {"v": 0}, 0.0))
            with first.job_transaction("s/job") as tx:
                tx.insert_run(make_run("r1"))
                tx.put_profile(ProfileRecord("A40", 64, {100.0: POINT}, "r1"))
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
            second.delete_job("s/job")
            with pytest.raises(NotFoundError), first.job_transaction("s/job"):
                pass
        finally:
            first.close()
            second.close()

    # ------------------------------------------------------------------------- pass by value
    def test_records_a_store_returns_are_the_callers_own(self, job: Store) -> None:
        job.get_job("s/job").policy_state["v"] = 1
        job.list_jobs()[0].policy_state["v"] = 2
        job.create_job(JobRecord(SPEC, {}, 0.0))[0].policy_state["v"] = 3
        with job.job_transaction("s/job") as tx:
            tx.insert_run(make_run("r1"))
            tx.put_profile(ProfileRecord("A40", 64, {100.0: POINT}, "r1"))
        job.list_runs("s/job")[0].power_limit_w = 1.0
        job.list_runs_after("s/job", -1, 10)[0].power_limit_w = 2.0
        job.list_profiles("s/job")[0].points.clear()
        assert job.get_job("s/job").policy_state == {"v": 0}
        assert job.list_runs("s/job")[0].power_limit_w == 0.0
        assert job.list_profiles("s/job")[0].points == {100.0: POINT}

    def test_what_a_transaction_hands_out_is_the_callers_own(self, job: Store) -> None:
        """Changing what a transaction returned, without handing it back, changes nothing stored:
        neither in the database nor in what the next transaction sees."""
        with job.job_transaction("s/job") as tx:
            tx.insert_run(make_run("r1", request_id="k1"))
            tx.put_profile(ProfileRecord("A40", 64, {100.0: POINT}, "r1"))
        with job.job_transaction("s/job") as tx:
            tx.job.policy_state["v"] = 99
            tx.get_run("r1").power_limit_w = 1.0
            tx.find_run_by_request("k1").power_limit_w = 2.0  # type: ignore[union-attr]
            tx.runs_in_flight()[0].lease_expires_unix_s = 0.0
            tx.list_runs()[0].batch_size = 8
            profiles = tx.profiles("A40")
            profiles[64][200.0] = POINT
            profiles[32] = {}
        with job.job_transaction("s/job") as tx:
            assert tx.job.policy_state == {"v": 0}
            assert tx.get_run("r1") == replace(make_run("r1", request_id="k1"), seq=0)
            assert tx.in_flight_batch_sizes(50.0) == [64]
            assert tx.profiles("A40") == {64: {100.0: POINT}}
        assert job.get_job("s/job").policy_state == {"v": 0}

    def test_what_is_handed_in_is_stored_as_it_was(self, job: Store) -> None:
        """Changing a record, state or profile after handing it to the store changes nothing."""
        state: dict[str, Any] = {"v": 1, "arms": {"64": [1, 2]}}
        points = {100.0: POINT}
        run = make_run("r1")
        with job.job_transaction("s/job") as tx:
            tx.insert_run(make_run("r0"))
            inserted = tx.insert_run(run)
            assert (run.seq, inserted.seq) == (0, 1)
            run.batch_size = 8
            inserted.batch_size = 16
            tx.put_profile(ProfileRecord("A40", 64, points, "r1"))
            points[200.0] = POINT
            tx.save_job(state, 1)
            state["arms"]["64"].append(3)  # before the transaction commits
            changed = tx.get_run("r1")
            changed.power_limit_w = 150.0
            tx.update_run(changed)
            changed.power_limit_w = 999.0
        state["v"] = 2
        with job.job_transaction("s/job") as tx:
            assert tx.job.policy_state == {"v": 1, "arms": {"64": [1, 2]}}
            assert tx.get_run("r1").batch_size == 64 and tx.get_run("r1").power_limit_w == 150.0
            assert tx.profiles("A40") == {64: {100.0: POINT}}
        assert job.get_job("s/job").policy_state == {"v": 1, "arms": {"64": [1, 2]}}
        assert [(r.batch_size, r.power_limit_w) for r in job.list_runs("s/job")] == [(64, 0.0), (64, 150.0)]
        job.create_job(JobRecord(replace(SPEC, job_id="s/new"), state, 0.0))
        state["v"] = 3
        assert job.get_job("s/new").policy_state["v"] == 2

    def test_a_job_record_does_not_change_after_its_transaction(self, job: Store) -> None:
        with job.job_transaction("s/job") as tx:
            before = tx.job
        with job.job_transaction("s/job") as tx:
            tx.save_job({"v": 1}, 4)
        assert before == JobRecord(SPEC, {"v": 0}, 0.0, 0)

    # -------------------------------------------------------------------------- runs in flight
    def test_the_in_flight_index_follows_the_run_log(self, job: Store) -> None:
        with job.job_transaction("s/job") as tx:
            tx.insert_run(make_run("a", batch_size=32, lease_expires_unix_s=10.0, request_id="qa"))
            tx.insert_run(make_run("b", batch_size=64, lease_expires_unix_s=100.0, request_id="qb"))
            tx.insert_run(make_run("c", batch_size=64, lease_expires_unix_s=5.0))
            tx.insert_run(finish(make_run("done", batch_size=128, lease_expires_unix_s=100.0, request_id="qd")))
        with job.job_transaction("s/job") as tx:
            assert tx.count_in_flight() == 3
            assert sorted(tx.in_flight_batch_sizes(7.0)) == [32, 64]
            assert tx.in_flight_batch_sizes(50.0) == [64]
            assert tx.in_flight_batch_sizes(200.0) == []
            assert tx.find_run_by_request("qd").run_id == "done"  # type: ignore[union-attr]  # finished runs too
            tx.update_run(finish(tx.get_run("b"), RUN_FAILED))
            tx.update_run(finish(tx.get_run("c"), RUN_EXPIRED))
        with job.job_transaction("s/job") as tx:
            assert [r.run_id for r in tx.runs_in_flight()] == ["a"] and tx.count_in_flight() == 1
            assert tx.in_flight_batch_sizes(7.0) == [32] and tx.in_flight_batch_sizes(50.0) == []
            assert tx.find_run_by_request("qb").state == RUN_FAILED  # type: ignore[union-attr]
            run = tx.get_run("a")
            run.lease_expires_unix_s = 60.0  # a heartbeat
            tx.update_run(run)
        with job.job_transaction("s/job") as tx:
            assert tx.in_flight_batch_sizes(50.0) == [32]
        assert job.run_counts("s/job") == {RUN_IN_FLIGHT: 1, RUN_COMPLETED: 1, RUN_FAILED: 1, RUN_EXPIRED: 1}

    def test_expired_runs_are_listed(self, job: Store) -> None:
        with job.job_transaction("s/job") as tx:
            tx.insert_run(make_run("old", lease_expires_unix_s=10.0))
            tx.insert_run(make_run("fresh", lease_expires_unix_s=1000.0))
            tx.insert_run(finish(make_run("done", lease_expires_unix_s=10.0)))
        assert list(job.expired_runs(50.0)) == [("s/job", "old")]

    # ------------------------------------------------------------------------ reading the log
    def test_runs_page_in_creation_order(self, job: Store) -> None:
        with job.job_transaction("s/job") as tx:
            for i in range(7):
                tx.insert_run(make_run(f"r{i}"))
        assert [r.seq for r in job.list_runs("s/job")] == list(range(7))
        assert [r.run_id for r in job.list_runs("s/job", limit=3)] == ["r4", "r5", "r6"]
        pages, after = [], -1
        while page := job.list_runs_after("s/job", after, 3):
            pages.append([r.run_id for r in page])
            after = page[-1].seq
        assert pages == [["r0", "r1", "r2"], ["r3", "r4", "r5"], ["r6"]]
        with job.job_transaction("s/job") as tx:
            assert [r.run_id for r in tx.list_runs()] == [f"r{i}" for i in range(7)]

    def test_run_groups_sum_the_run_log(self, job: Store) -> None:
        with job.job_transaction("s/job") as tx:
            tx.insert_run(finish(make_run("a", power_limit_w=200.0), energy_j=10.0, time_s=1.0, epochs=2.0, reached_target=True))  # fmt: skip
            tx.insert_run(finish(make_run("b", power_limit_w=200.0, created_unix_s=9.0), energy_j=5.0, time_s=2.0, epochs=1.0, reached_target=True))  # fmt: skip
            tx.insert_run(replace(finish(make_run("old", power_limit_w=200.0), energy_j=1.0, reached_target=True), finished_unix_s=5.0))  # fmt: skip
            tx.insert_run(finish(make_run("c", gpu_count=2, max_power_w=800.0, gpu_model="A40"), RUN_FAILED))
            tx.insert_run(make_run("d", created_unix_s=20.0))
        groups = job.run_groups("s/job", window_start_unix_s=10.0)
        summary = {(g.power_limit_w, g.state, g.reached_target, g.in_window): g for g in groups}
        assert set(summary) == {
            (200.0, RUN_COMPLETED, True, True), (200.0, RUN_COMPLETED, True, False),
            (0.0, RUN_FAILED, False, True), (0.0, RUN_IN_FLIGHT, False, False),
        }  # fmt: skip
        recent = summary[(200.0, RUN_COMPLETED, True, True)]
        assert (recent.runs, recent.energy_j, recent.time_s, recent.epochs) == (2, 15.0, 3.0, 3.0)
        assert recent.last_created_unix_s == 9.0 and recent.max_power_limit_w == 300.0
        assert summary[(0.0, RUN_FAILED, False, True)].max_power_limit_w == 400.0  # per GPU
        assert summary[(0.0, RUN_IN_FLIGHT, False, False)].runs == 1  # in flight: never in the window
        assert {g.in_window for g in job.run_groups("s/job") if g.state != RUN_IN_FLIGHT} == {True}
        assert job.run_groups("nope") == []

    def test_counts_totals_and_gpu_models(self, store: Store) -> None:
        assert store.totals() == {"jobs": 0, "runs": dict.fromkeys(RUN_STATES, 0)}
        assert store.run_gpu_models() == set()
        store.create_job(JobRecord(SPEC, {}, 0.0))
        store.create_job(JobRecord(replace(SPEC, job_id="s/two"), {}, 0.0))
        with store.job_transaction("s/job") as tx:
            tx.insert_run(make_run("r1"))
            tx.insert_run(finish(make_run("r2", gpu_model="V100")))
        with store.job_transaction("s/two") as tx:
            tx.insert_run(finish(make_run("r3", job_id="s/two", gpu_model="V100"), RUN_FAILED))
        assert store.run_counts("s/job") == {RUN_IN_FLIGHT: 1, RUN_COMPLETED: 1, RUN_FAILED: 0, RUN_EXPIRED: 0}
        assert store.run_counts("nope") == dict.fromkeys(RUN_STATES, 0)
        assert store.totals() == {"jobs": 2, "runs": {RUN_IN_FLIGHT: 1, RUN_COMPLETED: 1, RUN_FAILED: 1, RUN_EXPIRED: 0}}
        assert store.run_gpu_models() == {"A40", "V100"}

    # ----------------------------------------------------------------- policy state at load
    def test_a_loaded_policy_state_is_upgraded_once(self, url: str, job: Store) -> None:
        """``policy_state_upgrade`` applies where a state is decoded from the database (every read,
        a transaction's first load) and never to a state the store already holds."""
        calls: list[dict[str, Any]] = []

        def upgrade(spec: JobSpec, state: dict[str, Any]) -> dict[str, Any]:
            calls.append(state)
            return {**state, "version": 2}

        job.policy_state_upgrade = upgrade
        assert job.get_job("s/job").policy_state == {"v": 0, "version": 2}
        assert [j.policy_state for j in job.list_jobs()] == [{"v": 0, "version": 2}]
        assert len(calls) == 2
        for _ in range(3):
            with job.job_transaction("s/job") as tx:
                assert tx.job.policy_state == {"v": 0, "version": 2}
                tx.insert_run(make_run(f"r{tx.count_in_flight()}"))
        assert len(calls) <= 2 + 3  # a store that keeps decoded jobs upgrades at most once per load
        calls.clear()
        with job.job_transaction("s/job") as tx:
            tx.save_job({"v": 1, "version": 2}, 1)
        with job.job_transaction("s/job") as tx:
            assert tx.job.policy_state == {"v": 1, "version": 2}
        assert all(state == {"v": 1, "version": 2} for state in calls)  # what was saved is stored as saved
        job.policy_state_upgrade = None
        assert job.get_job("s/job").policy_state == {"v": 1, "version": 2}

    # ------------------------------------------------------------------------------- schema
    def test_newer_schema_is_refused(self, url: str) -> None:
        open_store(url).close()
        self.execute_raw(url, ["INSERT INTO schema_version (version) VALUES (99)"])
        with pytest.raises(FailedPreconditionError, match="newer"):
            open_store(url)

    def test_a_database_of_the_first_schema_is_upgraded(self, url: str) -> None:
        """A database written by the first release (schema version 1) opens: the later migrations
        are applied, its rows are kept and the columns added since read as their defaults."""
        self.execute_raw(
            url,
            [
                VERSION_TABLE,
                *migration_statements(1, self.dialect),
                "INSERT INTO schema_version (version) VALUES (1)",
                "INSERT INTO jobs (job_id, spec, policy_state, created_unix_s, decisions) VALUES"
                " ('s/job', '" + _spec_json() + "', '{\"v\": 5}', 1.5, 3)",
                "INSERT INTO runs VALUES ('r1', 's/job', 0, 'in_flight', 64, 0, '[100.0, 200.0]', 'explore', 'why',"
                " 'A40', 1, 300, 'key', 1, 100, 0, 0, 0, 0, 0, 0, NULL, '', 0, NULL)",
            ],
        )
        store = open_store(url)
        try:
            assert store.get_job("s/job") == JobRecord(SPEC, {"v": 5}, 1.5, 3)
            with store.job_transaction("s/job") as tx:
                assert tx.get_run("r1") == make_run("r1", request_id="key")
                assert tx.insert_run(make_run("r2")).seq == 1
                tx.save_job({"v": 6}, 4)
            assert store.get_job("s/job").policy_state == {"v": 6}
        finally:
            store.close()
        open_store(url).close()  # opening again applies nothing twice
        _, versions = self.execute_raw(url, ["SELECT version FROM schema_version ORDER BY version"])
        assert [v for (v,) in versions] == list(range(1, SCHEMA_VERSION + 1))

    def test_a_new_database_has_every_column_the_store_reads(self, url: str) -> None:
        open_store(url).close()
        _, versions = self.execute_raw(url, ["SELECT MAX(version) FROM schema_version"])
        assert versions == [(SCHEMA_VERSION,)]
        runs, _ = self.execute_raw(url, ["SELECT * FROM runs WHERE 1 = 0"])
        assert runs == list(RUN_COLUMNS)
        jobs, _ = self.execute_raw(url, ["SELECT * FROM jobs WHERE 1 = 0"])
        assert jobs == ["job_id", "spec", "policy_state", "created_unix_s", "decisions", "revision"]


def _spec_json() -> str:
    import json

    return json.dumps(SPEC.to_dict())
