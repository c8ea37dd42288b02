"""Cluster behaviour: replicas on one database, concurrent completions, runs in flight, rebuild."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict

from client_sdk.client import OptimizerClient, OptimizerClientError
from client_sdk.gpu import GpuInfo
from optimizer_server.server import EmbeddedServer
from optimizer_server.service import OptimizerService
from optimizer_server.store.open import open_store
from powerbandit.v1 import optimizer_pb2 as pb
from tests.helpers import PostgresServer, small_job

GPU = GpuInfo("NVIDIA A40", 1, 100.0, 300.0, (100.0, 200.0, 300.0), True)
JOBS = [f"cluster/job-{i}" for i in range(8)]


def _hammer(addresses: list[str], clients: int, seconds: float, max_cycles: int) -> tuple[dict, list]:
    """``clients`` threads complete runs of the shared jobs; returns acknowledged run ids per job and errors."""
    acknowledged: dict[str, set[str]] = defaultdict(set)
    errors: list[BaseException] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(index: int) -> None:
        rng = random.Random(index)
        with OptimizerClient(addresses[index % len(addresses)], timeout_s=30) as client:
            for _ in range(max_cycles):
                if time.monotonic() > deadline:
                    return
                job_id = rng.choice(JOBS)
                try:
                    run = client.suggest(job_id, GPU)
                    client.complete_run(
                        job_id,
                        run.run_id,
                        energy_j=rng.uniform(1e3, 1e4),
                        time_s=rng.uniform(10, 100),
                        epochs=rng.randint(1, 20),
                        reached_target=rng.random() < 0.8,
                    )
                except OptimizerClientError as exc:
                    with lock:
                        errors.append(exc)
                    continue
                with lock:
                    acknowledged[job_id].add(run.run_id)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    return acknowledged, errors


def _check_exactly_once(db_url: str, acknowledged: dict[str, set[str]]) -> int:
    store = open_store(db_url)
    service = OptimizerService(store)
    try:
        total = 0
        for job_id in JOBS:
            runs = store.list_runs(job_id)
            completed = [r.run_id for r in runs if r.state == "completed"]
            assert len(completed) == len(set(completed))
            assert set(completed) == acknowledged[job_id], f"{job_id}: lost or extra completions"
            view = service.get_job(job_id, with_runs=False)
            assert sum(a.observations for a in view.arms) == len(completed), f"{job_id}: double-counted"
            total += len(completed)
        return total
    finally:
        store.close()


def test_two_replicas_64_clients_postgres(postgres_server: PostgresServer) -> None:
    url = postgres_server.new_database()
    with EmbeddedServer(url) as a, EmbeddedServer(url) as b:
        with OptimizerClient(a.address) as client:
            for job_id in JOBS:
                client.register_job(small_job(job_id))
        acknowledged, errors = _hammer([a.address, b.address], clients=64, seconds=4.0, max_cycles=40)
    assert not errors, errors[:3]
    assert _check_exactly_once(url, acknowledged) > 64


def test_one_replica_32_clients_sqlite(tmp_path) -> None:  # noqa: ANN001
    url = f"sqlite:///{tmp_path / 'cluster.db'}"
    with EmbeddedServer(url) as server:
        with OptimizerClient(server.address) as client:
            for job_id in JOBS:
                client.register_job(small_job(job_id))
        acknowledged, errors = _hammer([server.address], clients=32, seconds=3.0, max_cycles=40)
    assert not errors, errors[:3]
    assert _check_exactly_once(url, acknowledged) > 32


def test_runs_in_flight_get_different_unexplored_arms(client: OptimizerClient) -> None:
    client.register_job(small_job())
    first = client.suggest("team/job", GPU)
    complete = dict(energy_j=1000.0, time_s=10.0, epochs=5, reached_target=True)
    client.complete_run("team/job", first.run_id, **complete)
    concurrent = [client.suggest("team/job", GPU) for _ in range(2)]
    assert len({r.batch_size for r in concurrent}) == 2, [r.batch_size for r in concurrent]
    # results that arrive out of order are all used
    for run in reversed(concurrent):
        client.complete_run("team/job", run.run_id, **complete)
    job = client.get_job("team/job")
    assert job.completed_runs == 3 and sum(a.observations for a in job.arms) == 3


def test_rebuild_from_the_run_log_gives_the_same_state(server: EmbeddedServer) -> None:
    with OptimizerClient(server.address) as client:
        client.register_job(small_job())
        rng = random.Random(5)
        for _ in range(12):
            run = client.suggest("team/job", GPU)
            client.complete_run(
                "team/job", run.run_id, energy_j=rng.uniform(1e3, 1e4), time_s=rng.uniform(10, 100),
                epochs=rng.randint(1, 20), reached_target=rng.random() < 0.7,
            )  # fmt: skip
        before = server.service.store.get_job("team/job").policy_state
        rebuilt = server.service.rebuild_job("team/job")
        assert rebuilt.policy_state == before
        assert client.get_job("team/job").runs[-1].state == pb.RUN_STATE_COMPLETED
