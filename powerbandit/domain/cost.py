"""The user's cost of a run: ``eta * energy + (1 - eta) * MAX_POWER * time`` (joules-equivalent).

``eta`` in [0, 1] weighs energy against time; ``MAX_POWER`` (``max_power_w``) is the maximum power
limit summed over the run's GPUs, which turns time into joules. This module is the one place the
formula is written.

The same formula is evaluated with three groupings of its floating-point operations, and the
groupings round differently: the simulator's ``runs.csv`` and the policies' choices are kept
bit-identical, so each grouping a caller depends on is its own function here, named by what it
takes, rather than one function that would move results by an ulp.
"""

from __future__ import annotations

from powerbandit.domain.profiles import ProfilePoint


def energy_time_cost(eta: float, energy_j: float, time_s: float, max_power_w: float) -> float:
    """The cost of a run that used ``energy_j`` over ``time_s``: ``eta * E + (1 - eta) * MAX_POWER * t``."""
    return eta * energy_j + (1.0 - eta) * max_power_w * time_s


def power_time_cost(eta: float, average_power_w: float, time_s: float, max_power_w: float) -> float:
    """The cost of ``time_s`` at ``average_power_w``: ``eta * P * t + (1 - eta) * MAX_POWER * t``.

    (``eta * P`` first, then times ``t``: how the SDK prices a profiled step and the simulator's
    traces an epoch.)
    """
    return eta * average_power_w * time_s + (1.0 - eta) * max_power_w * time_s


def cost_rate(eta: float, average_power_w: float, max_power_w: float) -> float:
    """The cost per second at ``average_power_w``: ``eta * P + (1 - eta) * MAX_POWER`` (J-equivalent/s).

    Times a duration, the cost of that duration grouped as ``(eta * P + (1 - eta) * MAX_POWER) * t``.
    """
    return eta * average_power_w + (1.0 - eta) * max_power_w


def epoch_cost(eta: float, point: ProfilePoint, max_power_w: float) -> float:
    """The cost of one epoch at a profiled power limit (:func:`energy_time_cost` of its energy and time)."""
    return energy_time_cost(eta, point.average_power_w * point.time_per_epoch_s, point.time_per_epoch_s, max_power_w)
