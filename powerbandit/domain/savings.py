"""The energy a job saved against its default configuration: the one definition of "saved".

Savings are counted per GPU model, against the job's *default configuration*: its default batch
size ``b0`` at the GPU model's maximum power limit. The expected energy (and time) of one
successful run at the default configuration is taken, in this order, from

1. ``measured``: the mean energy of the completed runs that reached the target at ``b0`` with the
   power limit at the maximum, on that GPU model;
2. ``profile``: the measured power profile of ``b0`` on that GPU model at the maximum limit
   (average power x epoch time) times the mean epochs to target of the runs at ``b0`` that
   reached it (on any GPU model: epochs to target do not depend on the hardware).

When neither exists there is no baseline and no saving is claimed (``None``, with the reason).
Otherwise ``saved = successes x baseline - used``, where ``used`` is the energy reported by
*every* finished run on that GPU model (completed, stopped early, failed, expired: exploration is
paid for) and ``successes`` the runs that reached the target.

Everything here works on run groups (:class:`~powerbandit.domain.runs.RunGroup`, or any record with
its fields, such as the store's) and profile records
(:class:`~powerbandit.domain.profiles.ProfileRecord`). The operator view (``powerbandit report``,
``jobs``, the dashboard) presents these figures; the server's metrics export their sum.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from powerbandit.domain.enums import RunState
from powerbandit.domain.profiles import ProfilePoint, ProfileRecord
from powerbandit.domain.runs import RunGroup

LIMIT_TOLERANCE_W = 0.5
"""Tolerance when comparing power limits (W)."""

_FINISHED = (RunState.COMPLETED, RunState.FAILED, RunState.EXPIRED)


def is_finished(group: RunGroup) -> bool:
    """True for runs that completed, failed or expired."""
    return group.state in _FINISHED


def is_success(group: RunGroup) -> bool:
    """True for runs that completed and reached the target."""
    return group.state == RunState.COMPLETED and group.reached_target


@dataclass(frozen=True)
class Baseline:
    """Expected energy and time of one successful run at the default configuration on one GPU model."""

    energy_j: float
    time_s: float
    source: str  # "measured" or "profile"
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"energy_j": self.energy_j, "time_s": self.time_s, "source": self.source, "detail": self.detail}


def max_power_limit_w(groups: Iterable[RunGroup], gpu_model: str) -> float | None:
    """The per-GPU maximum power limit of ``gpu_model`` as the runs reported it (``None``: no runs)."""
    limits = [g.max_power_limit_w for g in groups if g.gpu_model == gpu_model and g.max_power_limit_w > 0]
    return max(limits) if limits else None


def profile_point(
    profiles: Iterable[ProfileRecord], gpu_model: str, batch_size: int, limit_w: float
) -> ProfilePoint | None:
    """The point of ``batch_size`` on ``gpu_model`` at ``limit_w`` (within :data:`LIMIT_TOLERANCE_W`), if measured."""
    for profile in profiles:
        if profile.gpu_model == gpu_model and profile.batch_size == batch_size:
            for point in profile.points.values():
                if abs(point.power_limit_w - limit_w) <= LIMIT_TOLERANCE_W:
                    return point
    return None


def mean_per_run(groups: Iterable[RunGroup], field: str) -> tuple[float | None, int]:
    """Mean of ``field`` per run over ``groups``, and how many runs (``None`` when none)."""
    runs = total = 0.0
    for g in groups:
        runs += g.runs
        total += getattr(g, field)
    return (total / runs if runs else None), int(runs)


def mean_epochs_to_target(groups: Iterable[RunGroup], batch_size: int) -> float | None:
    """Mean epochs of the runs at ``batch_size`` that reached the target (any GPU model)."""
    return mean_per_run((g for g in groups if g.batch_size == batch_size and is_success(g)), "epochs")[0]


def default_baseline(
    default_batch_size: int, groups: Sequence[RunGroup], profiles: Iterable[ProfileRecord], gpu_model: str
) -> tuple[Baseline | None, str]:
    """The default configuration's expected successful run on ``gpu_model``, or ``None`` and why.

    ``groups``: the job's whole run history in groups; ``profiles``: its power profiles.
    """
    b0 = default_batch_size
    p_max = max_power_limit_w(groups, gpu_model)
    if p_max is None:
        return None, f"no runs on {gpu_model}"
    at_default = [
        g
        for g in groups
        if g.gpu_model == gpu_model
        and g.batch_size == b0
        and is_success(g)
        and abs(g.power_limit_w - p_max) <= LIMIT_TOLERANCE_W
    ]
    energy, count = mean_per_run(at_default, "energy_j")
    if energy is not None:
        return (
            Baseline(
                energy,
                mean_per_run(at_default, "time_s")[0] or 0.0,
                "measured",
                f"mean of {count} successful run(s) at batch size {b0}, {p_max:g} W on {gpu_model}",
            ),
            "",
        )
    epochs = mean_epochs_to_target(groups, b0)
    if epochs is None:
        tried = sum(g.runs for g in groups if g.batch_size == b0 and is_finished(g))
        return None, f"default batch size {b0} has not reached the target yet ({tried} finished run(s) at it)"
    point = profile_point(profiles, gpu_model, b0, p_max)
    if point is None:
        return None, f"default batch size {b0} was never measured at the maximum {p_max:g} W on {gpu_model}"
    return (
        Baseline(
            point.average_power_w * point.time_per_epoch_s * epochs,
            point.time_per_epoch_s * epochs,
            "profile",
            f"batch size {b0} profile at {p_max:g} W on {gpu_model} x {epochs:.3g} mean epochs to target",
        ),
        "",
    )


@dataclass
class GroupUsage:
    """Energy and time of a job's finished runs on one GPU model (in a time window)."""

    gpu_model: str
    runs: int = 0
    successes: int = 0
    energy_j: float = 0.0
    time_s: float = 0.0


