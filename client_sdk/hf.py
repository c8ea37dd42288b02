"""A Hugging Face ``transformers`` ``TrainerCallback`` that runs each training as a powerbandit run.

Optional: ``transformers`` (``pip install 'powerbandit[hf]'``) is imported by this module only
(the rest of the SDK never imports it); without it the callback is built on a stand-in base with the same no-op hooks, which is
enough for tests and for driving it by hand.

The batch size must be known **before** the ``Trainer`` is built, so the run starts (asks the server)
the first time you read :attr:`PowerBanditCallback.batch_size` (or call :meth:`~PowerBanditCallback.start`)::

    callback = PowerBanditCallback(client, job, metric_key="eval_accuracy")
    args = TrainingArguments(..., per_device_train_batch_size=callback.local_batch_size,
                             eval_strategy="epoch", num_train_epochs=job.max_epochs)
    trainer = Trainer(model=model, args=args, callbacks=[callback], ...)
    with callback:                  # fails the run if training raises (no Trainer hook sees that)
        trainer.train()

What the hooks do: ``on_train_begin`` starts the run if needed and fits the power-limit profile into
the first epoch (``len(train_dataloader)`` optimizer steps); ``on_step_end`` calls ``run.step()``;
at each epoch the run reports progress with the metric ``metrics[metric_key]`` of the evaluation
that ends the epoch (with ``eval_strategy="epoch"``; otherwise the newest evaluation so far, or
none); when the server says stop, or the target is reached, ``control.should_training_stop`` is
set; ``on_train_end`` completes the run.

**Trainer logs.** Every time the Trainer logs (``logging_steps``, evaluations, the end of
training), the callback adds the run's numbers to the ``logs`` dict: ``powerbandit/energy_j``,
``powerbandit/time_s``, ``powerbandit/average_power_w``, ``powerbandit/power_limit_w``,
``powerbandit/batch_size``, ``powerbandit/epochs`` and ``powerbandit/profiling`` (the phase: 1
while power limits are profiled), so every tracker of ``report_to`` (W&B, MLflow, TensorBoard,
...) and ``trainer.state.log_history`` get them. The callback moves itself first among the
Trainer's callbacks so the trackers see the numbers in the same log event (``log_metrics=False``
turns this off). This works with subclasses of ``Trainer`` such as TRL's ``SFTTrainer``.

Under ``torch.distributed`` (DDP) the run is a
:class:`~client_sdk.torch_helpers.DistributedRun`: rank 0 talks to the server, and the batch size
is global (each process uses :attr:`local_batch_size`); initialise the process group before the
batch size is read (e.g. ``torch.distributed.init_process_group`` first).
"""

from __future__ import annotations

import logging
import math
import sys
from typing import TYPE_CHECKING, Any

from client_sdk.callback_run import CallbackRun

if TYPE_CHECKING:
    from client_sdk.client import Job, OptimizerClient
    from client_sdk.gpu import Gpu
    from client_sdk.run import TrainingRun
    from client_sdk.torch_helpers import DistributedRun
    from powerbandit.v1 import optimizer_pb2 as pb

__all__ = ["HAVE_TRANSFORMERS", "PowerBanditCallback"]

log = logging.getLogger("powerbandit.sdk.hf")


