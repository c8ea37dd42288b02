"""Crash safety: SIGKILL the real server under load, restart it, and find every acknowledged completion.

The server runs as a subprocess (``python -m powerbandit serve``) on a SQLite file (WAL,
``synchronous=FULL``). Client threads run suggest+complete cycles on a few shared jobs; the
server is killed with SIGKILL mid-load and restarted on the same file. Then, per job:

* every completion the client saw acknowledged is a completed run (nothing acknowledged is lost);
* a completed run that was not acknowledged is one whose CompleteRun was in flight at the kill
  (committed, answer lost): nothing else appears;
* the policy counted each completed run exactly once (sum of arm observations == completed runs);
* retrying the in-doubt completions with the same values (what the SDK does) is accepted, and
  afterwards every attempted completion is counted once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from powerbandit.v1 import optimizer_pb2 as pb
from powerbandit.v1 import optimizer_pb2_grpc as pb_grpc
from tests.helpers import REPO_ROOT, gpu_pb, small_job

JOBS = [f"crash/job-{i}" for i in range(3)]
CLIENTS = 4
KILLS = 3  # kill/restart rounds
ACKS_BEFORE_KILL = 40  # completions acknowledged (per round) before the kill
ROUND_TIMEOUT_S = 20.0
SERVING = re.compile(r"serving on (\S+:\d+)")


class ServerProcess:
    """``python -m powerbandit serve`` on a database URL and an ephemeral port."""

    def __init__(self, db_url: str, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        start = log_path.stat().st_size
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "powerbandit", "serve", "--db", db_url, "--listen", "127.0.0.1:0"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        self.address = self._wait_for_address(start)

    def _wait_for_address(self, offset: int, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            found = SERVING.search(text)
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"server did not start; its log:\n{self.log_path.read_text(errors='replace')}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit; idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


class Load:
    """Client threads running suggest+complete cycles, remembering what was acknowledged."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.acknowledged: dict[str, set[str]] = defaultdict(set)
        # CompleteRun calls that failed (the kill): (job, run) -> the request, to retry later
        self.in_doubt: dict[tuple[str, str], pb.CompleteRunRequest] = {}
        self.unexpected: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.killed = threading.Event()  # set just before the kill: errors from then on are expected
        self.threads = [threading.Thread(target=self._worker, args=(i,), daemon=True) for i in range(CLIENTS)]

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def acks(self) -> int:
        with self.lock:
            return sum(len(s) for s in self.acknowledged.values())

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in self.threads), "a client thread hung"

    def _worker(self, index: int) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.OptimizerServiceStub(channel)
            cycle = 0
            while not self.stop.is_set() and cycle < 10_000:
                cycle += 1
                job_id = JOBS[(index + cycle) % len(JOBS)]
                try:
                    run = stub.Suggest(pb.SuggestRequest(job_id=job_id, gpu=gpu_pb()), timeout=10)
                except grpc.RpcError as exc:
                    self._error("Suggest", exc)
                    return
                request = pb.CompleteRunRequest(
                    job_id=job_id,
                    run_id=run.run_id,
                    energy_j=1000.0 + 7 * cycle + index,
                    time_s=10.0 + cycle % 5,
                    epochs=float(1 + cycle % 7),
                    reached_target=cycle % 4 != 0,
                )
                try:
                    stub.CompleteRun(request, timeout=10)
                except grpc.RpcError as exc:
                    with self.lock:
                        self.in_doubt[(job_id, run.run_id)] = request
                    self._error("CompleteRun", exc)
                    return
                with self.lock:
                    self.acknowledged[job_id].add(run.run_id)

    def _error(self, method: str, exc: grpc.RpcError) -> None:
        code = exc.code()  # type: ignore[attr-defined]
        if not self.killed.is_set() or code not in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ):
            with self.lock:
                self.unexpected.append(f"{method}: {code.name} {exc.details()}")  # type: ignore[attr-defined]


def completed_and_observed(stub: pb_grpc.OptimizerServiceStub, job_id: str) -> tuple[set[str], int, int]:
    """(completed run ids, sum of arm observations, completed_runs count) of a job."""
    job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10).job
    completed = [r.run_id for r in job.runs if r.state == pb.RUN_STATE_COMPLETED]
    assert len(completed) == len(set(completed))
    return set(completed), sum(a.observations for a in job.arms), job.completed_runs


@pytest.fixture
def log_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "server.log"
    path.touch()
    yield path


def test_sigkill_under_load_loses_no_acknowledged_completion(tmp_path: Path, log_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'crash.db'}"
    server = ServerProcess(db_url, log_path)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.OptimizerServiceStub(channel)
            for job_id in JOBS:
                stub.RegisterJob(pb.RegisterJobRequest(spec=small_job(job_id).to_pb()), timeout=10)

        acknowledged: dict[str, set[str]] = defaultdict(set)
        in_doubt: dict[tuple[str, str], pb.CompleteRunRequest] = {}
        for _ in range(KILLS):
            load = Load(server.address).start()
            deadline = time.monotonic() + ROUND_TIMEOUT_S
            while load.acks() < ACKS_BEFORE_KILL and time.monotonic() < deadline:
                time.sleep(0.01)
            assert load.acks() >= ACKS_BEFORE_KILL, "load made no progress; see the server log"
            load.killed.set()  # errors from here on are the kill's; the clients keep going until they hit one
            server.kill()
            load.join()
            assert not load.unexpected, load.unexpected[:3]
            for job_id, runs in load.acknowledged.items():
                acknowledged[job_id] |= runs
            in_doubt.update(load.in_doubt)
            server.stop()
            server = ServerProcess(db_url, log_path)

        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.OptimizerServiceStub(channel)
            doubtful = {run for _, run in in_doubt}
            for job_id in JOBS:
                completed, observed, count = completed_and_observed(stub, job_id)
                lost = acknowledged[job_id] - completed
                assert not lost, f"{job_id}: acknowledged completions lost in the crash: {sorted(lost)}"
                extra = completed - acknowledged[job_id] - doubtful
                assert not extra, f"{job_id}: completed runs nobody completed: {sorted(extra)}"
                assert observed == count == len(completed), f"{job_id}: {observed} observations, {count} runs"

            # the client's retry of an in-doubt completion (same values) is accepted and counted once
            for (job_id, run_id), request in in_doubt.items():
                stub.CompleteRun(request, timeout=10)
                acknowledged[job_id].add(run_id)
            for job_id in JOBS:
                completed, observed, count = completed_and_observed(stub, job_id)
                assert completed == acknowledged[job_id], job_id
                assert observed == count == len(completed), f"{job_id}: {observed} observations, {count} runs"
            total = sum(len(s) for s in acknowledged.values())
            assert total >= KILLS * ACKS_BEFORE_KILL
    finally:
        server.stop()
