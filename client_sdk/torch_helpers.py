"""PyTorch helpers: a whole training loop in one call, and distributed data parallel (DDP) runs.

This module needs PyTorch (``pip install 'powerbandit[torch]'``); the rest of the SDK does not
import it.

**One process.** :func:`train_with_powerbandit` runs the loop of the README for you::

    result = train_with_powerbandit(
        client, job,
        make_loader=lambda batch_size: DataLoader(train_set, batch_size=batch_size, shuffle=True),
        train_step=lambda batch: step(model, optimizer, batch),
        evaluate=lambda: accuracy(model, val_loader),
    )

It asks the server for a configuration, builds the loader with the suggested batch size, fits the
power-limit profile into the first epoch (``len(loader)`` steps), trains until the target metric,
the server's stop or ``job.max_epochs``, and completes the run (or fails it if a callback raised).

**DDP.** Under ``torchrun`` (a ``torch.distributed`` process group initialised) the same call, or
:class:`DistributedRun` directly, makes rank 0 the only process that talks to the server. Every
answer of the server is broadcast to the other ranks (``broadcast_object_list``), so every rank
applies the same batch size and power limits to its own GPU, in step; every energy reading is an
``all_reduce`` (sum) over the ranks, so the run reports the energy of all GPUs; the clock is rank
0's; the metric given to :meth:`DistributedRun.epoch_end` is rank 0's (reduce a sharded metric
yourself first) and the stop decision is therefore the same on every rank. The job's batch sizes
are **global** batch sizes: each rank loads :attr:`DistributedRun.local_batch_size` samples per step.

Rules for DDP: every rank must call ``step()`` the same number of times and ``epoch_end()`` at the
same points (as DDP itself requires); each rank's :class:`~client_sdk.gpu.Gpu` must measure only the
GPU(s) of that rank (the default, :func:`local_nvml_gpu`, does). An exception on one rank only
cannot be handled by the others (they wait in DDP's own collectives, as without powerbandit);
rank 0 then reports the run failed with the energy measured so far.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from client_sdk.gpu import Gpu, GpuInfo

if TYPE_CHECKING:
    from client_sdk.client import Job, OptimizerClient
    from client_sdk.run import OfflineRun, TrainingRun
    from powerbandit.v1 import optimizer_pb2 as pb

__all__ = [
    "DistributedGpu",
    "DistributedRun",
    "RunResult",
    "fit_profile_to_epoch",
    "local_nvml_gpu",
    "train_with_powerbandit",
]

log = logging.getLogger("powerbandit.sdk.torch")

StepsPerEpoch = int | Callable[[int], int] | None


# ------------------------------------------------------------------------------------- helpers
def fit_profile_to_epoch(run: TrainingRun, steps_per_epoch: int) -> None:
    """Tell a started run how many ``step()`` calls an epoch has (known only once the batch size is).

    The power-limit profile is re-planned to fill the first epoch in equal slices, as
    ``client.run(..., steps_per_epoch=n)`` would have done; call it before the first ``step()``.
    """
    run.set_steps_per_epoch(steps_per_epoch)


def _resolve_steps(steps_per_epoch: StepsPerEpoch, batch_size: int) -> int | None:
    if steps_per_epoch is None or isinstance(steps_per_epoch, int):
        return steps_per_epoch
    return int(steps_per_epoch(batch_size))


def is_distributed() -> bool:
    """True inside an initialised ``torch.distributed`` process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective_device() -> torch.device:
    """Where collective tensors must live: the current CUDA device for NCCL, the CPU otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def local_nvml_gpu(**kwargs: Any) -> Gpu:
    """An :class:`~client_sdk.nvml.NvmlGpu` measuring only this process's CUDA device.

    Under DDP every rank usually sees every GPU of its machine; measuring all of them on every rank
    would count each GPU's energy once per rank. The device is matched by UUID (robust to
    ``CUDA_VISIBLE_DEVICES``), falling back to the ``LOCAL_RANK``-th visible GPU. Without a GPU or NVML
    it raises :class:`~client_sdk.gpu.GpuUnavailableError` naming the ways out.
    """
    from client_sdk.nvml import NvmlGpu

    if not torch.cuda.is_available():
        return NvmlGpu(**kwargs)  # raises the "ways out" error where there is no GPU or driver
    device = torch.cuda.current_device()
    try:
        import pynvml

        want = str(torch.cuda.get_device_properties(device).uuid).lower().removeprefix("gpu-")
        pynvml.nvmlInit()
        try:
            for index in range(pynvml.nvmlDeviceGetCount()):
                raw = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(index))
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
                if text.lower().removeprefix("gpu-") == want:
                    return NvmlGpu(device_indices=[index], **kwargs)
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # no uuid in this torch, or NVML trouble: NvmlGpu reports the latter
        log.debug("matching the CUDA device to NVML by UUID failed: %s", exc)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return NvmlGpu(device_indices=[device], **kwargs)
    log.warning("could not match CUDA device %d to an NVML GPU by UUID; measuring all visible GPUs", device)
    return NvmlGpu(**kwargs)


# ------------------------------------------------------------------------------------ DDP gpu
class DistributedGpu(Gpu):
    """One rank's view of the GPUs of all ranks (a collective: create it on every rank).

    ``info()`` describes all ranks' GPUs (``count`` summed; power limits settable only if they are
    on every rank); ``energy_j()`` is the sum of every rank's counter (an ``all_reduce``) and
    ``now_s()`` is rank 0's clock (a broadcast), so **both must be called on all ranks at the same
    points**, which :class:`DistributedRun` guarantees. Power limits are applied to this rank's
    GPU(s) only, without communication.
    """

    def __init__(self, local: Gpu, *, group: dist.ProcessGroup | None = None) -> None:
        self.local = local
        self.group = group
        self.src = dist.get_global_rank(group, 0) if group is not None else 0
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.device = _collective_device()
        infos: list[GpuInfo | None] = [None] * self.world_size
        dist.all_gather_object(infos, local.info(), group=group)
        models = sorted({i.model for i in infos if i is not None})
        if len(models) > 1:
            raise ValueError(
                f"the ranks have GPUs of different models ({', '.join(models)}); powerbandit learns per "
                "GPU model: run the job on one model"
            )
        first = infos[0]
        assert first is not None
        self._info = GpuInfo(
            model=first.model,
            count=sum(i.count for i in infos if i is not None),
            min_power_limit_w=first.min_power_limit_w,
            max_power_limit_w=first.max_power_limit_w,
            power_limits_w=first.power_limits_w,
            can_set_power_limit=all(i is not None and i.can_set_power_limit for i in infos),
        )
        self.local_only = False  # set after an exception: no more collectives
        self._energy_sync = (0.0, local.energy_j())  # (summed counter, local counter) at the last sync
        self._clock_sync = (0.0, local.now_s())  # (rank 0's clock, local clock) at the last sync

    def info(self) -> GpuInfo:
        return self._info

    def energy_j(self) -> float:
        local = self.local.energy_j()
        if self.local_only:  # the others' energy since the last sync is unknown: count ours only
            return self._energy_sync[0] + (local - self._energy_sync[1])
        value = torch.tensor([local], dtype=torch.float64, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.SUM, group=self.group)
        self._energy_sync = (float(value.item()), local)
        return self._energy_sync[0]

    def now_s(self) -> float:
        local = self.local.now_s()
        if self.local_only:
            return self._clock_sync[0] + (local - self._clock_sync[1])
        value = torch.tensor([local], dtype=torch.float64, device=self.device)
        dist.broadcast(value, src=self.src, group=self.group)
        self._clock_sync = (float(value.item()), local)
        return self._clock_sync[0]

    def power_limit_w(self) -> float:
        return self.local.power_limit_w()

    def set_power_limit(self, power_limit_w: float) -> float:
        return self.local.set_power_limit(power_limit_w)

    def restore_power_limit(self) -> None:
        self.local.restore_power_limit()

    def power_limit_control(self) -> str:
        return self.local.power_limit_control()

    def renew_power_limit_lease(self) -> None:
        self.local.renew_power_limit_lease()

    def begin_run(self, batch_size: int) -> None:
        self.local.begin_run(batch_size)

    def advance(self, epochs: float) -> None:
        self.local.advance(epochs)

    def close(self) -> None:
        self.local.close()


class _BroadcastClient:
    """Stands in for the :class:`OptimizerClient` inside a DDP run.

    On rank 0 it calls the server and broadcasts the answer; on the other ranks it receives that
    answer instead of calling. Failures and heartbeats are rank 0's alone (no communication), so a
    crashed rank never waits on the others.
    """

    def __init__(self, client: OptimizerClient | None, gpu: DistributedGpu) -> None:
        self.client = client
        self.gpu = gpu
        self.leader = gpu.rank == 0
        self.address = client.address if client is not None else ""

    def _collective(self, method: str, *args: Any, **kwargs: Any) -> Any:
        box: list[Any] = [None]
        if self.leader:
            assert self.client is not None
            try:
                box[0] = ("ok", getattr(self.client, method)(*args, **kwargs))
            except Exception as exc:
                from client_sdk.errors import OptimizerClientError

                # the typed error itself travels (pickled), so every rank can catch the same class
                box[0] = ("error", exc if isinstance(exc, OptimizerClientError) else f"{type(exc).__name__}: {exc}")
                dist.broadcast_object_list(box, src=self.gpu.src, group=self.gpu.group)
                raise
        dist.broadcast_object_list(box, src=self.gpu.src, group=self.gpu.group)
        status, value = box[0]
        if status == "error":
            if isinstance(value, BaseException):
                raise value
            raise RuntimeError(f"rank 0's call {method} to the powerbandit server failed: {value}")
        return value

    def register_job(self, *args: Any, **kwargs: Any) -> pb.RegisterJobResponse:
        return self._collective("register_job", *args, **kwargs)

    def suggest(self, *args: Any, **kwargs: Any) -> pb.SuggestResponse:
        return self._collective("suggest", *args, **kwargs)

    def report_profile(self, *args: Any, **kwargs: Any) -> pb.ReportProfileResponse:
        return self._collective("report_profile", *args, **kwargs)

    def report_progress(self, *args: Any, **kwargs: Any) -> pb.ReportProgressResponse:
        return self._collective("report_progress", *args, **kwargs)

    def complete_run(self, *args: Any, **kwargs: Any) -> pb.CompleteRunResponse:
        return self._collective("complete_run", *args, **kwargs)

    def fail_run(self, *args: Any, **kwargs: Any) -> Any:
        return self.client.fail_run(*args, **kwargs) if self.leader and self.client is not None else None

    def heartbeat(self, *args: Any, **kwargs: Any) -> Any:
        return self.client.heartbeat(*args, **kwargs) if self.leader and self.client is not None else None


class DistributedRun:
    """One run of a job trained with DDP; a context manager to enter on **every** rank.

    ``client`` is needed on rank 0 only (pass ``None`` elsewhere); ``gpu`` is this rank's GPU
    (default: :func:`local_nvml_gpu`). ``steps_per_epoch`` (an int, or a function of the global batch
    size) is the number of ``step()`` calls per epoch on each rank. Inside the block use
    :attr:`batch_size` (global) or :attr:`local_batch_size` (this rank's), :meth:`step` and
    :meth:`epoch_end` exactly as with :class:`~client_sdk.run.TrainingRun`.
    """

    def __init__(
        self,
        client: OptimizerClient | None,
        job: Job,
        gpu: Gpu | None = None,
        *,
        steps_per_epoch: StepsPerEpoch = None,
        heartbeat: bool = True,
        register: bool = True,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("DistributedRun needs an initialised torch.distributed process group")
        self.job = job
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        if self.rank == 0 and client is None:
            raise ValueError("rank 0 of a DistributedRun needs the OptimizerClient")
        self.gpu = DistributedGpu(gpu if gpu is not None else local_nvml_gpu(), group=group)
        self._steps_per_epoch = steps_per_epoch
        self._client = client
        self._register = register
        self._heartbeat = heartbeat
        self.run: TrainingRun | None = None

    # ---- accessors
    def _require(self) -> TrainingRun:
        if self.run is None:
            raise RuntimeError("the run has not started: use it as `with DistributedRun(...) as run:`")
        return self.run

    @property
    def run_id(self) -> str:
        """The server's id of this run (the same on every rank)."""
        return self._require().run_id

    @property
    def batch_size(self) -> int:
        """The job's (global) batch size for this run."""
        return self._require().batch_size

    @property
    def local_batch_size(self) -> int:
        """This rank's share of :attr:`batch_size`."""
        size = self.batch_size
        if size % self.world_size:
            raise ValueError(
                f"batch size {size} does not split over {self.world_size} ranks; give the job batch "
                f"sizes divisible by the world size"
            )
        return size // self.world_size

    @property
    def power_limit_w(self) -> float:
        """This rank's per-GPU power limit in force now."""
        return self.gpu.power_limit_w()

    @property
    def profiling(self) -> bool:
        """True while candidate power limits are being measured."""
        return self._require().profiling

    @property
    def completed_run(self) -> pb.Run | None:
        """The server's record of the run once completed (on every rank)."""
        return self._require().completed_run

    @property
    def reached_target(self) -> bool:
        """Whether the metric reached the job's target."""
        return self._require().reached_target

    @property
    def stop_reason(self) -> str:
        """The server's reason to stop, if it asked to."""
        return self._require().stop_reason

    @property
    def epochs(self) -> int:
        """Epochs reported so far."""
        return self._require().epochs

    @property
    def last_metric(self) -> float | None:
        """The newest finite metric reported (rank 0's)."""
        return self._require().last_metric

    @property
    def offline(self) -> bool:
        """True when fail-open made the run offline (not used under DDP: rank 0's errors raise)."""
        return self._require().offline

    @property
    def offline_result(self) -> OfflineRun | None:
        """What an offline run measured (see :class:`~client_sdk.run.TrainingRun`)."""
        return self._require().offline_result

    @property
    def state(self) -> str:
        """``"new"``, ``"running"``, ``"completed"`` or ``"failed"``."""
        return self.run.state if self.run is not None else "new"

    def read_counters(self) -> tuple[float, float]:
        """``(energy J of all ranks' GPUs, rank 0's time s)`` since the run started; a collective."""
        return self._require().read_counters()

    @property
    def phase(self) -> str:
        """``"profiling"``, ``"training"`` or ``"offline"`` (see :class:`~client_sdk.run.TrainingRun`)."""
        return self._require().phase

    def tracker_metrics(self, *, fresh: bool = False) -> dict[str, float]:
        """The run's numbers for experiment trackers (all ranks' energy); ``fresh=True`` is a collective.

        By default the counters of the newest reading (every ``epoch_end`` reads them) are used, so
        calling it on some ranks only is safe.
        """
        return self._require().tracker_metrics(fresh=fresh)

    # ---- lifecycle
    def __enter__(self) -> DistributedRun:
        return self.start()

    def start(self) -> DistributedRun:
        """Start the run on every rank (rank 0 asks the server, the answer is broadcast); returns self."""
        from client_sdk.errors import RunStateError
        from client_sdk.run import TrainingRun

        if self.run is not None:
            raise RunStateError(f"the run was already started (it is {self.run.state})")
        proxy = _BroadcastClient(self._client, self.gpu)
        if self._register:  # a refusal (e.g. an invalid job) raises the same typed error on every rank
            proxy.register_job(self.job)
        first = self._steps_per_epoch if isinstance(self._steps_per_epoch, int) else None
        self.run = TrainingRun(
            proxy,  # type: ignore[arg-type]
            self.job,
            self.gpu,
            steps_per_epoch=first,
            heartbeat=self._heartbeat and self.rank == 0,
        )
        self.run.start()
        try:
            steps = _resolve_steps(self._steps_per_epoch, self.run.batch_size)
            if steps is not None and first is None:
                fit_profile_to_epoch(self.run, steps)
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def set_steps_per_epoch(self, steps_per_epoch: int) -> None:
        """Say how many ``step()`` calls an epoch has on each rank (before the first ``step()``); every rank."""
        self._require().set_steps_per_epoch(steps_per_epoch)

    def step(self) -> None:
        """Call after every training step, on every rank."""
        self._require().step()

    def epoch_end(self, metric: float | None = None) -> bool:
        """Call after every epoch on every rank; rank 0's ``metric`` counts. True (on all ranks) = stop."""
        run = self._require()
        box = [metric]
        dist.broadcast_object_list(box, src=self.gpu.src, group=self.group)
        return run.epoch_end(box[0])

    def complete(self, metric: float | None = None, *, epochs: float | None = None) -> pb.Run | None:
        """End the run as trained, on **every** rank (a collective); rank 0's ``metric`` counts.

        Same meaning as :meth:`client_sdk.run.TrainingRun.complete`; returns the server's record
        of the run on every rank.
        """
        run = self._require()
        box = [metric]
        dist.broadcast_object_list(box, src=self.gpu.src, group=self.group)
        return run.complete(box[0], epochs=epochs)

    def fail(self, reason: str | BaseException) -> None:
        """End the run as crashed; may be called on one rank only (rank 0 reports, no collectives)."""
        run = self._require()
        self.gpu.local_only = True  # the other ranks may not be there to answer
        run.fail(reason)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self.run is None or self.run.state != "running":
            return
        if exc is not None:
            self.fail(f"{exc_type.__name__ if exc_type else 'error'}: {exc}")
        else:
            self.complete()


# ------------------------------------------------------------------------------ training loop
@dataclass(frozen=True)
class RunResult:
    """What one run chose and measured (``energy_j``/``time_s``: all ranks' GPUs, as reported)."""

    run_id: str
    batch_size: int
    power_limit_w: float
    epochs: int
    energy_j: float
    time_s: float
    reached_target: bool
    final_metric: float | None
    stop_reason: str
    profiled: bool
    gpu_count: int
    cost: float


def train_with_powerbandit(
    client: OptimizerClient | None,
    job: Job,
    *,
    make_loader: Callable[[int], Iterable[Any]],
    train_step: Callable[[Any], object],
    evaluate: Callable[[], float | None],
    gpu: Gpu | None = None,
    steps_per_epoch: StepsPerEpoch = None,
    heartbeat: bool = True,
    distributed: bool | None = None,
    on_epoch: Callable[[int, float | None], None] | None = None,
) -> RunResult:
    """Run one recurrence of ``job``: suggestion in, training, measurements out.

    ``make_loader(batch_size)`` builds the training data for the suggested batch size (this rank's
    share under DDP); ``train_step(batch)`` trains on one batch; ``evaluate()`` returns the metric
    compared with ``job.target_metric``. ``steps_per_epoch`` defaults to ``len(loader)``. ``gpu``
    defaults to NVML (this rank's GPU under DDP); pass a :class:`~client_sdk.replay.ReplayGpu` for a
    dry run. ``distributed`` defaults to whether a ``torch.distributed`` group of more than one
    process is initialised; then ``client`` is used on rank 0 only. ``on_epoch(epoch, metric)``
    is called after each epoch's evaluation. An exception fails the run and propagates.
    """
    if distributed is None:
        distributed = is_distributed()

    def steps_for(batch_size: int, loader: Iterable[Any]) -> int:
        resolved = _resolve_steps(steps_per_epoch, batch_size)
        if resolved is not None:
            return resolved
        if not isinstance(loader, Sized):
            raise TypeError("the loader has no len(): pass steps_per_epoch")
        return len(loader)

    if distributed:
        if gpu is None:
            gpu = local_nvml_gpu()
        ctx: Any = DistributedRun(client, job, gpu, heartbeat=heartbeat)
    else:
        if client is None:
            raise ValueError("a single-process run needs the OptimizerClient")
        ctx = client.run(job, gpu, heartbeat=heartbeat)

    metric: float | None = None
    with ctx as run:
        local = run.local_batch_size if distributed else run.batch_size
        loader = make_loader(local)
        inner = run.run if distributed else run
        fit_profile_to_epoch(inner, steps_for(run.batch_size, loader))
        for epoch in range(1, job.max_epochs + 1):
            sampler = getattr(loader, "sampler", None)
            if sampler is not None and hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle per epoch
            for batch in loader:
                train_step(batch)
                run.step()
            metric = evaluate()
            if on_epoch is not None:
                on_epoch(epoch, metric)
            if run.epoch_end(metric):
                break
    final = inner.last_metric
    offline = inner.offline_result
    if offline is not None:  # fail-open: the server was out of reach; nothing was reported
        return RunResult(
            run_id="",
            batch_size=offline.batch_size,
            power_limit_w=offline.power_limit_w,
            epochs=offline.epochs,
            energy_j=offline.energy_j,
            time_s=offline.time_s,
            reached_target=offline.reached_target,
            final_metric=final if final is not None and math.isfinite(final) else None,
            stop_reason="",
            profiled=False,
            gpu_count=inner.gpu.info().count,
            cost=offline.cost,
        )
    done = run.completed_run
    assert done is not None
    return RunResult(
        run_id=done.run_id,
        batch_size=done.batch_size,
        power_limit_w=done.power_limit_w,
        epochs=int(done.epochs),
        energy_j=done.energy_j,
        time_s=done.time_s,
        reached_target=done.reached_target,
        final_metric=final if final is not None and math.isfinite(final) else None,
        stop_reason=run.stop_reason,
        profiled=bool(done.profiled),
        gpu_count=int(done.gpu_count),
        cost=done.cost,
    )
