"""The job spec: what a recurring job is, shared by the SDK (its ``Job`` builds one) and the server
(which validates, stores and hands it to the policies).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from powerbandit.domain.enums import MetricDirection

DEFAULT_ETA = 0.5
"""The energy/time trade-off of a job that does not say: energy and time weigh the same."""

DEFAULT_BETA = 2.0
"""The early-stop multiple of a job that does not say: a run may cost twice the best recurrence."""

DEFAULT_POLICY = "powerbandit"
"""The policy of a job that does not say."""

MAX_SLOWDOWN = 100.0
"""The largest slowdown budget a job may have (a budget beyond it is no budget): the server refuses
more, and so does every ``--max-slowdown``."""


@dataclass(frozen=True)
class JobSpec:
    """What a recurring job is: the search space and the user's trade-off.

    ``eta`` weighs energy against time in the cost, ``beta`` is the early-stop multiple of the best
    recurrence cost seen so far, ``target_metric`` with ``higher_is_better`` says when a run has
    reached its goal. The GPU model is *not* part of a job: it belongs to each run.

    ``max_slowdown`` (0: none) is the alternative to ``eta``: a slowdown budget, e.g. 1.1 for "a
    run may take at most 10 % longer than the default configuration (the default batch size at the
    maximum power limit) is expected to". Such a job minimises energy within the budget: its ``eta``
    is 1 (validation sees to it), and the policy leaves out configurations expected to break it.

    ``policy`` "" is left for the server to choose (a spec as the SDK builds it; the server's
    validation fills in :data:`DEFAULT_POLICY`).
    """

    job_id: str
    batch_sizes: tuple[int, ...]
    default_batch_size: int
    target_metric: float
    max_epochs: int
    eta: float = DEFAULT_ETA
    beta: float = DEFAULT_BETA
    higher_is_better: bool = True
    policy: str = DEFAULT_POLICY
    window: int = 0
    seed: int = 0
    max_slowdown: float = 0.0

    @property
    def metric_direction(self) -> MetricDirection:
        """``higher_is_better`` as a :class:`MetricDirection`."""
        return MetricDirection.of(self.higher_is_better)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the store keeps it: keys and their order never change)."""
        return {
            "job_id": self.job_id,
            "batch_sizes": list(self.batch_sizes),
            "default_batch_size": self.default_batch_size,
            "target_metric": self.target_metric,
            "max_epochs": self.max_epochs,
            "eta": self.eta,
            "beta": self.beta,
            "higher_is_better": self.higher_is_better,
            "policy": self.policy,
            "window": self.window,
            "seed": self.seed,
            "max_slowdown": self.max_slowdown,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        values["batch_sizes"] = tuple(int(b) for b in values["batch_sizes"])
        return cls(**values)

    def reached(self, metric: float) -> bool:
        """Whether ``metric`` meets the job's target."""
        if self.higher_is_better:
            return metric >= self.target_metric
        return metric <= self.target_metric
