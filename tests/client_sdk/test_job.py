"""The SDK's Job: a builder over the domain JobSpec that sends what the user wrote."""

from __future__ import annotations

import pickle

import pytest

from client_sdk.client import Job as ReExportedJob
from client_sdk.job import Job
from powerbandit.domain import JobSpec
from powerbandit.v1 import optimizer_pb2 as pb


def _job(**kwargs: object) -> Job:
    return Job("team/j", [64, 128], 128, 0.75, 20, **kwargs)  # type: ignore[arg-type]


def test_job_is_importable_where_it_always_was() -> None:
    assert ReExportedJob is Job


def test_to_pb_sends_every_field_of_a_plain_job() -> None:
    assert _job().to_pb() == pb.JobSpec(
        job_id="team/j", batch_sizes=[64, 128], default_batch_size=128, target_metric=0.75,
        metric_direction=pb.METRIC_DIRECTION_HIGHER_IS_BETTER, max_epochs=20, eta=0.5, beta=2.0, policy="",
        window=0, seed=0,
    )  # fmt: skip
    message = _job(eta=0.2, beta=3.0, higher_is_better=False, policy="zeus", window=4, seed=9).to_pb()
    assert (message.eta, message.beta, message.policy, message.window, message.seed) == (0.2, 3.0, "zeus", 4, 9)
    assert message.metric_direction == pb.METRIC_DIRECTION_LOWER_IS_BETTER
    assert not message.HasField("max_slowdown")


def test_a_slowdown_budget_leaves_the_default_eta_unsent() -> None:
    message = _job(max_slowdown=1.1).to_pb()
    assert message.HasField("max_slowdown") and message.max_slowdown == 1.1
    assert not message.HasField("eta")
    chosen = _job(max_slowdown=1.1, eta=0.3).to_pb()  # the server refuses it, naming both
    assert chosen.HasField("eta") and chosen.eta == 0.3


@pytest.mark.parametrize("budget", [0.0, -1.0])
def test_a_budget_the_server_refuses_is_still_sent(budget: float) -> None:
    message = _job(max_slowdown=budget).to_pb()
    assert message.HasField("max_slowdown") and message.max_slowdown == budget


def test_spec_and_from_spec() -> None:
    job = _job(max_slowdown=1.25, eta=1.0, seed=3)
    assert job.spec == JobSpec("team/j", (64, 128), 128, 0.75, 20, eta=1.0, policy="", seed=3, max_slowdown=1.25)
    assert _job().spec.max_slowdown == 0.0 and _job().spec.policy == ""
    spec = JobSpec("w@v100", (32, 64), 32, 0.9, 50, eta=0.2, beta=1.5, higher_is_better=False, policy="zeus",
                   window=7, seed=11, max_slowdown=0.0)  # fmt: skip
    assert Job.from_spec(spec).spec == spec
    assert Job.from_spec(spec, job_id="w@v100/1").job_id == "w@v100/1"
    assert Job.from_spec(spec).max_slowdown is None


@pytest.mark.parametrize(("higher", "metric", "reached"), [(True, 0.75, True), (True, 0.7, False), (False, 0.7, True)])
def test_reached(higher: bool, metric: float, reached: bool) -> None:
    assert _job(higher_is_better=higher).reached(metric) is reached


def test_job_pickles_and_compares_by_its_fields() -> None:
    job = _job(max_slowdown=1.1)
    _ = job.spec  # cached
    copy = pickle.loads(pickle.dumps(job))
    assert copy == job == _job(max_slowdown=1.1)
    assert copy.to_pb() == job.to_pb()
