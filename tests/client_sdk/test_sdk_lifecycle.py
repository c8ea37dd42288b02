"""The public run lifecycle (``start_run``, ``complete``, ``fail``) and the typed errors.

Against the real server on loopback over a real SQLite file; the GPU is the replay GPU.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from client_sdk.client import OptimizerClient, OptimizerClientError
from client_sdk.errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RunStateError,
    ServerError,
    ServerUnavailableError,
    error_for_status,
)
from client_sdk.replay import ReplayGpu
from optimizer_server.server import EmbeddedServer
from powerbandit.v1 import optimizer_pb2 as pb
from tests.helpers import SMALL_TABLE, small_job


@pytest.fixture
def sqlite_client(tmp_path: Path) -> Iterator[OptimizerClient]:
    """A client of a real server over a SQLite file (these tests need no PostgreSQL variant)."""
    with EmbeddedServer(f"sqlite:///{tmp_path / 'pb.db'}") as server, OptimizerClient(server.address, timeout_s=10) as c:
        yield c


def test_start_run_complete_reports_the_measured_run(sqlite_client: OptimizerClient) -> None:
    gpu = ReplayGpu(SMALL_TABLE)
    job = small_job(max_epochs=5)
    run = sqlite_client.start_run(job, gpu=gpu, heartbeat=False)
    assert run.state == "running" and run.batch_size == 64 and run.run_id
    done = run.complete(0.93, epochs=4)  # no epoch_end() calls: the wrapper's way
    assert run.state == "completed" and run.ended
    assert done is not None and done.reached_target and done.epochs == 4 and run.last_metric == 0.93
    power_w, epoch_s = SMALL_TABLE[64][done.power_limit_w]  # the limit in force, from the trace
    assert done.energy_j == pytest.approx(4 * power_w * epoch_s) and done.time_s == pytest.approx(4 * epoch_s)
    (stored,) = sqlite_client.get_job(job.job_id).runs
    assert stored.state == pb.RUN_STATE_COMPLETED
    with pytest.raises(RunStateError, match="already completed"):
        run.complete()
    with pytest.raises(RunStateError, match="already completed"):
        run.fail("late")


def test_fail_reports_the_reason_and_restores_the_limit(sqlite_client: OptimizerClient) -> None:
    gpu = ReplayGpu(SMALL_TABLE)
    run = sqlite_client.start_run(small_job(), gpu=gpu, steps_per_epoch=3, heartbeat=False)
    for _ in range(3):
        run.step()
    run.epoch_end(0.4)
    run.fail(MemoryError("CUDA out of memory"))
    assert run.state == "failed" and gpu.power_limit_w() == 300
    (stored,) = sqlite_client.get_job("team/job").runs
    assert stored.state == pb.RUN_STATE_FAILED and stored.reason == "MemoryError: CUDA out of memory"
    assert stored.epochs == 1 and stored.energy_j > 0


def test_context_manager_is_built_on_the_lifecycle(sqlite_client: OptimizerClient) -> None:
    run = sqlite_client.run(small_job(), ReplayGpu(SMALL_TABLE), heartbeat=False)
    assert run.state == "new"
    with pytest.raises(RunStateError, match="not started"):
        run.complete()
    with pytest.raises(RunStateError, match="not started"):
        _ = run.batch_size
    with run:
        run.epoch_end(0.95)
        run.complete()  # ended inside the block: leaving it does nothing more
    with pytest.raises(RunStateError, match="already started"):
        run.start()
    with pytest.raises(ValueError, match="boom"), sqlite_client.run(small_job(), ReplayGpu(SMALL_TABLE), heartbeat=False):
        raise ValueError("boom")
    states = [r.state for r in sqlite_client.get_job("team/job").runs]
    assert states == [pb.RUN_STATE_COMPLETED, pb.RUN_STATE_FAILED]


def test_typed_errors_per_status_family(sqlite_client: OptimizerClient) -> None:
    with pytest.raises(NotFoundError) as missing:
        sqlite_client.get_job("team/nobody")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND and "team/nobody" in str(missing.value)
    with pytest.raises(InvalidRequestError, match="max_epochs") as invalid:
        sqlite_client.register_job(small_job(max_epochs=0))
    assert isinstance(invalid.value, ValueError)  # callers validating input can catch ValueError too
    sqlite_client.register_job(small_job())
    with pytest.raises(AlreadyExistsError, match="target_metric"):
        sqlite_client.register_job(small_job(target_metric=0.5))
    run = sqlite_client.start_run(small_job(), gpu=ReplayGpu(SMALL_TABLE), heartbeat=False)
    run.complete(0.95, epochs=1)
    with pytest.raises(ConflictError):  # a report on a finished run
        sqlite_client.report_progress("team/job", run.run_id, 2, 1.0, 1.0)
    for error in (NotFoundError, InvalidRequestError, AlreadyExistsError, ConflictError):
        assert issubclass(error, OptimizerClientError)  # existing `except OptimizerClientError` still works


def test_unreachable_and_unknown_codes_and_pickling() -> None:
    with OptimizerClient("127.0.0.1:1", timeout_s=2) as client, pytest.raises(ServerUnavailableError) as down:
        client.register_job(small_job())
    assert down.value.unreachable
    assert isinstance(error_for_status("Suggest", grpc.StatusCode.UNAUTHENTICATED, "bad token", "a:1"),
                      PermissionDeniedError)  # fmt: skip
    assert isinstance(error_for_status("Suggest", grpc.StatusCode.INTERNAL, "bug", "a:1"), ServerError)
    error = error_for_status("GetJob", grpc.StatusCode.NOT_FOUND, "no job x", "a:1")
    copy = pickle.loads(pickle.dumps(error))  # DDP broadcasts rank 0's error to the other ranks
    assert type(copy) is NotFoundError and copy.code == error.code and str(copy) == str(error)


def test_client_is_picklable_and_the_copy_connects(tmp_path: Path) -> None:
    with EmbeddedServer(f"sqlite:///{tmp_path / 'pb.db'}") as server:
        client = OptimizerClient(server.address, timeout_s=7, token="", fail_open=True)
        copy = pickle.loads(pickle.dumps(client))  # what Lightning's ddp_spawn does to a callback
        assert copy.address == server.address and copy.timeout_s == 7 and copy.fail_open
        copy.register_job(small_job())
        assert client.get_job("team/job").spec.job_id == "team/job"
        client.close()
        copy.close()


def test_a_run_that_cannot_start_is_failed_at_once(sqlite_client: OptimizerClient) -> None:
    job = small_job(batch_sizes=(64,), default_batch_size=64)
    gpu = ReplayGpu({32: SMALL_TABLE[32]})  # the trace lacks the suggested batch size
    with pytest.raises(ValueError, match="no batch size 64"):
        sqlite_client.start_run(job, gpu=gpu, heartbeat=False)
    (stored,) = sqlite_client.get_job("team/job").runs  # not left in flight until its lease expires
    assert stored.state == pb.RUN_STATE_FAILED and "no batch size 64" in stored.reason
