"""Every domain <-> protobuf conversion of powerbandit.proto_conversion, round trip (as OSS Vizier's
converters are tested): every enum member, and specs, profiles, groups, arms and decisions with edge
values."""

from __future__ import annotations

import ast
import math
from dataclasses import astuple
from pathlib import Path
from types import SimpleNamespace

import pytest

from powerbandit import proto_conversion as pc
from powerbandit.domain import (
    ArmSummary,
    Decision,
    JobSpec,
    MetricDirection,
    Phase,
    PowerLimitControl,
    ProfilePoint,
    ProfileRecord,
    RunGroup,
    RunState,
    StopReason,
)
from powerbandit.v1 import optimizer_pb2 as pb

INT32_MAX = 2**31 - 1


def _same(a: object, b: object) -> bool:
    """Equal, NaN equal to NaN (the arms' unknown costs)."""
    left, right = astuple(a), astuple(b)  # type: ignore[call-overload]
    return len(left) == len(right) and all(
        (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)) or x == y
        for x, y in zip(left, right, strict=True)
    )


# ------------------------------------------------------------------------------------------ enums
ENUMS = [
    (RunState, pc.run_state_to_pb, pc.run_state_from_pb, pb.RunState),
    (Phase, pc.phase_to_pb, pc.phase_from_pb, pb.Phase),
    (StopReason, pc.stop_reason_to_pb, pc.stop_reason_from_pb, pb.StopReason),
    (PowerLimitControl, pc.power_limit_control_to_pb, pc.power_limit_control_from_pb, pb.PowerLimitControl),
    (MetricDirection, pc.metric_direction_to_pb, pc.metric_direction_from_pb, pb.MetricDirection),
]


@pytest.mark.parametrize(("enum", "to_pb", "from_pb", "pb_enum"), ENUMS, ids=lambda e: getattr(e, "__name__", ""))
def test_every_enum_member_round_trips(enum, to_pb, from_pb, pb_enum) -> None:  # type: ignore[no-untyped-def]
    numbers = set()
    for member in enum:
        number = to_pb(member)
        assert from_pb(number) is member
        assert to_pb(member.value) == number  # the stored string converts the same
        numbers.add(number)
    assert len(numbers) == len(enum)  # no two members share a number
    named = {v.number for v in pb_enum.DESCRIPTOR.values if not v.name.endswith("_UNSPECIFIED")}
    assert named <= numbers  # every number the .proto names (but "unspecified") has its member
    with pytest.raises(ValueError, match="not a"):
        from_pb(99)


def test_enum_numbers_are_the_protos() -> None:
    assert pc.run_state_to_pb(RunState.IN_FLIGHT) == pb.RUN_STATE_IN_FLIGHT
    assert pc.phase_to_pb(Phase.FALLBACK) == pb.PHASE_FALLBACK
    assert pc.stop_reason_to_pb(StopReason.NONE) == pb.STOP_REASON_UNSPECIFIED
    assert pc.power_limit_control_to_pb("") == pb.POWER_LIMIT_CONTROL_UNSPECIFIED
    assert pc.metric_direction_to_pb(MetricDirection.LOWER_IS_BETTER) == pb.METRIC_DIRECTION_LOWER_IS_BETTER


def test_unset_or_unknown_values() -> None:
    with pytest.raises(ValueError):
        pc.run_state_from_pb(pb.RUN_STATE_UNSPECIFIED)  # every stored run has a state
    assert pc.metric_direction_from_pb(pb.METRIC_DIRECTION_UNSPECIFIED) is MetricDirection.HIGHER_IS_BETTER
    assert pc.phase_to_pb("no such phase") == pb.PHASE_UNSPECIFIED
    with pytest.raises(KeyError):
        pc.run_state_to_pb("no such state")
    with pytest.raises(KeyError):
        pc.power_limit_control_to_pb("manual")


