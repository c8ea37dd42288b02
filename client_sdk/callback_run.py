"""What the framework callbacks (Hugging Face, Lightning) share: starting the run, its batch sizes.

A callback mixes in :class:`CallbackRun` and sets ``client``, ``job``, ``gpu``, ``heartbeat``,
``run`` (``None`` until started) and ``_world_size`` (1) in its ``__init__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from client_sdk.client import Job, OptimizerClient
    from client_sdk.gpu import Gpu
    from client_sdk.run import TrainingRun
    from client_sdk.torch_helpers import DistributedRun


class CallbackRun:
    """One run started by a framework callback: single-process, or under DDP through rank 0."""

    client: OptimizerClient | None
    job: Job
    gpu: Gpu | None
    heartbeat: bool
    run: TrainingRun | DistributedRun | None
    _world_size: int

    def start(self) -> Any:
        """Start the run (ask the server for a configuration); idempotent. Returns self."""
        if self.run is not None:
            return self
        from client_sdk.torch_helpers import DistributedRun, is_distributed

        run: TrainingRun | DistributedRun
        if is_distributed():
            run = DistributedRun(self.client, self.job, self.gpu, heartbeat=self.heartbeat).start()
            self._world_size = run.world_size
        else:
            if self.client is None:
                raise ValueError("a single-process run needs the OptimizerClient")
            run = self.client.start_run(self.job, self.gpu, heartbeat=self.heartbeat)
        self.run = run
        self._started()
        return self

    def _started(self) -> None:  # noqa: B027 - an optional hook
        """Called once the run has started."""

    @property
    def batch_size(self) -> int:
        """The job's (global) batch size for this run; starts the run on first use."""
        self.start()
        assert self.run is not None
        return self.run.batch_size

    @property
    def local_batch_size(self) -> int:
        """This process's batch size (the run's batch size split over the DDP ranks)."""
        size = self.batch_size
        if size % self._world_size:
            raise ValueError(f"batch size {size} does not split over {self._world_size} processes")
        return size // self._world_size