class _StandInTrainerCallback:
    """The hooks of ``transformers.TrainerCallback``, all no-ops (used when transformers is absent)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


try:
    from transformers import TrainerCallback as _Base

    HAVE_TRANSFORMERS = True
except ImportError:  # the optional extra is not installed
    _Base = _StandInTrainerCallback  # type: ignore[assignment,misc]
    HAVE_TRANSFORMERS = False


def _eval_each_epoch(args: Any) -> bool:
    strategy = getattr(args, "eval_strategy", None) or getattr(args, "evaluation_strategy", None)
    return str(getattr(strategy, "value", strategy)).lower() == "epoch"


class PowerBanditCallback(CallbackRun, _Base):  # type: ignore[misc,valid-type]
    """Runs one recurrence of ``job`` inside ``Trainer.train()``; see the module docstring.

    ``gpu``: the :class:`~client_sdk.gpu.Gpu` to measure (default: NVML, this process's GPU under
    DDP); ``metric_key``: the evaluation metric compared with ``job.target_metric`` (``"accuracy"``
    finds ``"eval_accuracy"`` too); ``steps_per_epoch``: optimizer steps per epoch, derived from the
    Trainer's data loader when omitted.
    """

    def __init__(
        self,
        client: OptimizerClient | None,
        job: Job,
        gpu: Gpu | None = None,
        *,
        metric_key: str,
        steps_per_epoch: int | None = None,
        heartbeat: bool = True,
        log_metrics: bool = True,
    ) -> None:
        self.log_metrics = log_metrics
        self.client = client
        self.job = job
        self.gpu = gpu
        self.metric_key = metric_key
        self.steps_per_epoch = steps_per_epoch
        self.heartbeat = heartbeat
        self.run: TrainingRun | DistributedRun | None = None
        self.completed_run: pb.Run | None = None
        self.should_stop = False
        self._active = False
        self._fitted = False
        self._pending_epoch = False
        self._latest_metric: float | None = None
        self._warned_missing_key = False
        self._world_size = 1
        self._final_metrics: dict[str, float] | None = None

    # ------------------------------------------------------------------------- the run
    # start(), batch_size and local_batch_size: CallbackRun
    def _started(self) -> None:
        self._active = True

    @property
    def training_run(self) -> TrainingRun:
        """The underlying :class:`~client_sdk.run.TrainingRun` (rank-local under DDP)."""
        self.start()
        run = self.run
        inner = getattr(run, "run", run)
        assert inner is not None
        return inner  # type: ignore[return-value]

    def _finish(self, exc: BaseException | None) -> None:
        if not self._active or self.run is None:
            return
        self._active = False
        if self.log_metrics:
            self._final_metrics = self.run.tracker_metrics(fresh=self._world_size == 1)
        if exc is None:
            self.run.complete()
            self.completed_run = self.run.completed_run
        else:
            self.run.fail(exc)

    def tracker_metrics(self) -> dict[str, float]:
        """The numbers added to the Trainer's logs now (the final ones once the run ended; {} before it started)."""
        if self._active and self.run is not None:  # under DDP: no collective (not every rank logs together)
            return self.run.tracker_metrics(fresh=self._world_size == 1)
        return dict(self._final_metrics or {})

    def fail(self, reason: str | BaseException) -> None:
        """Report the run failed (not evidence against its configuration) and restore the power limit."""
        exc = reason if isinstance(reason, BaseException) else RuntimeError(reason)
        self._finish(exc)

    def __enter__(self) -> PowerBanditCallback:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self._finish(exc)
        elif self._active:  # trainer.train() returned without on_train_end (should not happen)
            self._finish(None)

    # ------------------------------------------------------------------------- helpers
    def _metric(self, metrics: dict[str, Any] | None) -> float | None:
        metrics = metrics or {}
        for key in (self.metric_key, f"eval_{self.metric_key}"):
            if key in metrics:
                value = float(metrics[key])
                return value if math.isfinite(value) else None
        if not self._warned_missing_key:
            self._warned_missing_key = True
            log.warning(
                "powerbandit: metric %r not among the evaluation's metrics %s; reporting progress without it",
                self.metric_key,
                sorted(metrics),
            )
        return None

    def _report_epoch(self, control: Any) -> None:
        assert self.run is not None
        if self.run.epoch_end(self._latest_metric):
            self.should_stop = True
        if self.should_stop and control is not None:
            control.should_training_stop = True

    def _steps_per_epoch(self, args: Any, state: Any, kwargs: dict[str, Any]) -> int | None:
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        accumulation = max(1, int(getattr(args, "gradient_accumulation_steps", 1) or 1))
        loader = kwargs.get("train_dataloader")
        try:
            if loader is not None and len(loader) > 0:
                return max(1, math.ceil(len(loader) / accumulation))
        except TypeError:  # an iterable dataset: no len()
            pass
        max_steps = int(getattr(state, "max_steps", 0) or 0)
        epochs = float(getattr(state, "num_train_epochs", 0) or 0)
        if max_steps > 0 and epochs > 0:
            return max(1, math.ceil(max_steps / epochs))
        return None

    def _move_first(self) -> None:
        """Put this callback first in the Trainer's ``CallbackHandler`` (the caller of the hook), so the
        trackers, which come earlier, see the numbers :meth:`on_log` adds in the same event."""
        try:
            frame = sys._getframe(2)  # the handler's call_event -> the hook -> here
        except ValueError:  # called from a shallow stack: no handler above
            return
        for _ in range(3):
            handler = frame.f_locals.get("self")
            callbacks = getattr(handler, "callbacks", None)
            if isinstance(callbacks, list) and any(c is self for c in callbacks):
                if callbacks[0] is not self:
                    # safe inside call_event's loop: the callbacks after this one keep their indices
                    callbacks.remove(self)
                    callbacks.insert(0, self)
                return
            if frame.f_back is None:
                break
            frame = frame.f_back
        log.debug("powerbandit: the Trainer's callback handler was not found; trackers before this callback "
                  "see its numbers one log event later")  # fmt: skip

    # ------------------------------------------------------------------------- hooks
    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The Trainer is built: move first among its callbacks (see :meth:`on_log`)."""
        if self.log_metrics:
            self._move_first()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Add the run's numbers (energy, time, power, limit, batch size, epochs, phase) to the Trainer's logs."""
        if not self.log_metrics or logs is None:
            return
        values = self.tracker_metrics()
        logs.update(values)
        history = getattr(state, "log_history", None)
        if values and history:  # Trainer.log appended a copy of `logs` just before this hook
            history[-1].update(values)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Start the run if needed, check the Trainer's batch size, fit the profile into epoch 1."""
        if self.log_metrics:
            self._move_first()  # a callback added with trainer.add_callback() after the Trainer was built
        self.start()
        assert self.run is not None
        try:
            per_device = getattr(args, "per_device_train_batch_size", None)
            if per_device is not None:
                accumulation = max(1, int(getattr(args, "gradient_accumulation_steps", 1) or 1))
                world = int(getattr(args, "world_size", self._world_size) or 1)
                effective = int(per_device) * accumulation * world
                if effective != self.run.batch_size:
                    raise ValueError(
                        f"the Trainer trains with batch size {effective} (per device {per_device} x "
                        f"{accumulation} accumulation x {world} processes) but powerbandit chose "
                        f"{self.run.batch_size}: build TrainingArguments with "
                        f"per_device_train_batch_size=callback.local_batch_size (divided by the accumulation)"
                    )
            steps = self._steps_per_epoch(args, state, kwargs)
            if steps is not None and not self._fitted:
                from client_sdk.torch_helpers import fit_profile_to_epoch

                fit_profile_to_epoch(self.training_run, steps)
                self._fitted = True
        except BaseException as exc:
            self._finish(exc)
            raise

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """One optimizer step: drives the power-limit profile."""
        if self._active and self.run is not None:
            self.run.step()
            if self.should_stop:
                control.should_training_stop = True

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """An epoch ended: report it now, or after the evaluation that follows (``eval_strategy="epoch"``)."""
        if not self._active:
            return
        if self._pending_epoch:  # the previous epoch's evaluation never came
            self._report_epoch(control)
        if _eval_each_epoch(args):
            self._pending_epoch = True
        else:
            self._report_epoch(control)

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """Remember the metric; report the epoch waiting for it."""
        if not self._active:
            return
        self._latest_metric = self._metric(metrics)
        if self._pending_epoch:
            self._pending_epoch = False
            self._report_epoch(control)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Complete the run (reporting an epoch still waiting for its evaluation first)."""
        if not self._active:
            return
        if self._pending_epoch:
            self._pending_epoch = False
            self._report_epoch(None)
        self._finish(None)