# ------------------------------------------------------------------------------------------ specs
SPECS = [
    JobSpec("j", (32,), 32, 0.0, 1),
    JobSpec("team-a/resnet50", (64, 128, 256), 128, 0.65, 100, eta=0.25, beta=1.5, policy="zeus", window=10,
            seed=2**63 - 1),  # fmt: skip
    JobSpec("lower", (1, INT32_MAX), INT32_MAX, -3.5, 10_000, eta=1.0, beta=1e6, higher_is_better=False, seed=0),
    JobSpec("budget", (16, 32), 16, 1e-300, 5, eta=1.0, max_slowdown=1.1),
    JobSpec("eta0", (8, 16), 8, 1e300, 2, eta=0.0, policy=""),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.job_id)
def test_spec_round_trips(spec: JobSpec) -> None:
    message = pc.spec_to_pb(spec)
    assert pc.spec_from_pb(pb.JobSpec.FromString(message.SerializeToString())) == spec
    assert message.HasField("eta") and message.HasField("beta")
    assert message.HasField("max_slowdown") is (spec.max_slowdown > 0)


def test_spec_from_a_message_with_unset_fields_takes_the_defaults() -> None:
    spec = pc.spec_from_pb(pb.JobSpec(job_id="j", batch_sizes=[8], default_batch_size=8, max_epochs=3))
    assert spec == JobSpec("j", (8,), 8, 0.0, 3, policy="")


# ------------------------------------------------------------------------------------------ profiles
PROFILES = [
    ProfileRecord("a100", 64),
    ProfileRecord("v100 x2", INT32_MAX, {300.0: ProfilePoint(300.0, 500.5, 12.25), 100.0: ProfilePoint(100.0, 0.0, 1e-9)}),
    ProfileRecord("", 1, {0.0: ProfilePoint(0.0, 1e300, 1e300)}),
]


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.gpu_model or "empty-model")
def test_profile_round_trips(profile: ProfileRecord) -> None:
    message = pb.PowerProfile.FromString(pc.profile_to_pb(profile).SerializeToString())
    back = pc.profile_from_pb(message)
    assert back == profile
    assert list(back.points) == list(profile.points)  # the measured order is kept
    assert [pt.power_limit_w for pt in message.points] == list(profile.points)


def test_profile_measurements_round_trip() -> None:
    measurements = [(300.0, 250.5, 0.125), (100.0, 0.0, 1e-12)]
    assert pc.profile_measurements_from_pb(pc.profile_measurements_to_pb(measurements)) == measurements


# ------------------------------------------------------------------------------------------ runs
@pytest.mark.parametrize("state", list(RunState))
@pytest.mark.parametrize("edge", ["zeros", "large"])
def test_group_round_trips(state: RunState, edge: str) -> None:
    if edge == "zeros":
        group = RunGroup("", 1, 0.0, state, False, False, 0, 0.0, 0.0, 0.0, 0.0, 0.0)
    else:
        group = RunGroup("rtx6000 x8", INT32_MAX, 1e4, state, True, True, INT32_MAX, 1e15, 1e9, 1e6, 450.0,
                         4102444800.5)  # fmt: skip
    message = pb.RunGroup.FromString(pc.group_to_pb(group).SerializeToString())
    back = pc.group_from_pb(message)
    assert back == group and back.state is state


@pytest.mark.parametrize("arm", [
    ArmSummary(64, "unexplored", 0, 0, math.nan, math.nan, math.nan, math.nan),
    ArmSummary(INT32_MAX, "active", INT32_MAX, 1, 1e12, -0.0, math.inf, 3.5),
    ArmSummary(128, "pruned", 7, 0, 100.0, 50.0, 150.0, 42.0),
], ids=lambda a: a.status)  # fmt: skip
def test_arm_round_trips(arm: ArmSummary) -> None:
    assert _same(pc.arm_from_pb(pb.Arm.FromString(pc.arm_to_pb(arm).SerializeToString())), arm)


