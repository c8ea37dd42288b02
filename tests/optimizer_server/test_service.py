"""The service on its own: the policies it is given, states upgraded where they are loaded, and the
``*_async`` entry points the gRPC servicer awaits."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from optimizer_server.errors import InvalidArgumentError
from optimizer_server.policy import JobSpec, PolicyRegistry, default_registry
from optimizer_server.policy.powerbandit import PowerBanditPolicy
from optimizer_server.policy.zeus import ZeusPolicy
from optimizer_server.service import OptimizerService, RunGpu
from optimizer_server.store.open import open_store
from optimizer_server.validation import job_spec
from powerbandit.v1 import optimizer_pb2 as pb

GPU = RunGpu("NVIDIA A40", 1, 100.0, 300.0, (100.0, 200.0, 300.0))
SPEC = JobSpec("s/job", (32, 64, 128), 64, 0.9, 20, seed=7)


class RecordingPolicy(PowerBanditPolicy):
    """The powerbandit policy, noting the state version each method is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, Any]] = []

    def upgrade_state(self, spec: JobSpec, state: Mapping[str, Any]) -> dict[str, Any]:
        self.seen.append(("upgrade_state", state.get("version", 1)))
        return super().upgrade_state(spec, state)

    def suggest(self, spec: JobSpec, state: Mapping[str, Any], *args: Any) -> Any:
        self.seen.append(("suggest", state.get("version", 1)))
        return super().suggest(spec, state, *args)

    def cost_bound(self, spec: JobSpec, state: Mapping[str, Any], *args: Any) -> float:
        self.seen.append(("cost_bound", state.get("version", 1)))
        return super().cost_bound(spec, state, *args)

    def observe(self, spec: JobSpec, state: Mapping[str, Any], observation: Any) -> dict[str, Any]:
        self.seen.append(("observe", state.get("version", 1)))
        return super().observe(spec, state, observation)


def cycle(service: OptimizerService, job_id: str = "s/job") -> None:
    run = service.suggest(job_id, GPU).run
    service.complete_run(job_id, run.run_id, energy_j=900.0, time_s=10.0, epochs=4.0, reached_target=True)


def test_the_service_runs_the_policies_it_is_given(tmp_path: Path) -> None:
    recording = RecordingPolicy()
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    try:
        service = OptimizerService(store, PolicyRegistry([recording]))
        service.register_job(SPEC)
        cycle(service)
        assert {name for name, _ in recording.seen} >= {"suggest", "cost_bound", "observe"}
        with pytest.raises(KeyError, match="unknown policy 'zeus'; known policies: powerbandit"):
            service.register_job(JobSpec("s/zeus", (32,), 32, 0.9, 5, policy="zeus"))
    finally:
        store.close()


def test_validation_accepts_the_names_of_the_registry_it_is_given() -> None:
    only_zeus = PolicyRegistry([ZeusPolicy()])
    message = pb.JobSpec(job_id="j", batch_sizes=[32], default_batch_size=32, target_metric=0.9, max_epochs=5)
    assert job_spec(message, only_zeus).policy == "zeus"  # the registry's default
    assert job_spec(message, default_registry()).policy == "powerbandit"
    message.policy = "powerbandit"
    with pytest.raises(InvalidArgumentError, match="spec.policy 'powerbandit' is unknown; use one of zeus"):
        job_spec(message, only_zeus)


def test_a_registry_names_each_policy_once() -> None:
    assert default_registry().names == ("powerbandit", "zeus") and default_registry().default_name == "powerbandit"
    with pytest.raises(ValueError, match="two policies"):
        PolicyRegistry([ZeusPolicy(), ZeusPolicy()])
    with pytest.raises(ValueError, match="at least one"):
        PolicyRegistry([])


def test_an_old_state_is_upgraded_once_where_it_is_loaded(tmp_path: Path) -> None:
    """A job whose stored state is of an older version (a database of an older server): the state is
    upgraded when the store loads it, so no policy method ever reads the old version."""
    path = tmp_path / "old.db"
    store = open_store(f"sqlite:///{path}")
    OptimizerService(store).register_job(SPEC)
    store.close()
    version_1 = {
        "arms": {
            "64": {"log_epochs": [1.2, 1.4], "fail_epochs": [], "never_ran": 0, "ok_costs": [900.0, 950.0]},
            "32": {"log_epochs": [], "fail_epochs": [3.0], "never_ran": 1, "ok_costs": []},
        },
        "epoch_cost": {"NVIDIA A40": {"64": 200.0}},
        "observations": 4,
        "recurrence_cost": 0.0,
        "min_recurrence_cost": 900.0,
    }
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE jobs SET policy_state = ?, revision = ''", (json.dumps(version_1),))

    recording = RecordingPolicy()
    store = open_store(f"sqlite:///{path}")
    try:
        service = OptimizerService(store, PolicyRegistry([recording]))
        for _ in range(3):
            cycle(service)
        view = service.get_job("s/job")
        assert sum(a.successes for a in view.arms) == 2 + 3  # the old state's two, and three new
        upgrades = [version for name, version in recording.seen if name == "upgrade_state"]
        assert upgrades[0] == 1  # the transactions' first load
        assert all(version == 3 for name, version in recording.seen if name != "upgrade_state")
        assert len(upgrades) == 2  # once for the transactions (then cached), once for get_job's read
        stored = json.loads(sqlite3.connect(path).execute("SELECT policy_state FROM jobs").fetchone()[0])
        assert stored["version"] == 3 and stored["observations"] == 4 + 3
    finally:
        store.close()


def test_the_async_entry_points_run_the_same_operations(tmp_path: Path) -> None:
    """What the servicer awaits: changes batched by the store, reads on a worker thread."""
    store = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    service = OptimizerService(store)

    async def scenario() -> None:
        spec, created = await service.register_job_async(SPEC)
        assert created and spec.job_id == "s/job"
        suggestions = await asyncio.gather(*(service.suggest_async("s/job", GPU, f"q{i}") for i in range(3)))
        first = suggestions[0].run
        assert (await service.suggest_async("s/job", GPU, "q0")).run.run_id == first.run_id  # idempotent
        expires = await service.heartbeat_async("s/job", first.run_id)
        assert expires > first.created_unix_s
        if first.power_limit_w == 0:
            await service.report_profile_async("s/job", first.run_id, 100.0, [(100.0, 90.0, 0.1), (300.0, 250.0, 0.05)])
        verdict = await service.report_progress_async("s/job", first.run_id, 1.0, 100.0, 5.0, 0.5)
        assert not verdict.stop
        done = await service.complete_run_async(
            "s/job", first.run_id, energy_j=900.0, time_s=10.0, epochs=4.0, reached_target=True
        )
        failed = await service.fail_run_async("s/job", suggestions[1].run.run_id, "crashed")
        assert (done.state, failed.state) == ("completed", "failed")
        assert await service.expire_lapsed_runs_async() == 0
        view = await service.get_job_async("s/job")
        assert view.counts == {"in_flight": 1, "completed": 1, "failed": 1, "expired": 0}
        views, token = await service.list_jobs_async("s/", page_size=10)
        assert [v.record.spec.job_id for v in views] == ["s/job"] and token == ""
        await service.delete_job_async("s/job")
        assert await service.list_jobs_async() == ([], "")

    try:
        asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    finally:
        store.close()