def usage_by_gpu(groups: Iterable[RunGroup]) -> dict[str, GroupUsage]:
    """Finished runs in the window (``in_window`` groups) summed per GPU model."""
    usage: dict[str, GroupUsage] = {}
    for g in groups:
        if not g.in_window:
            continue
        u = usage.setdefault(g.gpu_model, GroupUsage(g.gpu_model))
        u.runs += g.runs
        u.successes += g.runs if is_success(g) else 0
        u.energy_j += g.energy_j
        u.time_s += g.time_s
    return usage


@dataclass(frozen=True)
class GpuSaving:
    """One job's usage on one GPU model in a window, and what it saved (``None``: no baseline, ``reason`` says why)."""

    usage: GroupUsage
    baseline: Baseline | None
    reason: str
    saved_energy_j: float | None
    saved_time_s: float | None

    @property
    def gpu_model(self) -> str:
        """The GPU model."""
        return self.usage.gpu_model


def savings_by_gpu(
    default_batch_size: int,
    window_groups: Iterable[RunGroup],
    history_groups: Sequence[RunGroup],
    profiles: Sequence[ProfileRecord],
) -> list[GpuSaving]:
    """Per GPU model (sorted) with finished runs in the window: usage, baseline and saving.

    ``window_groups``: the job's run groups with ``in_window`` marked from the window start (the
    usage and saving cover those); ``history_groups``: its whole history (the baselines use it; the
    same groups when the window is everything).
    """
    usage = usage_by_gpu(window_groups)
    savings = []
    for model in sorted(usage):
        u = usage[model]
        baseline, reason = default_baseline(default_batch_size, history_groups, profiles, model)
        if baseline is None:
            savings.append(GpuSaving(u, None, reason, None, None))
        else:
            saved_e = u.successes * baseline.energy_j - u.energy_j
            saved_t = u.successes * baseline.time_s - u.time_s
            savings.append(GpuSaving(u, baseline, reason, saved_e, saved_t))
    return savings


def saved_energy_by_gpu(jobs: Iterable[Iterable[GpuSaving]]) -> dict[str, float | None]:
    """The energy saved per GPU model summed over jobs (in job order); ``None`` where no job has a baseline."""
    saved: dict[str, float | None] = {}
    for savings in jobs:
        for s in savings:
            total = saved.setdefault(s.gpu_model, None)
            if s.saved_energy_j is not None:
                saved[s.gpu_model] = (total or 0.0) + s.saved_energy_j
    return saved
