"""A real PyTorch training loop under powerbandit: a small MLP classifier on synthetic data.

Each recurrence trains a freshly initialised model until its validation accuracy reaches the
job's target (or the server says stop), with the batch size and GPU power limit the server
chose, and prints what was chosen and measured. The same script runs:

* on a CPU-only machine with ``--replay``: the training is real, but energy and time come from a
  small **made-up** replay table (:class:`~client_sdk.replay.ReplayGpu`), not from measurements;
* on an NVIDIA GPU for real (no ``--replay``): NVML measures energy and applies power limits
  (without permission to set them, the run goes on at the limit in force);
* under ``torchrun --nproc-per-node N`` (DDP, gloo on CPU, NCCL on GPUs): rank 0 talks to the
  server, the other ranks follow, energy is summed over the ranks.

Without a GPU and without ``--replay`` it stops with an error naming the two ways out.

    python examples/train_synthetic_classifier.py --replay --recurrences 5
    python examples/train_synthetic_classifier.py --server 127.0.0.1:50051     # on a GPU machine

Without ``--server`` an embedded server on a temporary SQLite file is started (forgotten at exit).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

try:
    import torch
except ModuleNotFoundError as missing:  # the quickstart's slim install has no PyTorch
    raise SystemExit(f"error: this example needs PyTorch ({missing}): pip install 'powerbandit[torch]'") from None
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from client_sdk.client import Job, OptimizerClient
from client_sdk.gpu import Gpu, GpuUnavailableError
from client_sdk.replay import ReplayGpu
from client_sdk.torch_helpers import RunResult, local_nvml_gpu, train_with_powerbandit

BATCH_SIZES = (32, 64, 128, 256)
FEATURES, CLASSES = 32, 4

# MADE-UP numbers for --replay (not measured): batch size -> power limit W -> (average power W,
# seconds per epoch). Lower limits save power but slow epochs down; larger batches are faster per
# epoch but need more epochs to reach the target.
REPLAY_TABLE: dict[int, dict[float, tuple[float, float]]] = {
    32: {150.0: (140.0, 40.0), 200.0: (180.0, 33.0), 250.0: (205.0, 31.0), 300.0: (220.0, 30.0)},
    64: {150.0: (145.0, 26.0), 200.0: (190.0, 20.0), 250.0: (225.0, 18.5), 300.0: (245.0, 18.0)},
    128: {150.0: (148.0, 19.0), 200.0: (195.0, 14.0), 250.0: (240.0, 12.5), 300.0: (270.0, 12.0)},
    256: {150.0: (149.0, 16.0), 200.0: (198.0, 11.5), 250.0: (246.0, 10.0), 300.0: (290.0, 9.5)},
}


def make_data(samples: int, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """A fixed synthetic classification task: labels from a random teacher network."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, FEATURES, generator=gen)
    teacher = torch.randn(FEATURES, CLASSES, generator=gen)
    y = (x @ teacher + 0.3 * torch.randn(samples, CLASSES, generator=gen)).argmax(dim=1)
    cut = samples * 4 // 5
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


