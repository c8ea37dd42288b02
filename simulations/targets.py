"""Target metrics other than the canonical ones, chosen by one rule (issue 17's "other targets").

A target *qualifies* for a workload when the workload's default batch size reaches it in every
training seed of the trace on every GPU model with a power file (within ``max_epochs``), so the
default configuration and the oracle are well defined on every GPU. Targets are ordered by
difficulty: a larger value is harder for a metric where higher is better (accuracy, F1), a
smaller value is harder where lower is better (word error rate, RMSE).

:func:`shifted_targets` moves ``steps`` qualifying targets away from the canonical one
(``-1``: the nearest easier qualifying target, ``+1``: the nearest harder one); a workload without
a qualifying target that far in that direction is left out of the set.
"""

from __future__ import annotations

from collections.abc import Mapping

from simulations.traces import CANONICAL, TraceError, TraceSet

ALTERNATIVE_TARGET_STEPS: Mapping[str, int] = {"easier-1": -1, "easier-2": -2, "harder-1": 1}
"""The alternative target sets the benchmarks measure: name -> difficulty steps from the canonical target."""


def default_reaches(traces: TraceSet, workload: str, target: float) -> bool:
    """Whether ``workload``'s default batch size reaches ``target`` in every trace seed on every GPU."""
    if not traces.gpus:
        return False
    for gpu in traces.gpus:
        try:
            job = traces.job(gpu, workload, target)
        except TraceError:  # no batch size of this target in the GPU's power file
            return False
        if not job.all_reach(job.default_batch_size):
            return False
    return True


def difficulty_key(workload: str, target: float) -> float:
    """A number that grows with how hard ``target`` is for ``workload`` (sort key, easiest first)."""
    return target if CANONICAL[workload].higher_is_better else -target


def qualifying_targets(traces: TraceSet, workload: str) -> list[float]:
    """The targets of ``workload`` that its default batch size reaches everywhere, easiest first."""
    found = [t for t in traces.targets(workload) if default_reaches(traces, workload, t)]
    return sorted(found, key=lambda t: difficulty_key(workload, t))


def shifted_target(traces: TraceSet, workload: str, steps: int) -> float | None:
    """The qualifying target ``steps`` places harder (``steps > 0``) or easier (``< 0``) than the
    canonical one, or ``None`` when ``workload`` has fewer qualifying targets in that direction."""
    if steps == 0:
        raise ValueError("steps must not be 0 (the canonical target is not an alternative)")
    canonical = difficulty_key(workload, CANONICAL[workload].target_metric)
    targets = qualifying_targets(traces, workload)
    if steps > 0:
        ahead = [t for t in targets if difficulty_key(workload, t) > canonical]
    else:
        ahead = [t for t in reversed(targets) if difficulty_key(workload, t) < canonical]
    return ahead[abs(steps) - 1] if len(ahead) >= abs(steps) else None


def shifted_targets(traces: TraceSet, steps: int) -> dict[str, float]:
    """``workload -> target`` for every canonical workload that has a :func:`shifted_target`."""
    out = {}
    for workload in CANONICAL:
        target = shifted_target(traces, workload, steps)
        if target is not None:
            out[workload] = target
    return out


def alternative_target_sets(traces: TraceSet) -> dict[str, dict[str, float]]:
    """Every set of :data:`ALTERNATIVE_TARGET_STEPS` that changes at least one workload's target."""
    sets = {name: shifted_targets(traces, steps) for name, steps in ALTERNATIVE_TARGET_STEPS.items()}
    return {name: targets for name, targets in sets.items() if targets}
