"""A PyTorch Lightning ``Callback`` that runs each ``trainer.fit()`` as one powerbandit run.

Needs ``lightning`` (or the older ``pytorch_lightning``) and PyTorch; the rest of the SDK never imports
this module. Usage::

    callback = PowerBanditCallback(client, job, monitor="val_acc")

    class Model(L.LightningModule):
        def train_dataloader(self):          # the batch size the server chose (this process's share)
            return DataLoader(train_set, batch_size=callback.local_batch_size, shuffle=True)

    trainer = L.Trainer(max_epochs=job.max_epochs, callbacks=[callback])
    trainer.fit(Model())

What the hooks do: ``setup`` starts the run (asks the server; under DDP after the process group exists),
``on_train_start`` fits the power-limit profile into the first epoch (``trainer.num_training_batches``
batches) and checks the loader's batch size, ``on_train_batch_end`` calls ``run.step()``,
``on_train_epoch_end`` reports the epoch with ``trainer.callback_metrics[monitor]`` (the validation that
ends the epoch) and sets ``trainer.should_stop`` when the server says stop or the target is reached,
``on_fit_end`` completes the run, ``on_exception`` fails it. The run's numbers go through Lightning's
own logging (``pl_module.log`` each epoch, the logger at the end): ``powerbandit/energy_j``,
``powerbandit/time_s``, ``powerbandit/average_power_w``, ``powerbandit/power_limit_w``,
``powerbandit/batch_size``, ``powerbandit/epochs`` and ``powerbandit/profiling`` (the phase).

**DDP** (``strategy="ddp"`` or ``"ddp_spawn"``): rank 0 talks to the server, its answers are
broadcast, energy is summed over the ranks (:class:`~client_sdk.torch_helpers.DistributedRun`); the
job's batch sizes are global and each process loads :attr:`PowerBanditCallback.local_batch_size`.
Read it in ``train_dataloader()`` (the process group exists by then), not before ``trainer.fit()``.
``client`` may be given on every rank (only rank 0 uses it; it is picklable for ``ddp_spawn``).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

try:
    from lightning.pytorch.callbacks import Callback as _Base
except ImportError:  # the older package name, or neither installed
    try:
        from pytorch_lightning.callbacks import Callback as _Base  # type: ignore[no-redef]
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "client_sdk.lightning needs Lightning (the lightning or pytorch_lightning package), which is not "
            "installed: pip install 'powerbandit[lightning]'",
            name="lightning",
        ) from None

from client_sdk.callback_run import CallbackRun

if TYPE_CHECKING:
    from client_sdk.client import Job, OptimizerClient
    from client_sdk.gpu import Gpu
    from client_sdk.run import TrainingRun
    from client_sdk.torch_helpers import DistributedRun
    from powerbandit.v1 import optimizer_pb2 as pb

__all__ = ["PowerBanditCallback"]

log = logging.getLogger("powerbandit.sdk.lightning")


class PowerBanditCallback(CallbackRun, _Base):  # type: ignore[misc,valid-type]
    """Runs one recurrence of ``job`` inside ``trainer.fit()``; see the module docstring.

    ``gpu``: the :class:`~client_sdk.gpu.Gpu` to measure (default: NVML, this process's GPU under DDP);
    ``monitor``: the logged metric compared with ``job.target_metric`` (e.g. ``"val_acc"``);
    ``steps_per_epoch``: training batches per epoch (default ``trainer.num_training_batches``);
    ``log_metrics``: log the run's numbers through Lightning (default on).
    """

    def __init__(
        self,
        client: OptimizerClient | None,
        job: Job,
        gpu: Gpu | None = None,
        *,
        monitor: str,
        steps_per_epoch: int | None = None,
        heartbeat: bool = True,
        log_metrics: bool = True,
    ) -> None:
        super().__init__()
        self.client = client
        self.job = job
        self.gpu = gpu
        self.monitor = monitor
        self.steps_per_epoch = steps_per_epoch
        self.heartbeat = heartbeat
        self.log_metrics = log_metrics
        self.run: TrainingRun | DistributedRun | None = None
        self.completed_run: pb.Run | None = None
        self.final_metrics: dict[str, float] = {}
        self.should_stop = False
        self._world_size = 1
        self._warned_missing = False

    # ------------------------------------------------------------------------- the run
    # start(), batch_size and local_batch_size: CallbackRun

    @property
    def running(self) -> bool:
        """True between the start of the run and its end."""
        return self.run is not None and self.run.state == "running"

    def _metric(self, trainer: Any) -> float | None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self._warned_missing:
                self._warned_missing = True
                log.warning(
                    "powerbandit: metric %r not among the logged metrics %s; reporting progress without it",
                    self.monitor, sorted(trainer.callback_metrics),
                )  # fmt: skip
            return None
        number = float(value.item() if hasattr(value, "item") else value)
        return number if math.isfinite(number) else None

    # ------------------------------------------------------------------------- hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """``fit``: start the run (under DDP the process group exists now)."""
        if stage == "fit" and self.run is None:
            self.start()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Check the loader's batch size and fit the power-limit profile into the first epoch."""
        assert self.run is not None
        loader = trainer.train_dataloader
        per_process = getattr(loader, "batch_size", None)
        if per_process is not None and per_process * self._world_size != self.run.batch_size:
            raise ValueError(
                f"the training DataLoader has batch size {per_process} per process x {self._world_size} "
                f"processes but powerbandit chose {self.run.batch_size}: build it with "
                f"batch_size=callback.local_batch_size"
            )
        steps = self.steps_per_epoch
        if steps is None:
            batches = trainer.num_training_batches
            steps = int(batches) if isinstance(batches, int) or math.isfinite(batches) else None
        if steps and self.run.epochs == 0:
            self.run.set_steps_per_epoch(steps)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """One training batch: drives the power-limit profile."""
        if self.running:
            assert self.run is not None
            self.run.step()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Report the epoch with the monitored metric; stop when the server says so or the target is reached."""
        if not self.running:
            return
        assert self.run is not None
        if self.run.epoch_end(self._metric(trainer)):
            self.should_stop = True
            trainer.should_stop = True
        if self.log_metrics:
            # the counters epoch_end just read (summed over the ranks): no further collective
            pl_module.log_dict(self.run.tracker_metrics(fresh=False), on_step=False, on_epoch=True,
                               sync_dist=False, rank_zero_only=True)  # fmt: skip

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """Complete the run and log its final numbers to the trainer's logger."""
        if not self.running:
            return
        assert self.run is not None
        self.final_metrics = self.run.tracker_metrics(fresh=True) if self.log_metrics else {}
        self.completed_run = self.run.complete()
        if self.final_metrics and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(self.final_metrics, step=trainer.global_step)
                logger.save()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Fail the run (not evidence against its configuration); the power limit is restored."""
        if self.running:
            assert self.run is not None
            self.run.fail(exception)
