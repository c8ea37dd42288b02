"""Short-horizon figures of the simulator: regret of the first K recurrences, recurrences to 10 %."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from simulations import cli
from simulations.engine import SHORT_HORIZONS, SimResult
from simulations.report import short_horizon_rows, short_horizon_table
from tests.helpers import write_tiny_trace


def result_with(costs: list[float], oracle: float = 10.0, policy: str = "p") -> SimResult:
    r = SimResult("j@v100", "v100", "j", 0.6, 0.5, 2.0, policy, 1)
    r.recurrence_costs = list(costs)
    r.oracle_costs = [oracle] * len(costs)
    r.default_costs = [oracle] * len(costs)
    r.default_energies = [oracle] * len(costs)
    return r


def test_regret_of_the_first_k_recurrences() -> None:
    r = result_with([30.0, 10.0, 10.0, 10.0, 10.0, 10.0])
    # first 5: 70 over 50 -> 40 %; first 10 of a 6-recurrence job counts all 6: 80 / 60 -> 33.3 %
    assert r.regret_first_pct(5) == pytest.approx(40.0)
    assert r.regret_first_pct(10) == pytest.approx(100.0 * (80.0 / 60.0 - 1.0))
    assert r.regret_first_pct(1) == pytest.approx(200.0)
    s = r.summary()
    for k in SHORT_HORIZONS:
        assert s[f"regret_first_{k}_pct"] == pytest.approx(r.regret_first_pct(k))
    assert s["regret_first_40_pct"] == pytest.approx(s["regret_pct"])
    assert math.isnan(result_with([]).regret_first_pct(5))


def test_recurrences_until_regret_stays_under_ten_percent() -> None:
    # cumulative regret: 200, 100, 66.7, 50, 40, 33.3, ... falls under 10 % for good at n = 21
    r = result_with([30.0] + [10.0] * 29)
    curve = r.cumulative_regret_pct()
    first = r.recurrences_until_under(10.0)
    assert first == 21
    assert curve[first - 2] >= 10.0 and all(curve[first - 1 :] < 10.0)
    # under 10 % from the start
    assert result_with([10.5] * 5).recurrences_until_under(10.0) == 1
    # dips under, rises again, and ends above: never
    assert result_with([10.0, 10.0, 40.0]).recurrences_until_under(10.0) is None
    # dips under, rises again, then falls under for good: counted from the last rise
    assert result_with([10.0, 12.5, 10.0, 10.0, 10.0]).recurrences_until_under(10.0) == 3


def test_table_means_over_simulations_and_counts_never() -> None:
    summaries = [
        result_with([30.0] + [10.0] * 29, policy="a").summary(),
        result_with([10.0] * 30, policy="a").summary(),
        result_with([10.0, 10.0, 40.0], policy="b").summary(),
    ]
    rows = {r["policy"]: r for r in short_horizon_rows(summaries, ["a", "b"])}
    assert rows["a"]["regret_first_5_pct"] == pytest.approx((40.0 + 0.0) / 2)
    assert rows["a"]["recurrences_to_regret_10pct"] == pytest.approx((21 + 1) / 2)
    assert rows["a"]["never_under_10pct"] == 0
    assert rows["b"]["never_under_10pct"] == 1 and math.isnan(rows["b"]["recurrences_to_regret_10pct"])
    text = short_horizon_table(summaries, ["a", "b"])
    assert "first 5" in text and "first 40" in text and "(1 never)" in text


def test_cli_prints_and_writes_the_short_horizon_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write_tiny_trace(tmp_path / "t")
    out = tmp_path / "out"
    argv = ["--trace-dir", str(trace), "--gpu", "v100", "--workload", "cifar100", "--seeds", "1-2",
            "--policy", "zeus", "powerbandit", "--out", str(out), "--no-plots"]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "regret of the first K recurrences" in printed and "recurrences to <10%" in printed
    for s in json.loads((out / "summary.json").read_text()):
        for k in SHORT_HORIZONS:
            assert f"regret_first_{k}_pct" in s
        assert "recurrences_to_regret_10pct" in s
        assert s[f"regret_first_{SHORT_HORIZONS[-1]}_pct"] is not None