@pytest.mark.parametrize("phase", [p for p in Phase if p is not Phase.UNSPECIFIED] + [Phase.UNSPECIFIED])
def test_decision_round_trips(phase: Phase) -> None:
    decided = Decision(256, 187.5, (), phase, "exploit: cheapest so far")
    profiling = Decision(INT32_MAX, None, (100.0, 150.0, 250.0), phase, "")
    stopping = Decision(64, None, (250.0, 150.0, 100.0), phase, "", profile_stop_ratio=1.25)
    for decision in (decided, profiling, stopping):
        message = pc.decision_to_pb(decision, run_id="r1", max_cost=math.inf, max_epochs=3, lease_s=60.0,
                                    max_power_w=500.0, eta=0.5)  # fmt: skip
        message = pb.SuggestResponse.FromString(message.SerializeToString())
        assert pc.decision_from_pb(message) == decision
        assert (message.run_id, message.max_epochs, message.eta) == ("r1", 3, 0.5)
    assert pc.decision_to_pb(profiling).power_limit_w == 0.0
    assert list(pc.decision_to_pb(decided).profile_power_limits_w) == []
    assert pc.decision_to_pb(stopping).profile_stop_ratio == 1.25
    # a stop ratio means nothing without limits to profile: not sent
    assert pc.decision_to_pb(Decision(8, 100.0, (), phase, "", profile_stop_ratio=1.25)).profile_stop_ratio == 0.0


def test_a_decision_with_a_phase_this_side_does_not_know_reads_unspecified() -> None:
    message = pb.SuggestResponse(batch_size=8, power_limit_w=100.0, phase=42)  # type: ignore[arg-type]
    assert pc.decision_from_pb(message).phase is Phase.UNSPECIFIED


@pytest.mark.parametrize("state", list(RunState))
def test_run_to_pb_every_state_phase_and_control(state: RunState) -> None:
    for phase, control in zip(list(Phase) + [Phase.EXPLORE], list(PowerLimitControl), strict=True):
        run = SimpleNamespace(
            run_id="r", job_id="j", state=state.value, batch_size=64, power_limit_w=0.0, gpu_model="a40",
            gpu_count=2, energy_j=1.5, time_s=2.5, epochs=3.0, reached_target=True, cost=4.5, phase=phase.value,
            created_unix_s=1.0, finished_unix_s=2.0, reason="why", max_power_w=600.0, profiled=True,
            power_limit_control=control.value,
        )  # fmt: skip
        message = pc.run_to_pb(run)
        assert pc.run_state_from_pb(message.state) is state
        assert pc.phase_from_pb(message.phase) is phase
        assert pc.power_limit_control_from_pb(message.power_limit_control) is control
        assert (message.energy_j, message.time_s, message.gpu_count, message.reason) == (1.5, 2.5, 2, "why")
    unknown = SimpleNamespace(**{**vars(run), "phase": "later", "power_limit_control": "later"})
    message = pc.run_to_pb(unknown)
    assert (message.phase, message.power_limit_control) == (pb.PHASE_UNSPECIFIED, pb.POWER_LIMIT_CONTROL_UNSPECIFIED)


def test_gpu_info_to_pb() -> None:
    info = SimpleNamespace(model="A100", count=4, min_power_limit_w=100.0, max_power_limit_w=400.0,
                           power_limits_w=(100.0, 250.0, 400.0))  # fmt: skip
    message = pc.gpu_info_to_pb(info)
    assert (message.model, message.count, list(message.power_limits_w)) == ("A100", 4, [100.0, 250.0, 400.0])


# ------------------------------------------------------------------------------------------ layering
def test_the_conversion_module_depends_on_the_domain_and_the_generated_api_only() -> None:
    tree = ast.parse(Path(pc.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    ours = {m for m in imported if m and m.split(".")[0] in {"powerbandit", "optimizer_server", "client_sdk"}}
    assert ours == {"powerbandit.domain", "powerbandit.v1"}
