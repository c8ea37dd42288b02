"""The PNG plots are readable: checked on the matplotlib figures they are drawn from.

``jobs plot``: integer run ticks, each run coloured by its batch size, one legend outside both
axes, tick labels of batch sizes without an estimate that overlap neither each other nor their
neighbours. ``report``: a logarithmic energy axis on which a 0.4 kWh job stays visible next to a
74 kWh one. The simulator's ``configs.png``: every seed, the power limit, the legend off the data.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from client_sdk.client import OptimizerClient  # noqa: E402
from optimizer_server.server import EmbeddedServer  # noqa: E402
from powerbandit.cli import operator_view as view  # noqa: E402
from powerbandit.v1 import optimizer_pb2 as pb  # noqa: E402
from tests.helpers import SYNTH, TRACE, replay


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb.Job]:
    db = tmp_path_factory.mktemp("plots") / "p.db"
    with EmbeddedServer(f"sqlite:///{db}") as server, OptimizerClient(server.address, timeout_s=10) as client:
        replay(client, SYNTH, TRACE, 14, "Replay A")
        yield client.get_job(SYNTH.job_id)


def with_unexplored(job: pb.Job) -> pb.Job:
    """The job with four more batch sizes that have no estimate yet (their tick labels say so)."""
    out = pb.Job()
    out.CopyFrom(job)
    for b in (2048, 4096, 8192, 16384):
        out.arms.append(pb.Arm(batch_size=b, status="unexplored", cost_mean=math.nan, cost_low=math.nan,
                               cost_high=math.nan))  # fmt: skip
    return out


def overlaps(a: Any, b: Any) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("figsize", [(12.0, 4.5), (8.0, 4.0), (4.8, 2.4)])
def test_job_plot_is_readable(job: pb.Job, figsize: tuple[float, float]) -> None:
    fig = view.job_figure(with_unexplored(job), figsize=figsize, dpi=100)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        left, right = fig.axes[:2]
        assert fig.get_size_inches().tolist() == list(figsize)
        # run axis: integer ticks only
        low, high = left.get_xlim()
        ticks = [t for t in left.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks)
        # one legend, outside both axes
        (legend,) = fig.legends
        box = legend.get_window_extent(renderer)
        assert not left.legend_ and not right.legend_
        for ax in (left, right):
            assert not overlaps(box, ax.get_window_extent(renderer)), "the legend covers an axes"
        # batch size tick labels (with '(unexplored)') overlap nothing around them
        labels = [t for t in right.get_xticklabels() if t.get_text()]
        assert sum("unexplored" in t.get_text() for t in labels) >= 4
        boxes = [t.get_window_extent(renderer) for t in labels]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert not overlaps(a, b), "batch size labels overlap"
            assert not overlaps(a, box), "a batch size label runs into the legend"
            assert not overlaps(a, right.xaxis.label.get_window_extent(renderer))
        # each run's colour is its batch size's
        finished = [r for r in job.runs if r.state != pb.RUN_STATE_IN_FLIGHT]
        sizes = sorted({a.batch_size for a in with_unexplored(job).arms})
        colour = {b: to_hex(f"C{i % 10}") for i, b in enumerate(sizes)}
        drawn = {}
        for collection in left.collections:
            for (x, _), face in zip(collection.get_offsets(), collection.get_facecolors(), strict=True):
                drawn[int(x)] = to_hex(face)
        assert sorted(drawn) == list(range(1, len(finished) + 1))
        for i, run in enumerate(finished, start=1):
            assert drawn[i] == colour[run.batch_size], f"run {i}"
    finally:
        plt.close(fig)


def test_report_plot_keeps_small_jobs_visible() -> None:
    row = {"runs": 10, "successes": 10, "time_s": 1.0, "saved_fraction": 0.1, "partial": False, "reason": None}
    report = {
        "since_unix_s": 0.0,
        "per_job": [
            {**row, "job_id": "big", "energy_j": 74 * 3.6e6, "saved_energy_j": 8 * 3.6e6},
            {**row, "job_id": "small", "energy_j": 0.4 * 3.6e6, "saved_energy_j": 0.05 * 3.6e6},
            {**row, "job_id": "exploring", "energy_j": 0.9 * 3.6e6, "saved_energy_j": -0.02 * 3.6e6},
        ],
        "per_gpu": [{"gpu_model": "A100", "runs": 30, "successes": 30, "energy_j": 75.3 * 3.6e6, "time_s": 3.0,
                     "saved_energy_j": 8.03 * 3.6e6, "uncovered_jobs": []}],  # fmt: skip
    }
    fig = view.report_figure(report)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        assert ax.get_xscale() == "symlog"
        used = [p for p in ax.patches if to_hex(p.get_facecolor()) == to_hex("tab:blue")]
        widths = {round(p.get_width() / 3.6e6 * 3.6e6, 3): p.get_window_extent(renderer).width for p in used}
        assert widths[0.4] > 0.4 * widths[74.0], widths  # linear axis: 0.4/74 = 0.5% of the bar
        saved = [p for p in ax.patches if to_hex(p.get_facecolor()) == to_hex("tab:green")]
        assert any(p.get_width() < 0 and p.get_window_extent(renderer).width > 5 for p in saved)  # negative saving
        texts = [t.get_text() for t in ax.texts]
        assert "74.00 kWh" in texts and "1440.0 kJ" in texts
        for a in fig.axes:
            assert not a.legend_ or not overlaps(a.legend_.get_window_extent(renderer), a.get_window_extent(renderer))
    finally:
        plt.close(fig)


def test_simulator_configs_plot() -> None:
    from simulations.engine import Attempt, SimResult
    from simulations.report import configs_figure

    results = []
    for seed in range(3):
        r = SimResult("job", "A100", "w", 0.5, 0.5, 2.0, "powerbandit", seed)
        for i in range(12):
            r.attempts.append(Attempt("job", "A100", "powerbandit", seed, i, i, 2 ** (5 + (i + seed) % 4),
                                      150.0 + 25 * ((i * (seed + 1)) % 5), 3, 1.0, 1.0, 1.0, i % 5 != 0, False, ""))  # fmt: skip
        results.append(r)
    fig = configs_figure(results, ["powerbandit"])
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        points = sum(len(c.get_offsets()) for c in ax.collections)
        assert points == 3 * 12  # every seed
        assert any(c.get_array() is not None for c in ax.collections)  # coloured by power limit
        assert any("power limit" in a.get_ylabel() for a in fig.axes[1:])  # with its colour bar
        for legend in [*fig.legends, *(a.legend_ for a in fig.axes if a.legend_)]:
            box = legend.get_window_extent(renderer)
            assert not overlaps(box, ax.get_window_extent(renderer))
    finally:
        plt.close(fig)
