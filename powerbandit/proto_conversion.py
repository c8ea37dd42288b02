"""Every conversion between the domain (:mod:`powerbandit.domain`) and the messages of ``powerbandit.v1``.

The server, the SDK, the operator view and the simulator all convert here, so a state, a phase or
a spec means the same on both sides of the wire. Each ``*_to_pb`` has its ``*_from_pb``, and
``tests/powerbandit/test_proto_conversion.py`` checks every pair round trip (every enum member,
specs, profiles, run groups, arms and decisions with edge values).

Enum numbers that are not a member (a newer peer, a hand-built request) raise ``ValueError`` from
``*_from_pb``; callers that must tolerate them (the operator view's display) catch it.
Records of the store pass wherever a domain record is asked for: the functions read fields, and
the store's ``RunRecord``, ``RunGroup`` and ``ProfileRecord`` have the same ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from powerbandit.domain import (
    DEFAULT_BETA,
    DEFAULT_ETA,
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

# ------------------------------------------------------------------------------------------ enums
RUN_STATE_TO_PB: Mapping[RunState, int] = {
    RunState.IN_FLIGHT: pb.RUN_STATE_IN_FLIGHT,
    RunState.COMPLETED: pb.RUN_STATE_COMPLETED,
    RunState.FAILED: pb.RUN_STATE_FAILED,
    RunState.EXPIRED: pb.RUN_STATE_EXPIRED,
}
PHASE_TO_PB: Mapping[Phase, int] = {
    Phase.UNSPECIFIED: pb.PHASE_UNSPECIFIED,
    Phase.EXPLORE: pb.PHASE_EXPLORE,
    Phase.EXPLOIT: pb.PHASE_EXPLOIT,
    Phase.FALLBACK: pb.PHASE_FALLBACK,
}
STOP_REASON_TO_PB: Mapping[StopReason, int] = {
    StopReason.NONE: pb.STOP_REASON_UNSPECIFIED,
    StopReason.TARGET_REACHED: pb.STOP_REASON_TARGET_REACHED,
    StopReason.COST_BOUND: pb.STOP_REASON_COST_BOUND,
    StopReason.MAX_EPOCHS: pb.STOP_REASON_MAX_EPOCHS,
    StopReason.EXPLORATION_CALLED_OFF: pb.STOP_REASON_EXPLORATION_CALLED_OFF,
}
POWER_LIMIT_CONTROL_TO_PB: Mapping[PowerLimitControl, int] = {
    PowerLimitControl.UNSPECIFIED: pb.POWER_LIMIT_CONTROL_UNSPECIFIED,
    PowerLimitControl.NVML: pb.POWER_LIMIT_CONTROL_NVML,
    PowerLimitControl.AGENT: pb.POWER_LIMIT_CONTROL_AGENT,
    PowerLimitControl.NONE: pb.POWER_LIMIT_CONTROL_NONE,
    PowerLimitControl.SIMULATED: pb.POWER_LIMIT_CONTROL_SIMULATED,
}
METRIC_DIRECTION_TO_PB: Mapping[MetricDirection, int] = {
    MetricDirection.HIGHER_IS_BETTER: pb.METRIC_DIRECTION_HIGHER_IS_BETTER,
    MetricDirection.LOWER_IS_BETTER: pb.METRIC_DIRECTION_LOWER_IS_BETTER,
}
_RUN_STATE_FROM_PB = {v: k for k, v in RUN_STATE_TO_PB.items()}
_PHASE_FROM_PB = {v: k for k, v in PHASE_TO_PB.items()}
_STOP_REASON_FROM_PB = {v: k for k, v in STOP_REASON_TO_PB.items()}
_POWER_LIMIT_CONTROL_FROM_PB = {v: k for k, v in POWER_LIMIT_CONTROL_TO_PB.items()}
_METRIC_DIRECTION_FROM_PB = {
    **{v: k for k, v in METRIC_DIRECTION_TO_PB.items()},
    pb.METRIC_DIRECTION_UNSPECIFIED: MetricDirection.HIGHER_IS_BETTER,  # unset: higher is better (the .proto)
}


def _from_pb(table: Mapping[int, object], value: int, enum_name: str) -> object:
    try:
        return table[value]
    except KeyError:
        raise ValueError(f"{value} is not a {enum_name} value") from None


def run_state_to_pb(state: RunState | str) -> int:
    """A run state as its ``RunState`` number (a stored string works too; an unknown one is a ``KeyError``)."""
    return RUN_STATE_TO_PB[state]  # type: ignore[index]


def run_state_from_pb(value: int) -> RunState:
    """The :class:`RunState` of a ``RunState`` number (``RUN_STATE_UNSPECIFIED`` is none: ``ValueError``)."""
    return _from_pb(_RUN_STATE_FROM_PB, value, "RunState")  # type: ignore[return-value]


def phase_to_pb(phase: Phase | str) -> int:
    """A phase as its ``Phase`` number; a string that is no phase is ``PHASE_UNSPECIFIED``."""
    return PHASE_TO_PB.get(phase, pb.PHASE_UNSPECIFIED)  # type: ignore[call-overload]


def phase_from_pb(value: int) -> Phase:
    """The :class:`Phase` of a ``Phase`` number."""
    return _from_pb(_PHASE_FROM_PB, value, "Phase")  # type: ignore[return-value]


def stop_reason_to_pb(reason: StopReason | str) -> int:
    """A stop reason as its ``StopReason`` number (an unknown string is a ``KeyError``)."""
    return STOP_REASON_TO_PB[reason]  # type: ignore[index]


def stop_reason_from_pb(value: int) -> StopReason:
    """The :class:`StopReason` of a ``StopReason`` number."""
    return _from_pb(_STOP_REASON_FROM_PB, value, "StopReason")  # type: ignore[return-value]


def power_limit_control_to_pb(control: PowerLimitControl | str) -> int:
    """How a limit was applied as its ``PowerLimitControl`` number (an unknown string is a ``KeyError``)."""
    return POWER_LIMIT_CONTROL_TO_PB[control]  # type: ignore[index]


def power_limit_control_from_pb(value: int) -> PowerLimitControl:
    """The :class:`PowerLimitControl` of a ``PowerLimitControl`` number."""
    return _from_pb(_POWER_LIMIT_CONTROL_FROM_PB, value, "PowerLimitControl")  # type: ignore[return-value]


def metric_direction_to_pb(direction: MetricDirection | str) -> int:
    """A metric direction as its ``MetricDirection`` number."""
    return METRIC_DIRECTION_TO_PB[direction]  # type: ignore[index]


def metric_direction_from_pb(value: int) -> MetricDirection:
    """The :class:`MetricDirection` of a ``MetricDirection`` number (unset: higher is better)."""
    return _from_pb(_METRIC_DIRECTION_FROM_PB, value, "MetricDirection")  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ specs
def spec_to_pb(spec: JobSpec) -> pb.JobSpec:
    """A spec as its message: every field set, ``max_slowdown`` only when there is a budget (> 0)."""
    return pb.JobSpec(
        job_id=spec.job_id,
        batch_sizes=list(spec.batch_sizes),
        default_batch_size=spec.default_batch_size,
        target_metric=spec.target_metric,
        metric_direction=metric_direction_to_pb(spec.metric_direction),
        max_epochs=spec.max_epochs,
        eta=spec.eta,
        beta=spec.beta,
        policy=spec.policy,
        window=spec.window,
        seed=spec.seed,
        max_slowdown=spec.max_slowdown if spec.max_slowdown > 0 else None,
    )


def spec_from_pb(msg: pb.JobSpec) -> JobSpec:
    """The spec of a message as it reads, unset fields at their defaults (not validated: the server's
    ``optimizer_server.validation.job_spec`` validates what clients send)."""
    return JobSpec(
        job_id=msg.job_id,
        batch_sizes=tuple(int(b) for b in msg.batch_sizes),
        default_batch_size=int(msg.default_batch_size),
        target_metric=msg.target_metric,
        max_epochs=int(msg.max_epochs),
        eta=msg.eta if msg.HasField("eta") else DEFAULT_ETA,
        beta=msg.beta if msg.HasField("beta") else DEFAULT_BETA,
        higher_is_better=metric_direction_from_pb(msg.metric_direction) is MetricDirection.HIGHER_IS_BETTER,
        policy=msg.policy,
        window=int(msg.window),
        seed=int(msg.seed),
        max_slowdown=msg.max_slowdown if msg.HasField("max_slowdown") else 0.0,
    )


# ------------------------------------------------------------------------------------------ profiles
def profile_to_pb(profile: ProfileRecord) -> pb.PowerProfile:
    """A power profile as its message (points in the record's order)."""
    return pb.PowerProfile(
        gpu_model=profile.gpu_model,
        batch_size=profile.batch_size,
        points=[
            pb.ProfilePoint(
                power_limit_w=pt.power_limit_w,
                average_power_w=pt.average_power_w,
                time_per_epoch_s=pt.time_per_epoch_s,
            )
            for pt in profile.points.values()
        ],
    )


def profile_from_pb(msg: pb.PowerProfile) -> ProfileRecord:
    """The profile record of a message (``run_id`` is not part of it: "")."""
    return ProfileRecord(
        gpu_model=msg.gpu_model,
        batch_size=int(msg.batch_size),
        points={
            pt.power_limit_w: ProfilePoint(pt.power_limit_w, pt.average_power_w, pt.time_per_epoch_s)
            for pt in msg.points
        },
    )


def profile_measurements_to_pb(measurements: Sequence[tuple[float, float, float]]) -> list[pb.ProfileMeasurement]:
    """``(power limit W, average power W, seconds per step)`` per profiled limit, as ``ReportProfile`` takes them."""
    return [pb.ProfileMeasurement(power_limit_w=p, average_power_w=w, time_per_step_s=s) for p, w, s in measurements]


def profile_measurements_from_pb(msgs: Sequence[pb.ProfileMeasurement]) -> list[tuple[float, float, float]]:
    """Inverse of :func:`profile_measurements_to_pb`."""
    return [(m.power_limit_w, m.average_power_w, m.time_per_step_s) for m in msgs]


# ------------------------------------------------------------------------------------------ runs
def group_to_pb(group: RunGroup) -> pb.RunGroup:
    """A run group as its message."""
    return pb.RunGroup(
        gpu_model=group.gpu_model,
        batch_size=group.batch_size,
        power_limit_w=group.power_limit_w,
        state=run_state_to_pb(group.state),
        reached_target=group.reached_target,
        in_window=group.in_window,
        runs=group.runs,
        energy_j=group.energy_j,
        time_s=group.time_s,
        epochs=group.epochs,
        max_power_limit_w=group.max_power_limit_w,
        last_created_unix_s=group.last_created_unix_s,
    )


def group_from_pb(msg: pb.RunGroup) -> RunGroup:
    """The run group of a message (an unknown state is a ``ValueError``)."""
    return RunGroup(
        gpu_model=msg.gpu_model,
        batch_size=int(msg.batch_size),
        power_limit_w=msg.power_limit_w,
        state=run_state_from_pb(msg.state),
        reached_target=msg.reached_target,
        in_window=msg.in_window,
        runs=int(msg.runs),
        energy_j=msg.energy_j,
        time_s=msg.time_s,
        epochs=msg.epochs,
        max_power_limit_w=msg.max_power_limit_w,
        last_created_unix_s=msg.last_created_unix_s,
    )


class RunFields(Protocol):
    """The fields of a run that its message carries (the store's ``RunRecord`` has them)."""

    run_id: str
    job_id: str
    state: str
    batch_size: int
    power_limit_w: float
    gpu_model: str
    gpu_count: int
    energy_j: float
    time_s: float
    epochs: float
    reached_target: bool
    cost: float
    phase: str
    created_unix_s: float
    finished_unix_s: float
    reason: str
    max_power_w: float
    profiled: bool
    power_limit_control: str


def run_to_pb(run: RunFields) -> pb.Run:
    """A run as its message (an unknown phase or power-limit control is sent unspecified)."""
    return pb.Run(
        run_id=run.run_id,
        job_id=run.job_id,
        state=run_state_to_pb(run.state),
        batch_size=run.batch_size,
        power_limit_w=run.power_limit_w,
        gpu_model=run.gpu_model,
        gpu_count=run.gpu_count,
        energy_j=run.energy_j,
        time_s=run.time_s,
        epochs=run.epochs,
        reached_target=run.reached_target,
        cost=run.cost,
        phase=phase_to_pb(run.phase),
        created_unix_s=run.created_unix_s,
        finished_unix_s=run.finished_unix_s,
        reason=run.reason,
        max_power_w=run.max_power_w,
        profiled=run.profiled,
        power_limit_control=POWER_LIMIT_CONTROL_TO_PB.get(
            run.power_limit_control, pb.POWER_LIMIT_CONTROL_UNSPECIFIED  # type: ignore[call-overload]
        ),
    )


def arm_to_pb(arm: ArmSummary) -> pb.Arm:
    """What a policy believes about one batch size, as its message."""
    return pb.Arm(
        batch_size=arm.batch_size,
        status=arm.status,
        observations=arm.observations,
        successes=arm.successes,
        cost_mean=arm.cost_mean,
        cost_low=arm.cost_low,
        cost_high=arm.cost_high,
        epochs_mean=arm.epochs_mean,
    )


def arm_from_pb(msg: pb.Arm) -> ArmSummary:
    """Inverse of :func:`arm_to_pb`."""
    return ArmSummary(
        batch_size=int(msg.batch_size),
        status=msg.status,
        observations=int(msg.observations),
        successes=int(msg.successes),
        cost_mean=msg.cost_mean,
        cost_low=msg.cost_low,
        cost_high=msg.cost_high,
        epochs_mean=msg.epochs_mean,
    )


# ------------------------------------------------------------------------------------------ decisions
def decision_to_pb(decision: Decision, **response_fields: object) -> pb.SuggestResponse:
    """A decision as the ``SuggestResponse`` that carries it; ``response_fields`` fill in the rest
    (``run_id``, ``max_cost``, ``max_epochs``, ``lease_s``, ``max_power_w``, ``eta``).

    A decision to profile (``power_limit_w`` None) is sent as limit 0 with the limits to profile;
    a decided limit without them.
    """
    profiling = decision.power_limit_w is None
    return pb.SuggestResponse(
        batch_size=decision.batch_size,
        power_limit_w=0.0 if profiling else decision.power_limit_w,
        profile_power_limits_w=list(decision.profile_power_limits_w) if profiling else [],
        profile_stop_ratio=decision.profile_stop_ratio if profiling else 0.0,
        phase=phase_to_pb(decision.phase),
        explanation=decision.explanation,
        **response_fields,  # type: ignore[arg-type]
    )


def decision_from_pb(msg: pb.SuggestResponse) -> Decision:
    """The decision a ``SuggestResponse`` carries: profile when it lists limits to profile.

    A phase number this side does not know (a newer server) reads as :attr:`Phase.UNSPECIFIED`.
    """
    profiling = bool(msg.profile_power_limits_w)
    return Decision(
        batch_size=int(msg.batch_size),
        power_limit_w=None if profiling else msg.power_limit_w,
        profile_power_limits_w=tuple(msg.profile_power_limits_w),
        phase=_PHASE_FROM_PB.get(msg.phase, Phase.UNSPECIFIED),
        explanation=msg.explanation,
        profile_stop_ratio=msg.profile_stop_ratio if profiling else 0.0,
    )


# ------------------------------------------------------------------------------------------ GPUs
class GpuFields(Protocol):
    """The fields of a run's GPUs that ``Suggest`` takes (the SDK's ``GpuInfo`` has them)."""

    model: str
    count: int
    min_power_limit_w: float
    max_power_limit_w: float
    power_limits_w: tuple[float, ...]


def gpu_info_to_pb(info: GpuFields) -> pb.GpuInfo:
    """A run's GPUs as the message ``Suggest`` takes."""
    return pb.GpuInfo(
        model=info.model,
        count=info.count,
        min_power_limit_w=info.min_power_limit_w,
        max_power_limit_w=info.max_power_limit_w,
        power_limits_w=list(info.power_limits_w),
    )

