"""PyTorch helpers (one process and DDP on CPU with gloo), the Hugging Face callback and the example.

All against the real server with replay GPUs. Skipped without torch (``pip install torch``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as tmp  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from client_sdk.client import OptimizerClient  # noqa: E402
from client_sdk.gpu import GpuUnavailableError  # noqa: E402
from client_sdk.hf import HAVE_TRANSFORMERS, PowerBanditCallback  # noqa: E402
from client_sdk.replay import ReplayGpu  # noqa: E402
from client_sdk.torch_helpers import train_with_powerbandit  # noqa: E402
from optimizer_server.server import EmbeddedServer  # noqa: E402
from powerbandit.v1 import optimizer_pb2 as pb  # noqa: E402
from tests.helpers import REPO_ROOT, SMALL_TABLE, small_job  # noqa: E402

STEPS = 12  # batches per epoch: 4 per candidate power limit in the first epoch


def _expected(batch_size: int, epochs: int, gpus: int = 1) -> tuple[float, float, float]:
    """(energy J, time s, chosen limit) of a first run that profiles in epoch 1 (as test_sdk)."""
    row = SMALL_TABLE[batch_size]
    max_power = 300.0 * gpus
    costs = {p: 0.5 * gpus * w * t + 0.5 * max_power * t for p, (w, t) in row.items()}
    best = min(costs, key=lambda p: (costs[p], -p))
    time_s = sum(t for _, t in row.values()) / 3 + (epochs - 1) * row[best][1]
    energy = sum(w * t for w, t in row.values()) / 3 + (epochs - 1) * row[best][0] * row[best][1]
    return gpus * energy, time_s, best


def _loader_for(batch_size: int) -> DataLoader:
    data = TensorDataset(torch.arange(STEPS * batch_size, dtype=torch.float32).reshape(-1, 1))
    return DataLoader(data, batch_size=batch_size)


def _metric_schedule(target_epoch: int) -> Any:
    epoch = {"n": 0}

    def evaluate() -> float:
        epoch["n"] += 1
        return 0.95 if epoch["n"] >= target_epoch else 0.5

    return evaluate


# ---------------------------------------------------------------------------------- one process
def test_train_with_powerbandit_profiles_in_epoch_one_and_reports_exact_numbers(
    client: OptimizerClient,
) -> None:
    job = small_job()
    gpu = ReplayGpu(SMALL_TABLE, model="Replay A40")
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    seen_batches: list[int] = []

    def train_step(batch: list[Any]) -> None:
        (x,) = batch
        seen_batches.append(len(x))
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()

    result = train_with_powerbandit(
        client, job, make_loader=_loader_for, train_step=train_step, evaluate=_metric_schedule(3), gpu=gpu,
        heartbeat=False,
    )  # fmt: skip
    assert result.batch_size == 64 and result.profiled and result.reached_target and result.epochs == 3
    assert set(seen_batches) == {64} and len(seen_batches) == 3 * STEPS
    energy, time_s, best = _expected(64, 3)
    assert result.power_limit_w == best
    assert result.energy_j == pytest.approx(energy) and result.time_s == pytest.approx(time_s)
    assert result.final_metric == pytest.approx(0.95) and result.gpu_count == 1
    assert gpu.power_limit_w() == 300  # restored


def test_train_with_powerbandit_fails_the_run_when_training_raises(client: OptimizerClient) -> None:
    def train_step(batch: object) -> None:
        raise FloatingPointError("loss is NaN")

    gpu = ReplayGpu(SMALL_TABLE)
    with pytest.raises(FloatingPointError):
        train_with_powerbandit(
            client, small_job(), make_loader=_loader_for, train_step=train_step, evaluate=lambda: 0.0, gpu=gpu,
            heartbeat=False,
        )  # fmt: skip
    (stored,) = client.get_job("team/job").runs
    assert stored.state == pb.RUN_STATE_FAILED and "loss is NaN" in stored.reason
    assert gpu.power_limit_w() == 300


# ------------------------------------------------------------------------------------------ DDP
@contextlib.contextmanager
def _gloo_rank(
    rank: int, world: int, init_file: str, address: str, table: dict[int, dict[float, tuple[float, float]]], model: str
) -> Iterator[tuple[ReplayGpu, OptimizerClient | None]]:
    """One DDP rank's setting: gloo on CPU, its own replay GPU, the client on rank 0 only (closed, and
    the process group destroyed, on the way out)."""
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )  # fmt: skip
    try:
        client = OptimizerClient(address, timeout_s=10) if rank == 0 else None
        try:
            yield ReplayGpu(table, model=model), client
        finally:
            if client is not None:
                client.close()
    finally:
        dist.destroy_process_group()


def _ddp_worker(rank: int, world: int, init_file: str, address: str, out_dir: str) -> None:
    """One DDP rank: gloo on CPU, its own replay GPU, the client on rank 0 only."""
    with _gloo_rank(rank, world, init_file, address, SMALL_TABLE, "Replay A40") as (gpu, client):
        local_batches: list[int] = []
        # Rank 1's own metric never reaches the target: rank 0's decides for everyone.
        evaluate = _metric_schedule(3) if rank == 0 else (lambda: 0.1)
        results = []
        for _ in range(2):  # two recurrences: the second reuses the profile
            start = gpu.energy_j()
            result = train_with_powerbandit(
                client, small_job("team/ddp", batch_sizes=(64, 128), default_batch_size=128),
                make_loader=lambda b: (local_batches.append(b), _loader_for(b))[1],
                train_step=lambda batch: None, evaluate=evaluate, gpu=gpu, heartbeat=False,
            )  # fmt: skip
            evaluate = _metric_schedule(2) if rank == 0 else (lambda: 0.1)
            results.append({**result.__dict__, "local_energy_j": gpu.energy_j() - start})
        Path(out_dir, f"rank{rank}.json").write_text(
            json.dumps({"results": results, "local_batches": local_batches, "limit": gpu.power_limit_w()})
        )


def _run_two_ranks(worker: Any, address: str, tmp_path: Path, timeout_s: float = 120.0) -> None:
    """``worker(rank, 2, init dir, address, out dir)`` in two spawned processes; killed and failed
    after ``timeout_s``."""
    context = tmp.start_processes(
        worker, args=(2, str(tmp_path / "init"), address, str(tmp_path)), nprocs=2, join=False, start_method="spawn",
    )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the DDP ranks did not finish within {timeout_s:g} s")


def test_ddp_rank0_talks_energy_is_summed_and_ranks_agree(server: EmbeddedServer, tmp_path: Path) -> None:
    _run_two_ranks(_ddp_worker, server.address, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    r0, r1 = ranks[0]["results"], ranks[1]["results"]
    for one, other in zip(r0, r1, strict=True):
        # every rank saw the same run, the same stop decision and the same (summed) numbers
        for key in (
            "run_id",
            "batch_size",
            "power_limit_w",
            "epochs",
            "energy_j",
            "time_s",
            "reached_target",
        ):
            assert one[key] == other[key], key
        assert one["local_energy_j"] == pytest.approx(other["local_energy_j"])
        assert one["energy_j"] == pytest.approx(one["local_energy_j"] + other["local_energy_j"])
        assert one["gpu_count"] == 2
    first, second = r0
    assert (
        first["batch_size"] == 128 and first["epochs"] == 3 and first["reached_target"] and first["profiled"]
    )
    assert ranks[0]["local_batches"][0] == ranks[1]["local_batches"][0] == 64  # 128 split over 2 ranks
    energy, time_s, best = _expected(128, 3, gpus=2)
    assert first["energy_j"] == pytest.approx(energy) and first["time_s"] == pytest.approx(time_s)
    assert first["power_limit_w"] == best
    assert second["epochs"] == 2 and second["reached_target"]
    assert ranks[0]["limit"] == ranks[1]["limit"] == 300  # restored on every rank
    with OptimizerClient(server.address, timeout_s=10) as client:
        job = client.get_job("team/ddp")
    assert [r.state for r in job.runs] == [pb.RUN_STATE_COMPLETED] * 2
    assert {r.gpu_count for r in job.runs} == {2}
    (profile,) = [p for p in job.profiles if p.batch_size == 128]
    for point in profile.points:  # average power of both GPUs
        assert point.average_power_w == pytest.approx(2 * SMALL_TABLE[128][point.power_limit_w][0])


# 300 W down to 100 W; 150 W costs 1.32x the cheapest (200 W): the profile stops there, 100 W unmeasured
STEEP_TABLE = {
    64: {300.0: (280.0, 8.0)},
    128: {300.0: (270.0, 10.0), 250.0: (240.0, 10.2), 200.0: (195.0, 11.0), 150.0: (148.0, 16.0), 100.0: (99.0, 30.0)},
}


def _ddp_profile_stop_worker(rank: int, world: int, init_file: str, address: str, out_dir: str) -> None:
    """One DDP rank training one run whose profile stops early: every rank must stop at the same limit."""
    with _gloo_rank(rank, world, init_file, address, STEEP_TABLE, "Replay steep") as (gpu, client):
        result = train_with_powerbandit(
            client, small_job("team/steep", batch_sizes=(64, 128), default_batch_size=128),
            make_loader=_loader_for, train_step=lambda batch: None,
            evaluate=_metric_schedule(2) if rank == 0 else (lambda: 0.1), gpu=gpu, heartbeat=False,
        )  # fmt: skip
        Path(out_dir, f"steep{rank}.json").write_text(json.dumps({**result.__dict__, "limit": gpu.power_limit_w()}))


def test_ddp_ranks_stop_a_profile_at_the_same_limit(server: EmbeddedServer, tmp_path: Path) -> None:
    # the stop is decided on the summed energy and rank 0's clock, the same numbers on every rank: the
    # ranks walk the same limits, stop together (no rank left waiting in a collective) and settle alike
    _run_two_ranks(_ddp_profile_stop_worker, server.address, tmp_path)
    r0, r1 = (json.loads((tmp_path / f"steep{r}.json").read_text()) for r in range(2))
    for key in ("run_id", "batch_size", "power_limit_w", "epochs", "energy_j", "time_s", "reached_target"):
        assert r0[key] == r1[key], key
    assert r0["batch_size"] == 128 and r0["power_limit_w"] == 200.0 and r0["reached_target"]
    assert r0["limit"] == r1["limit"] == 300  # restored on every rank
    with OptimizerClient(server.address, timeout_s=10) as client:
        (profile,) = client.get_job("team/steep").profiles
    assert sorted(p.power_limit_w for p in profile.points) == [150.0, 200.0, 250.0, 300.0]  # 100 W never set


def _ddp_lifecycle_worker(rank: int, world: int, init_file: str, address: str, out_dir: str) -> None:
    """One DDP rank driving DistributedRun through the public lifecycle (start, complete, fail)."""
    from client_sdk.errors import InvalidRequestError
    from client_sdk.torch_helpers import DistributedRun

    with _gloo_rank(rank, world, init_file, address, SMALL_TABLE, "Replay A40") as (gpu, client):
        outcome: dict[str, Any] = {}
        try:  # rank 0's refusal reaches every rank as the same typed error
            DistributedRun(client, small_job("team/bad", max_epochs=0), gpu, heartbeat=False).start()
        except InvalidRequestError as exc:
            outcome["refused"] = [type(exc).__name__, exc.code.name]
        job = small_job("team/life", batch_sizes=(64, 128), default_batch_size=128)
        run = DistributedRun(client, job, gpu, heartbeat=False).start()
        run.set_steps_per_epoch(6)
        for _ in range(6):
            run.step()
        run.epoch_end(0.5 if rank == 0 else 0.0)
        done = run.complete(0.95 if rank == 0 else 0.1, epochs=2)  # rank 0's metric counts
        outcome["completed"] = [done.run_id, done.epochs, done.reached_target, run.state, run.local_batch_size]
        second = DistributedRun(client, job, gpu, heartbeat=False).start()
        second.fail("rank-local crash")  # any rank may fail; only rank 0 reports, without collectives
        outcome["failed"] = second.state
        Path(out_dir, f"life{rank}.json").write_text(json.dumps(outcome))


def test_distributed_run_offers_the_lifecycle_and_typed_errors_on_every_rank(tmp_path: Path) -> None:
    with EmbeddedServer(f"sqlite:///{tmp_path / 'pb.db'}") as server:
        _run_two_ranks(_ddp_lifecycle_worker, server.address, tmp_path)
        with OptimizerClient(server.address, timeout_s=10) as client:
            runs = client.get_job("team/life").runs
    ranks = [json.loads((tmp_path / f"life{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["refused"] == ["InvalidRequestError", "INVALID_ARGUMENT"]
    run_id, epochs, reached, state, local = ranks[0]["completed"]
    assert epochs == 2 and reached and state == "completed" and local == 64
    assert ranks[0]["failed"] == "failed"
    assert [(r.run_id == run_id, r.state) for r in runs] == [
        (True, pb.RUN_STATE_COMPLETED), (False, pb.RUN_STATE_FAILED)
    ]  # fmt: skip
    assert runs[1].reason == "rank-local crash" and runs[0].gpu_count == 2


# ------------------------------------------------------------------------------------ HF callback
def _hf_args(batch_size: int, eval_strategy: str = "epoch") -> SimpleNamespace:
    return SimpleNamespace(
        per_device_train_batch_size=batch_size, gradient_accumulation_steps=1, world_size=1,
        eval_strategy=eval_strategy,
    )  # fmt: skip


def test_hf_callback_drives_a_run_through_the_trainer_hooks(client: OptimizerClient) -> None:
    gpu = ReplayGpu(SMALL_TABLE, model="Replay A40")
    callback = PowerBanditCallback(client, small_job(), gpu, metric_key="accuracy", heartbeat=False)
    batch_size = callback.local_batch_size  # starts the run: the Trainer is built with it
    assert batch_size == 64
    args, state, control = (
        _hf_args(batch_size),
        SimpleNamespace(max_steps=0),
        SimpleNamespace(should_training_stop=False),
    )
    callback.on_train_begin(args, state, control, train_dataloader=range(STEPS))
    for epoch in range(1, 21):
        for _ in range(STEPS):
            callback.on_step_end(args, state, control)
        callback.on_epoch_end(args, state, control)
        callback.on_evaluate(args, state, control, metrics={"eval_accuracy": 0.95 if epoch == 3 else 0.5})
        if control.should_training_stop:
            break
    callback.on_train_end(args, state, control)
    callback.on_evaluate(args, state, control, metrics={"eval_accuracy": 0.95})  # a final evaluate(): ignored
    done = callback.completed_run
    assert done is not None and done.reached_target and done.epochs == 3 and done.profiled
    energy, time_s, best = _expected(64, 3)
    assert done.energy_j == pytest.approx(energy) and done.time_s == pytest.approx(time_s)
    assert done.power_limit_w == best and gpu.power_limit_w() == 300


def test_hf_callback_refuses_a_trainer_with_another_batch_size(client: OptimizerClient) -> None:
    callback = PowerBanditCallback(
        client, small_job(), ReplayGpu(SMALL_TABLE), metric_key="accuracy", heartbeat=False
    )
    control = SimpleNamespace(should_training_stop=False)
    with pytest.raises(ValueError, match="local_batch_size"):
        callback.on_train_begin(_hf_args(32), SimpleNamespace(max_steps=0), control)
    (stored,) = client.get_job("team/job").runs
    assert stored.state == pb.RUN_STATE_FAILED


def test_hf_callback_context_fails_the_run_when_training_raises(client: OptimizerClient) -> None:
    gpu = ReplayGpu(SMALL_TABLE)
    callback = PowerBanditCallback(client, small_job(), gpu, metric_key="accuracy", heartbeat=False)
    with pytest.raises(RuntimeError, match="CUDA out of memory"), callback:
        callback.on_train_begin(_hf_args(callback.local_batch_size), SimpleNamespace(max_steps=0), None)
        raise RuntimeError("CUDA out of memory")
    (stored,) = client.get_job("team/job").runs
    assert stored.state == pb.RUN_STATE_FAILED and "out of memory" in stored.reason
    assert gpu.power_limit_w() == 300


@pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="transformers is not installed")
def test_hf_callback_with_a_real_trainer(client: OptimizerClient, tmp_path: Path) -> None:
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainingArguments

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(1, 1)

        def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loss": (self.linear(x) - labels).pow(2).mean()}

    rows = [{"x": [float(i % 7)], "labels": [2.0 * (i % 7)]} for i in range(64 * STEPS)]
    job = small_job(target_metric=-1.0, higher_is_better=False)  # eval_loss never reaches -1: no early win
    gpu = ReplayGpu(SMALL_TABLE)
    callback = PowerBanditCallback(client, job, gpu, metric_key="eval_loss", heartbeat=False)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=callback.local_batch_size, num_train_epochs=3,
        eval_strategy="epoch", save_strategy="no", report_to=[], use_cpu=True, learning_rate=1e-3,
        logging_strategy="no", disable_tqdm=True, dataloader_drop_last=True,
    )  # fmt: skip
    trainer = Trainer(
        model=Tiny(), args=args, train_dataset=rows, eval_dataset=rows[:64], callbacks=[callback]
    )
    with callback:
        trainer.train()
    done = callback.completed_run
    assert done is not None and done.epochs == 3 and done.profiled and not done.reached_target
    energy, time_s, _ = _expected(64, 3)
    assert done.energy_j == pytest.approx(energy) and done.time_s == pytest.approx(time_s)


# ---------------------------------------------------------------------------------------- example
EXAMPLE = REPO_ROOT / "examples" / "train_synthetic_classifier.py"


def test_example_trains_for_real_with_the_replay_gpu(server: EmbeddedServer) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "2"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--replay", "--server", server.address, "--recurrences", "2",
         "--samples", "2000", "--job-id", "examples/test", "--device", "cpu"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "MADE-UP" in done.stdout and "best so far" in done.stdout
    with OptimizerClient(server.address, timeout_s=10) as client:
        runs = client.get_job("examples/test").runs
    assert len(runs) == 2 and all(r.state == pb.RUN_STATE_COMPLETED for r in runs)
    assert all(r.energy_j > 0 and r.time_s > 0 for r in runs)


def test_example_without_gpu_names_the_two_ways_out(server: EmbeddedServer) -> None:
    try:
        from client_sdk.nvml import NvmlGpu

        NvmlGpu().close()
        pytest.skip("NVML works here: the no-GPU error cannot be shown")
    except GpuUnavailableError:
        pass
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--server", server.address, "--recurrences", "1", "--device", "cpu"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 2
    assert "driver" in done.stderr and "ReplayGpu" in done.stderr
