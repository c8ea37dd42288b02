"""The Lightning callback with real ``lightning`` on CPU: one process in-process, DDP (gloo, 2 processes,
``strategy="ddp"``) in a subprocess; replay GPUs and a real server over SQLite."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from client_sdk.client import OptimizerClient  # noqa: E402
from client_sdk.lightning import PowerBanditCallback  # noqa: E402
from client_sdk.replay import ReplayGpu  # noqa: E402
from optimizer_server.server import EmbeddedServer  # noqa: E402
from powerbandit.v1 import optimizer_pb2 as pb  # noqa: E402
from tests.helpers import REPO_ROOT, SMALL_TABLE, small_job  # noqa: E402

STEPS = 12  # batches per epoch


def expected(batch_size: int, epochs: int, gpus: int = 1) -> tuple[float, float, float]:
    """(energy J, time s, chosen limit) of a first run that profiles its 3 limits in epoch 1."""
    row = SMALL_TABLE[batch_size]
    costs = {p: 0.5 * gpus * w * t + 0.5 * 300.0 * gpus * t for p, (w, t) in row.items()}
    best = min(costs, key=lambda p: (costs[p], -p))
    time_s = sum(t for _, t in row.values()) / 3 + (epochs - 1) * row[best][1]
    energy = sum(w * t for w, t in row.values()) / 3 + (epochs - 1) * row[best][0] * row[best][1]
    return gpus * energy, time_s, best


MODULE = textwrap.dedent('''
    import torch
    import lightning.pytorch as L
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(L.LightningModule):
        """A linear model; ``val_metric`` reaches 0.95 at epoch ``target_epoch`` (1-based), ``crash_epoch`` raises."""

        def __init__(self, callback, target_epoch=99, crash_epoch=99, samples_per_process=None):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.callback, self.target_epoch, self.crash_epoch = callback, target_epoch, crash_epoch
            self.samples = samples_per_process

        def train_dataloader(self):
            size = self.callback.local_batch_size
            data = TensorDataset(torch.ones(12 * size, 1), torch.ones(12 * size, 1))
            return DataLoader(data, batch_size=size)

        def val_dataloader(self):
            return DataLoader(TensorDataset(torch.ones(4, 1), torch.ones(4, 1)), batch_size=4)

        def training_step(self, batch, batch_idx):
            if self.current_epoch + 1 == self.crash_epoch:
                raise RuntimeError("CUDA out of memory")
            x, y = batch
            return (self.layer(x) - y).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            done = self.current_epoch + 1 >= self.target_epoch
            self.log("val_metric", 0.95 if done else 0.5, sync_dist=True)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)
''')
exec(MODULE)  # the same module the DDP script runs  # noqa: S102


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(f"sqlite:///{tmp_path / 'pb.db'}") as running:
        yield running


def _trainer(tmp_path: Path, callback: PowerBanditCallback, **kwargs: object) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, max_epochs=20, callbacks=[callback], logger=L.loggers.CSVLogger(tmp_path),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=1, **kwargs,
    )  # fmt: skip


def test_one_process_run_stops_at_the_target_and_logs_energy(server: EmbeddedServer, tmp_path: Path) -> None:
    gpu = ReplayGpu(SMALL_TABLE)
    with OptimizerClient(server.address, timeout_s=10) as client:
        callback = PowerBanditCallback(client, small_job(), gpu, monitor="val_metric", heartbeat=False)
        trainer = _trainer(tmp_path, callback)
        trainer.fit(Tiny(callback, target_epoch=3))  # noqa: F821 - defined by exec(MODULE)
        (stored,) = client.get_job("team/job").runs
    done = callback.completed_run
    assert done is not None and done.epochs == 3 and done.reached_target and done.profiled
    assert trainer.current_epoch == 3  # stopped at the target, not at max_epochs
    energy, time_s, best = expected(64, 3)
    assert done.energy_j == pytest.approx(energy) and done.time_s == pytest.approx(time_s)
    assert done.power_limit_w == best and gpu.power_limit_w() == 300  # restored
    assert stored.state == pb.RUN_STATE_COMPLETED
    assert trainer.callback_metrics["powerbandit/energy_j"].item() == pytest.approx(energy)
    (metrics_file,) = tmp_path.glob("lightning_logs/version_*/metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    logged = [float(r["powerbandit/energy_j"]) for r in rows if r.get("powerbandit/energy_j")]
    assert len(logged) == 4 and logged[-1] == pytest.approx(energy)  # 3 epochs + the final numbers
    assert [r["powerbandit/profiling"] for r in rows if r.get("powerbandit/profiling")][:2] == ["0.0", "0.0"]
    assert {float(r["powerbandit/batch_size"]) for r in rows if r.get("powerbandit/batch_size")} == {64.0}


def test_an_exception_in_training_fails_the_run(server: EmbeddedServer, tmp_path: Path) -> None:
    gpu = ReplayGpu(SMALL_TABLE)
    with OptimizerClient(server.address, timeout_s=10) as client:
        callback = PowerBanditCallback(client, small_job(), gpu, monitor="val_metric", heartbeat=False)
        with pytest.raises(RuntimeError, match="CUDA out of memory"):
            _trainer(tmp_path, callback).fit(Tiny(callback, crash_epoch=2))  # noqa: F821
        (stored,) = client.get_job("team/job").runs
    assert stored.state == pb.RUN_STATE_FAILED and "CUDA out of memory" in stored.reason
    assert stored.epochs == 1 and gpu.power_limit_w() == 300


def test_a_loader_with_another_batch_size_is_refused(server: EmbeddedServer, tmp_path: Path) -> None:
    with OptimizerClient(server.address, timeout_s=10) as client:
        callback = PowerBanditCallback(client, small_job(), ReplayGpu(SMALL_TABLE), monitor="val_metric",
                                       heartbeat=False)  # fmt: skip
        model = Tiny(callback)  # noqa: F821
        model.train_dataloader = lambda: DataLoader(TensorDataset(torch.ones(64, 1), torch.ones(64, 1)), batch_size=8)
        with pytest.raises(ValueError, match="callback.local_batch_size"):
            _trainer(tmp_path, callback).fit(model)
        (stored,) = client.get_job("team/job").runs
    assert stored.state == pb.RUN_STATE_FAILED


DDP_SCRIPT = MODULE + textwrap.dedent('''
    import json, sys
    from pathlib import Path
    from client_sdk.client import OptimizerClient
    from client_sdk.lightning import PowerBanditCallback
    from client_sdk.replay import ReplayGpu
    from tests.helpers import SMALL_TABLE, small_job

    address, out = sys.argv[1], Path(sys.argv[2])
    gpu = ReplayGpu(SMALL_TABLE, model="Replay A40")
    job = small_job("team/ddp", batch_sizes=(64, 128), default_batch_size=128)
    callback = PowerBanditCallback(OptimizerClient(address, timeout_s=10), job, gpu, monitor="val_metric",
                                   heartbeat=False)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=10, callbacks=[callback],
                        logger=L.loggers.CSVLogger(out), enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Tiny(callback, target_epoch=2))
    done = callback.completed_run
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps({
        "run_id": done.run_id, "epochs": done.epochs, "energy_j": done.energy_j, "time_s": done.time_s,
        "local_energy_j": gpu.energy_j(), "local_batch_size": callback.local_batch_size,
        "limit": gpu.power_limit_w(), "gpu_count": done.gpu_count, "current_epoch": trainer.current_epoch,
    }))
    # tear the process group down before the interpreter exits: a gloo thread still running then
    # aborts the process ("terminate called without an active exception"), which a loaded machine hits
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
''')


def test_ddp_rank0_talks_the_suggestion_is_broadcast_energy_is_summed(server: EmbeddedServer, tmp_path: Path) -> None:
    script = tmp_path / "train_ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "LOCAL_RANK", "RANK", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, str(script), server.address, str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for key in ("run_id", "epochs", "energy_j", "time_s", "gpu_count", "current_epoch", "local_batch_size"):
        assert ranks[0][key] == ranks[1][key], key
    first = ranks[0]
    assert first["gpu_count"] == 2 and first["epochs"] == 2 and first["local_batch_size"] == 64  # 128 / 2
    assert first["energy_j"] == pytest.approx(ranks[0]["local_energy_j"] + ranks[1]["local_energy_j"])
    energy, time_s, _ = expected(128, 2, gpus=2)
    assert first["energy_j"] == pytest.approx(energy) and first["time_s"] == pytest.approx(time_s)
    assert ranks[0]["limit"] == ranks[1]["limit"] == 300
    with OptimizerClient(server.address, timeout_s=10) as client:
        (stored,) = client.get_job("team/ddp").runs  # one run: only rank 0 talked to the server
    assert stored.state == pb.RUN_STATE_COMPLETED and stored.reached_target
