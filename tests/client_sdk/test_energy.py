"""Energy windows (client_sdk.energy) over the replay GPU: exact numbers, nesting, errors."""

from __future__ import annotations

import pytest

from client_sdk.energy import EnergyMeter
from client_sdk.replay import ReplayGpu
from tests.helpers import SMALL_TABLE


def _gpu() -> ReplayGpu:
    gpu = ReplayGpu(SMALL_TABLE)
    gpu.begin_run(64)  # 250 W, 11 s per epoch at 300 W
    return gpu


def test_nested_windows_measure_exactly() -> None:
    gpu = _gpu()
    meter = EnergyMeter(gpu)
    with meter.window("run") as run:
        for epoch in range(2):
            with meter.window(f"epoch-{epoch}") as w:
                gpu.advance(1.0)
                assert w.open and w.energy_j == pytest.approx(2750.0)  # so far, while open
            assert not w.open and w.parent == "run" and w.depth == 1
            assert w.energy_j == pytest.approx(2750.0) and w.time_s == pytest.approx(11.0)
            assert w.average_power_w == pytest.approx(250.0)
        gpu.set_power_limit(100.0)
        eval_window = meter.begin("eval")
        gpu.advance(0.5)
    assert eval_window.open  # overlapping windows are allowed: "eval" outlives "run"
    meter.end("eval")
    assert run.energy_j == pytest.approx(2 * 2750.0 + 0.5 * 95.0 * 20.0) and run.time_s == pytest.approx(32.0)
    assert [w["name"] for w in meter.summary()] == ["epoch-0", "epoch-1", "run", "eval"]
    assert meter.summary()[3]["energy_j"] == pytest.approx(950.0)
    assert meter.open_windows == ()


def test_window_errors_name_the_problem() -> None:
    meter = EnergyMeter(_gpu())
    meter.begin("a")
    with pytest.raises(ValueError, match="already open"):
        meter.begin("a")
    with pytest.raises(ValueError, match=r"no open energy window named 'b' \(open: a\)"):
        meter.end("b")
    with pytest.raises(ValueError, match="needs a name"):
        meter.begin("")
    with pytest.raises(RuntimeError, match="oom"), meter.window("b"):
        raise RuntimeError("oom")
    assert [w.name for w in meter.windows] == ["b"]  # measured although the block raised