class Mlp(nn.Module):
    """A small multilayer perceptron."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(FEATURES, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@contextlib.contextmanager
def distributed_setup(device: torch.device) -> Iterator[tuple[int, int]]:
    """``(rank, world_size)``; initialises torch.distributed under torchrun (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0, 1
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def one_recurrence(
    client: OptimizerClient | None,
    job: Job,
    gpu: Gpu,
    args: argparse.Namespace,
    recurrence: int,
    device: torch.device,
    world: int,
) -> RunResult:
    """Train a fresh model once under powerbandit."""
    train_set, val_set = make_data(args.samples, args.seed)
    torch.manual_seed(args.seed * 1000 + recurrence)
    model: nn.Module = Mlp(args.hidden).to(device)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    val_x, val_y = (t.to(device) for t in val_set.tensors)

    def make_loader(batch_size: int) -> DataLoader:
        sampler = DistributedSampler(train_set, seed=recurrence) if world > 1 else None
        return DataLoader(
            train_set, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True
        )

    def train_step(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, y = (t.to(device, non_blocking=True) for t in batch)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        accuracy = (model(val_x).argmax(dim=1) == val_y).float().mean().item()
        model.train()
        return accuracy

    return train_with_powerbandit(
        client, job, make_loader=make_loader, train_step=train_step, evaluate=evaluate, gpu=gpu
    )


def run_recurrences(
    client: OptimizerClient | None, args: argparse.Namespace, device: torch.device, rank: int, world: int
) -> int:
    """Train ``args.recurrences`` times, printing one line per run (rank 0)."""
    job = Job(
        job_id=args.job_id,
        batch_sizes=BATCH_SIZES,
        default_batch_size=128,
        target_metric=args.target,
        max_epochs=args.max_epochs,
        eta=args.eta,
        seed=args.seed,
    )
    try:
        gpu: Gpu = ReplayGpu(REPLAY_TABLE, model="Replay made-up GPU") if args.replay else local_nvml_gpu()
    except GpuUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if rank == 0:
        source = "replayed from a MADE-UP table (not measured)" if args.replay else "measured with NVML"
        print(f"job {job.job_id}: training on {device} x {world}; energy and time {source}")
        print(f"{'run':>4} {'batch':>6} {'limit W':>8} {'profiled':>8} {'epochs':>6} {'accuracy':>8} "
              f"{'energy J':>11} {'time s':>9}  outcome")  # fmt: skip
    started = time.perf_counter()
    for recurrence in range(1, args.recurrences + 1):
        result = one_recurrence(client, job, gpu, args, recurrence, device, world)
        if rank == 0:
            outcome = (
                "reached target"
                if result.reached_target
                else f"stopped: {result.stop_reason or 'max epochs'}"
            )
            accuracy = f"{result.final_metric:.3f}" if result.final_metric is not None else "-"
            print(f"{recurrence:>4} {result.batch_size:>6} {result.power_limit_w:>8g} {str(result.profiled):>8} "
                  f"{result.epochs:>6} {accuracy:>8} {result.energy_j:>11.1f} {result.time_s:>9.2f}  {outcome}",
                  flush=True)  # fmt: skip
    if rank == 0 and client is not None:
        best = client.get_job(job.job_id)
        print(f"best so far: batch size {best.best_batch_size} at {best.best_power_limit_w:g} W "
              f"({args.recurrences} runs in {time.perf_counter() - started:.1f} s)")  # fmt: skip
    gpu.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--server", help="HOST:PORT of a running powerbandit server (default: an embedded one)"
    )
    parser.add_argument(
        "--replay", action="store_true", help="replay energy/time from a made-up table (no GPU)"
    )
    parser.add_argument("--recurrences", type=int, default=8, help="how many times to train the job")
    parser.add_argument("--job-id", default="examples/synthetic-mlp", help="the recurring job's id")
    parser.add_argument("--samples", type=int, default=4000, help="synthetic samples (80%% train)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden width of the MLP")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--target", type=float, default=0.9, help="validation accuracy to reach")
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--eta", type=float, default=0.5, help="energy (1) vs time (0) trade-off")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = torch.device("cuda", torch.cuda.current_device())

    with distributed_setup(device) as (rank, world):
        if rank != 0:
            return run_recurrences(None, args, device, rank, world)
        if args.server:
            with OptimizerClient(args.server) as client:
                return run_recurrences(client, args, device, rank, world)
        from optimizer_server.server import EmbeddedServer

        with (
            tempfile.TemporaryDirectory() as tmp,
            EmbeddedServer(f"sqlite:///{tmp}/example.db") as server,
            OptimizerClient(server.address) as client,
        ):
            print(f"embedded powerbandit server at {server.address} (temporary database)")
            return run_recurrences(client, args, device, rank, world)


if __name__ == "__main__":
    sys.exit(main())
