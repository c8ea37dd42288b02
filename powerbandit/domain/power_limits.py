"""The candidate power limits a run profiles when it is not given a list."""

from __future__ import annotations

DEFAULT_POWER_LIMIT_STEP_W = 25.0
"""Step of the default candidate list (W, per GPU)."""


def candidate_power_limits(
    min_power_limit_w: float,
    max_power_limit_w: float,
    step_w: float = DEFAULT_POWER_LIMIT_STEP_W,
    tolerance_w: float = 0.0,
) -> tuple[float, ...]:
    """Per-GPU limits from the maximum down in steps of ``step_w``, and the minimum; ascending.

    ``max - n * step`` for n = 0, 1, ... while it is above ``min + tolerance_w``, then ``min``
    itself (a limit within ``tolerance_w`` of the minimum is the minimum). ``step_w`` must be > 0.
    """
    if not step_w > 0:
        raise ValueError(f"step_w must be > 0, got {step_w!r}")
    limits = {min_power_limit_w}
    steps = 0
    limit = max_power_limit_w
    while limit > min_power_limit_w + tolerance_w:
        limits.add(limit)
        steps += 1
        limit = max_power_limit_w - steps * step_w
    return tuple(sorted(limits))
