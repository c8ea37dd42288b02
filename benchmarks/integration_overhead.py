"""Wall time each powerbandit integration adds per epoch, on CPU with the replay GPU.

    python benchmarks/integration_overhead.py [--epochs 5] [--steps 40] [--repeats 3] [--json]

A real server (EmbeddedServer over a temporary SQLite file) on loopback; the same tiny training
(a linear layer, ``--steps`` batches per epoch) is timed without powerbandit and with each
integration; the overhead per epoch is ``(with - without) / epochs``, the minimum over
``--repeats`` runs of each (the least disturbed; one warm-up run of each first, then alternating). Integrations: the plain loop with
``client.start_run`` (``step`` per batch, ``epoch_end`` per epoch, ``complete``), the PyTorch helper
``train_with_powerbandit``, the Hugging Face callback in ``Trainer.train()`` (logging every step, so
its ``on_log`` work is in), the Lightning callback in ``Trainer.fit()``, and per run (not per epoch)
``powerbandit run`` around a trivial command and an energy window (begin plus end). The per-epoch
numbers include each run's fixed costs (start and complete: register, Suggest, CompleteRun) spread
over its epochs, except for the Hugging Face callback, whose run starts before ``train()`` (when the
batch size is read to build the Trainer). Frameworks that
are not installed are skipped. The replay GPU reads no hardware: on a real GPU each energy reading
adds NVML's own cost (tens of microseconds per GPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from client_sdk.client import Job, OptimizerClient  # noqa: E402
from client_sdk.energy import EnergyMeter  # noqa: E402
from client_sdk.replay import ReplayGpu  # noqa: E402
from optimizer_server.server import EmbeddedServer  # noqa: E402

TABLE = {
    32: {100.0: (90.0, 30.0), 200.0: (170.0, 20.0), 300.0: (240.0, 18.0)},
    64: {100.0: (95.0, 20.0), 200.0: (180.0, 12.0), 300.0: (250.0, 11.0)},
}
BATCH = 32  # the job has one batch size, so every run trains the same amount


def _job(name: str, epochs: int) -> Job:
    return Job(f"bench/{name}", batch_sizes=(BATCH,), default_batch_size=BATCH, target_metric=2.0,
               max_epochs=epochs, seed=1)  # fmt: skip  # the metric never reaches 2: every run trains all epochs


def _paired(repeats: int, without: Callable[[], float], with_it: Callable[[], float]) -> tuple[float, float]:
    """Best of ``repeats`` of each, after one warm-up of each (imports, first allocations), alternating."""
    without()
    with_it()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        times[0].append(without())
        times[1].append(with_it())
    return min(times[0]), min(times[1])


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Bench:
    def __init__(self, address: str, epochs: int, steps: int, repeats: int) -> None:
        import torch

        self.torch = torch
        self.address, self.epochs, self.steps, self.repeats = address, epochs, steps, repeats
        self.client = OptimizerClient(address, timeout_s=30)
        torch.manual_seed(0)
        self.x = torch.randn(steps * BATCH, 32)
        self.y = torch.randn(steps * BATCH, 32)
        self.counter = 0

    def _fresh_job(self, name: str) -> Job:
        self.counter += 1
        return _job(f"{name}-{self.counter}", self.epochs)

    def _model(self) -> tuple[Any, Any]:
        model = self.torch.nn.Linear(32, 32)
        return model, self.torch.optim.SGD(model.parameters(), lr=0.01)

    def _train_epoch(self, model: Any, optimizer: Any, on_step: Callable[[], None] | None = None) -> None:
        for i in range(self.steps):
            x, y = self.x[i * BATCH:(i + 1) * BATCH], self.y[i * BATCH:(i + 1) * BATCH]
            optimizer.zero_grad()
            (model(x) - y).pow(2).mean().backward()
            optimizer.step()
            if on_step is not None:
                on_step()

    # ------------------------------------------------------------------------------ plain loop
    def plain(self) -> tuple[float, float]:
        def without() -> float:
            model, optimizer = self._model()
            return _timed(lambda: [self._train_epoch(model, optimizer) for _ in range(self.epochs)])

        def with_run() -> float:
            model, optimizer = self._model()

            def body() -> None:
                run = self.client.start_run(self._fresh_job("plain"), gpu=ReplayGpu(TABLE), heartbeat=False)
                run.set_steps_per_epoch(self.steps)
                for _ in range(self.epochs):
                    self._train_epoch(model, optimizer, run.step)
                    run.epoch_end(0.5)
                run.complete()

            return _timed(body)

        return _paired(self.repeats, without, with_run)

    def helper(self) -> tuple[float, float]:
        from client_sdk.torch_helpers import train_with_powerbandit

        def without() -> float:
            model, optimizer = self._model()
            return _timed(lambda: [self._train_epoch(model, optimizer) for _ in range(self.epochs)])

        def with_helper() -> float:
            model, optimizer = self._model()
            state = {"i": 0}

            def step(_: object) -> None:
                i = state["i"] % self.steps
                state["i"] += 1
                x, y = self.x[i * BATCH:(i + 1) * BATCH], self.y[i * BATCH:(i + 1) * BATCH]
                optimizer.zero_grad()
                (model(x) - y).pow(2).mean().backward()
                optimizer.step()

            return _timed(lambda: train_with_powerbandit(
                self.client, self._fresh_job("helper"), make_loader=lambda b: range(self.steps),
                train_step=step, evaluate=lambda: 0.5, gpu=ReplayGpu(TABLE), heartbeat=False,
            ))  # fmt: skip

        return _paired(self.repeats, without, with_helper)

    # ------------------------------------------------------------------------------------- HF
    def hf(self, tmp: Path) -> tuple[float, float]:
        from transformers import PrinterCallback, Trainer, TrainingArguments

        from client_sdk.hf import PowerBanditCallback

        torch = self.torch
        rows = [{"x": self.x[i].tolist(), "labels": self.y[i].tolist()} for i in range(self.steps * BATCH)]

        class Model(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.linear = torch.nn.Linear(32, 32)

            def forward(self, x: Any, labels: Any) -> dict[str, Any]:
                return {"loss": (self.linear(x) - labels).pow(2).mean()}

        def run(with_callback: bool) -> float:
            callbacks = []
            if with_callback:
                callback = PowerBanditCallback(self.client, self._fresh_job("hf"), ReplayGpu(TABLE),
                                               metric_key="loss", heartbeat=False)  # fmt: skip
                callbacks.append(callback)
                assert callback.local_batch_size == BATCH
            args = TrainingArguments(
                output_dir=str(tmp / "hf"), per_device_train_batch_size=BATCH, num_train_epochs=self.epochs,
                save_strategy="no", report_to=[], use_cpu=True, logging_steps=1, disable_tqdm=True,
                eval_strategy="no",
            )  # fmt: skip
            trainer = Trainer(model=Model(), args=args, train_dataset=rows, callbacks=callbacks)
            trainer.remove_callback(PrinterCallback)  # no printing of every log line
            return _timed(trainer.train)

        return _paired(self.repeats, lambda: run(False), lambda: run(True))

    # ------------------------------------------------------------------------------ Lightning
    def lightning(self, tmp: Path) -> tuple[float, float]:
        import lightning.pytorch as L
        from torch.utils.data import DataLoader, TensorDataset

        from client_sdk.lightning import PowerBanditCallback

        torch, x, y = self.torch, self.x, self.y

        class Module(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.linear = torch.nn.Linear(32, 32)

            def train_dataloader(self) -> DataLoader:
                return DataLoader(TensorDataset(x, y), batch_size=BATCH)

            def training_step(self, batch: Any, batch_idx: int) -> Any:
                loss = (self.linear(batch[0]) - batch[1]).pow(2).mean()
                self.log("metric", 0.5, on_epoch=True, on_step=False)
                return loss

            def configure_optimizers(self) -> Any:
                return torch.optim.SGD(self.parameters(), lr=0.01)

        def run(with_callback: bool) -> float:
            callbacks = []
            if with_callback:
                callbacks.append(PowerBanditCallback(self.client, self._fresh_job("lightning"), ReplayGpu(TABLE),
                                                     monitor="metric", heartbeat=False))  # fmt: skip
            trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=self.epochs, callbacks=callbacks,
                                logger=L.loggers.CSVLogger(tmp / "lightning"), enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
            return _timed(lambda: trainer.fit(Module()))

        return _paired(self.repeats, lambda: run(False), lambda: run(True))

    # ---------------------------------------------------------------------------- per run
    def wrapper(self, tmp: Path) -> tuple[float, float]:
        table = tmp / "table.json"
        table.write_text(json.dumps({"table": TABLE}))
        child = [sys.executable, "-c", "print('powerbandit-epochs: 1')"]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

        def direct() -> float:
            return _timed(lambda: subprocess.run(child, check=True, capture_output=True, env=env))

        def wrapped() -> float:
            job = self._fresh_job("wrapper")
            command = [sys.executable, "-m", "powerbandit", "run", "--job", job.job_id, "--server", self.address,
                       "--replay", str(table), "--batch-sizes", str(BATCH), "--default-batch-size", str(BATCH),
                       "--target-metric", "2", "--max-epochs", "1", "--", *child]  # fmt: skip
            return _timed(lambda: subprocess.run(command, check=True, capture_output=True, env=env))

        return _paired(self.repeats, direct, wrapped)

    def window(self) -> float:
        gpu = ReplayGpu(TABLE)
        meter = EnergyMeter(gpu)
        count = 10_000
        start = time.perf_counter()
        for _ in range(count):
            meter.end(meter.begin("w"))
        return (time.perf_counter() - start) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40, help="batches per epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")  # the frameworks' advice about tiny datasets
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results: dict[str, Any] = {"epochs": args.epochs, "steps_per_epoch": args.steps, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        with EmbeddedServer(f"sqlite:///{tmp / 'bench.db'}") as server:
            bench = Bench(server.address, args.epochs, args.steps, args.repeats)
            cases: dict[str, Callable[[], tuple[float, float]]] = {
                "plain loop (client.start_run)": bench.plain,
                "PyTorch helper (train_with_powerbandit)": bench.helper,
                "Hugging Face Trainer callback": lambda: bench.hf(tmp),
                "Lightning callback": lambda: bench.lightning(tmp),
            }
            for name, case in cases.items():
                try:
                    without, with_it = case()
                except ImportError as exc:
                    results[name] = {"skipped": f"not installed: {exc.name}"}
                    continue
                results[name] = {
                    "without_s": without,
                    "with_s": with_it,
                    "overhead_per_epoch_ms": 1000 * (with_it - without) / args.epochs,
                }
            direct, wrapped = bench.wrapper(tmp)
            results["powerbandit run (per run)"] = {"without_s": direct, "with_s": wrapped,
                                                    "overhead_per_run_ms": 1000 * (wrapped - direct)}  # fmt: skip
            results["energy window begin+end (per window)"] = {"overhead_us": 1e6 * bench.window()}
            bench.client.close()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{args.epochs} epochs x {args.steps} batches, best of {args.repeats}; replay GPU; CPU")
    for name, value in results.items():
        if not isinstance(value, dict):
            continue
        if "skipped" in value:
            print(f"  {name:45s} skipped ({value['skipped']})")
        elif "overhead_per_epoch_ms" in value:
            print(f"  {name:45s} {value['without_s']:7.3f} s -> {value['with_s']:7.3f} s: "
                  f"{value['overhead_per_epoch_ms']:+8.1f} ms per epoch")  # fmt: skip
        elif "overhead_per_run_ms" in value:
            print(f"  {name:45s} {value['without_s']:7.3f} s -> {value['with_s']:7.3f} s: "
                  f"{value['overhead_per_run_ms']:+8.1f} ms per run")  # fmt: skip
        else:
            print(f"  {name:45s} {value['overhead_us']:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
