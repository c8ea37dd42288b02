"""``Job``: a recurring training job as the SDK's user describes it, built into the domain's ``JobSpec``.

>>> job = Job("team-a/resnet50", batch_sizes=[64, 128, 256], default_batch_size=128,
...           target_metric=0.65, max_epochs=100)
>>> job.spec.eta, job.reached(0.7)
(0.5, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from powerbandit.domain import DEFAULT_BETA, DEFAULT_ETA, JobSpec
from powerbandit.proto_conversion import spec_to_pb
from powerbandit.v1 import optimizer_pb2 as pb


@dataclass(frozen=True)
class Job:
    """A recurring training job as the user describes it (see ``JobSpec`` in the .proto).

    A thin builder over :class:`powerbandit.domain.JobSpec` (:attr:`spec`) with the SDK's defaults:
    ``policy`` "" leaves the choice to the server, and ``max_slowdown`` None means no slowdown
    budget (``max_slowdown`` is the alternative to ``eta``, e.g. 1.1).
    """

    job_id: str
    batch_sizes: Sequence[int]
    default_batch_size: int
    target_metric: float
    max_epochs: int
    eta: float = DEFAULT_ETA
    beta: float = DEFAULT_BETA
    higher_is_better: bool = True
    policy: str = ""
    window: int = 0
    seed: int = 0
    max_slowdown: float | None = None  # a slowdown budget instead of eta, e.g. 1.1 (see JobSpec in the .proto)

    @classmethod
    def from_spec(cls, spec: JobSpec, job_id: str | None = None) -> Job:
        """The job of a domain spec (under another ``job_id`` when given)."""
        return cls(
            job_id=spec.job_id if job_id is None else job_id,
            batch_sizes=spec.batch_sizes,
            default_batch_size=spec.default_batch_size,
            target_metric=spec.target_metric,
            max_epochs=spec.max_epochs,
            eta=spec.eta,
            beta=spec.beta,
            higher_is_better=spec.higher_is_better,
            policy=spec.policy,
            window=spec.window,
            seed=spec.seed,
            max_slowdown=spec.max_slowdown or None,
        )

    @cached_property
    def spec(self) -> JobSpec:
        """This job as the domain's spec, before the server fills in its defaults and validates it."""
        return JobSpec(
            job_id=self.job_id,
            batch_sizes=tuple(self.batch_sizes),
            default_batch_size=self.default_batch_size,
            target_metric=self.target_metric,
            max_epochs=self.max_epochs,
            eta=self.eta,
            beta=self.beta,
            higher_is_better=self.higher_is_better,
            policy=self.policy,
            window=self.window,
            seed=self.seed,
            max_slowdown=self.max_slowdown or 0.0,
        )

    def to_pb(self) -> pb.JobSpec:
        """This job as its protobuf message (what ``RegisterJob`` sends).

        As the user wrote it: a ``max_slowdown`` given is sent even when the server will refuse it,
        and with a slowdown budget the default eta is not sent (the budget implies eta 1).
        """
        message = spec_to_pb(self.spec)
        if self.max_slowdown is not None:
            message.max_slowdown = self.max_slowdown
            if self.eta == DEFAULT_ETA:
                message.ClearField("eta")
        return message

    def reached(self, metric: float) -> bool:
        """Whether ``metric`` meets the target."""
        return self.spec.reached(metric)
