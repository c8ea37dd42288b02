"""simulations/bounds.py: the reference points of the first recurrences, by hand on a tiny trace."""

from __future__ import annotations

import pytest

from powerbandit.domain import ProfilePoint
from simulations.bounds import (
    REFERENCES,
    first_run_excess,
    overshoot,
    reference_regret_pct,
    reference_table,
    walk,
)
from simulations.traces import TraceJob, TraceSet, packaged_trace_dir

ETA = 0.5


def job(target_epochs: dict[int, tuple[int | None, ...]], default: int = 32) -> TraceJob:
    """Three batch sizes, one power limit each (no profiling extra): epoch cost 10, 8, 20 at 8, 16, 32."""
    cost = {8: 10.0, 16: 8.0, 32: 20.0}
    # one limit of 100 W with MAX_POWER 100: epoch cost = 0.5 * 100 * t + 0.5 * 100 * t = 100 t
    power = {b: {100.0: ProfilePoint(100.0, 100.0, c / 100.0)} for b, c in cost.items()}
    return TraceJob(
        gpu="v100", workload="cifar100", target_metric=0.6, max_epochs=50, default_batch_size=default,
        batch_sizes=(8, 16, 32), power_limits=(100.0,), target_epochs=target_epochs, power=power,
        eta=ETA, beta=2.0, recurrences=40,
    )  # fmt: skip


def test_reference_walks_by_hand() -> None:
    # epochs: 8 needs 10 (cost 100), 16 needs 10 (80: the oracle), 32 needs 10 (200: the default)
    j = job({8: (10,), 16: (10,), 32: (10,)})
    assert j.oracle()[0] == 16
    assert walk(j) == [32, 16] and overshoot(j) == 8
    assert first_run_excess(j, 32) == pytest.approx(200.0 - 80.0)
    assert first_run_excess(j, 8, min_cost=80.0) == pytest.approx(100.0 - 80.0)
    assert reference_regret_pct(j, "default-then-oracle", 10) == pytest.approx(100 * 120 / 800)
    assert reference_regret_pct(j, "walk", 10) == pytest.approx(100 * 120 / 800)  # the oracle's first run is free
    assert reference_regret_pct(j, "walk+overshoot", 10) == pytest.approx(100 * 140 / 800)
    assert reference_regret_pct(j, "walk+overshoot", 1) == pytest.approx(100 * 120 / 80)  # only the first trial


def test_a_trial_that_cannot_reach_the_target_wastes_what_the_cap_lets_it_spend() -> None:
    # 8 never reaches: capped at beta * min_cost = 160 -> 16 epochs of 10, all wasted
    j = job({8: (None,), 16: (10,), 32: (10,)})
    assert first_run_excess(j, 8, min_cost=80.0) == pytest.approx(160.0)
    # the first run has no cap but max_epochs: a seed past it fails there
    slow = job({8: (10,), 16: (10,), 32: (60,)})
    assert first_run_excess(slow, 32) == pytest.approx(50 * 20.0)


def test_the_default_as_the_oracle_overshoots_to_its_cheaper_neighbour() -> None:
    j = job({8: (30,), 16: (10,), 32: (7,)}, default=16)
    # 32 costs 140 (60 over the oracle's 80); 8 would need 300, stopped at the cap 160 and wasted
    assert walk(j) == [16] and overshoot(j) == 32
    with pytest.raises(ValueError, match="unknown reference"):
        reference_regret_pct(j, "psychic", 10)


@pytest.mark.traces
def test_canonical_references_are_ordered() -> None:
    rows = reference_table(TraceSet(packaged_trace_dir()).jobs(), (5, 10, 20))
    assert [r.reference for r in rows] == list(REFERENCES)
    for k in (5, 10, 20):
        values = [r.regret_pct[k] for r in rows]
        assert 0 < values[0] <= values[1] <= values[2]
    assert rows[0].regret_pct[10] == pytest.approx(rows[0].regret_pct[20] * 2, rel=0.01)
