"""Simulation outputs: ``runs.csv``, ``summary.json``, the printed table and the PNG plots."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from simulations.engine import SHORT_HORIZONS, Attempt, SimResult

RUN_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Attempt))


def write_runs_csv(results: Sequence[SimResult], path: Path) -> None:
    """Every attempt of every simulation, one row each."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RUN_COLUMNS)
        for result in results:
            for a in result.attempts:
                writer.writerow(
                    [
                        a.job, a.gpu, a.policy, a.seed, a.recurrence, a.attempt, a.batch_size,
                        f"{a.power_limit:g}", a.epochs, f"{a.energy_j:.6g}", f"{a.time_s:.6g}",
                        f"{a.cost:.6g}", int(a.reached), int(a.profiled), a.phase,
                    ]
                )


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_summary_json(results: Sequence[SimResult], path: Path) -> list[dict[str, Any]]:
    """One object per simulation; returns the list written."""
    summaries = [{k: _clean(v) for k, v in r.summary().items()} for r in results]
    path.write_text(json.dumps(summaries, indent=1) + "\n")
    return summaries


def table(summaries: Sequence[dict[str, Any]], policies: Sequence[str]) -> str:
    """Per job and overall: mean regret and energy saving (over seeds) per policy."""
    by_job: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for s in summaries:
        by_job[s["job"]][s["policy"]].append(s)
    name_w = max([len("job"), *(len(j) for j in by_job)]) + 2
    head = "job".ljust(name_w) + "".join(f"{p + ' regret%':>20}{p + ' saving%':>20}" for p in policies)
    lines = [head, "-" * len(head)]

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        values = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(values)) if values else math.nan

    for job, per_policy in by_job.items():
        line = job.ljust(name_w)
        for p in policies:
            rows = per_policy.get(p, [])
            line += f"{mean(rows, 'regret_pct'):20.2f}{mean(rows, 'energy_saving_pct'):20.2f}"
        lines.append(line)
    lines.append("-" * len(head))
    line = "overall mean".ljust(name_w)
    for p in policies:
        rows = [s for s in summaries if s["policy"] == p]
        line += f"{mean(rows, 'regret_pct'):20.2f}{mean(rows, 'energy_saving_pct'):20.2f}"
    lines.append(line)
    if len(policies) >= 2:
        a, b = policies[-1], policies[0]
        wins = sum(
            1
            for per_policy in by_job.values()
            if mean(per_policy.get(a, []), "regret_pct") < mean(per_policy.get(b, []), "regret_pct")
        )
        lines.append(f"{a} has a lower mean regret than {b} on {wins} of {len(by_job)} jobs")
    return "\n".join(lines)


def _mean_of(rows: Sequence[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
    return float(np.mean(values)) if values else math.nan


def short_horizon_rows(summaries: Sequence[dict[str, Any]], policies: Sequence[str]) -> list[dict[str, Any]]:
    """Per policy: mean (over jobs and seeds) regret of the first K recurrences, of all of them, and
    the recurrences until cumulative regret stays under 10 % (mean over the simulations that got
    there, and how many never did)."""
    out = []
    for p in policies:
        rows = [s for s in summaries if s["policy"] == p]
        if not rows:
            continue
        reached = [
            s["recurrences_to_regret_10pct"] for s in rows if s.get("recurrences_to_regret_10pct") is not None
        ]
        out.append(
            {
                "policy": p,
                **{f"regret_first_{k}_pct": _mean_of(rows, f"regret_first_{k}_pct") for k in SHORT_HORIZONS},
                "regret_pct": _mean_of(rows, "regret_pct"),
                "recurrences_to_regret_10pct": float(np.mean(reached)) if reached else math.nan,
                "never_under_10pct": len(rows) - len(reached),
                "simulations": len(rows),
                "slowdown_mean": _mean_of(rows, "slowdown_mean"),
                "budget_broken_pct": _mean_of(rows, "budget_broken_pct"),
            }
        )
    return out


def short_horizon_table(summaries: Sequence[dict[str, Any]], policies: Sequence[str]) -> str:
    """The regret of the first K recurrences per policy (mean over jobs and seeds), as text."""
    rows = short_horizon_rows(summaries, policies)
    head = f"{'policy':<16}" + "".join(f"{f'first {k}':>10}" for k in SHORT_HORIZONS) + f"{'all':>10}"
    head += f"{'recurrences to <10%':>22}"
    lines = ["regret of the first K recurrences (%, mean over jobs and seeds)", head, "-" * len(head)]
    for r in rows:
        line = f"{r['policy']:<16}" + "".join(f"{r[f'regret_first_{k}_pct']:10.2f}" for k in SHORT_HORIZONS)
        line += f"{r['regret_pct']:10.2f}"
        never = f" ({r['never_under_10pct']} never)" if r["never_under_10pct"] else ""
        line += f"{r['recurrences_to_regret_10pct']:22.1f}{never}"
        lines.append(line)
    budgets = sorted({s["max_slowdown"] for s in summaries if s.get("max_slowdown")})
    if budgets:
        lines.append("")
        lines.append(
            f"slowdown budget {', '.join(f'{b:g}x' for b in budgets)} (cost = energy; regret against the "
            "cheapest configuration expected to fit the budget)"
        )
        lines.append(f"{'policy':<16}{'mean time / default':>22}{'recurrences over budget %':>28}")
        for r in rows:
            lines.append(f"{r['policy']:<16}{r['slowdown_mean']:22.3f}{r['budget_broken_pct']:28.1f}")
    return "\n".join(lines)


def print_table(summaries: Sequence[dict[str, Any]], policies: Sequence[str], stream: TextIO) -> None:
    """Print :func:`table` and :func:`short_horizon_table`."""
    stream.write(table(summaries, policies) + "\n\n")
    stream.write(short_horizon_table(summaries, policies) + "\n")
    for s in summaries:
        if s.get("stuck"):
            stream.write(f"WARNING {s['job']} {s['policy']} seed {s['seed']}: stuck: {s['stuck']}\n")


def configs_figure(results: Sequence[SimResult], policies: Sequence[str]) -> Any:
    """The figure of ``configs.png``: per job, every attempt of every seed, batch size and power limit.

    One panel per job; x is the attempt, y the batch size (policies side by side, slightly offset,
    one marker each), the colour the power limit (colour bar), ``x`` an attempt that did not reach
    the target. Points are translucent, so a configuration most seeds chose reads darker. The
    legend sits above the panels. The caller closes the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    jobs = list(dict.fromkeys(r.job for r in results))
    cols = min(4, len(jobs))
    rows = math.ceil(len(jobs) / cols)
    markers = dict(zip(policies, "os^Dv<>p", strict=False))
    limits = [a.power_limit for r in results for a in r.attempts if a.power_limit > 0]
    norm = Normalize(min(limits, default=0.0), max(limits, default=1.0))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 2.9 * rows + 0.8), squeeze=False, layout="constrained")
    mappable = None
    for ax, job in zip(axes.flat, jobs, strict=False):
        seeds = sorted({r.seed for r in results if r.job == job})
        sizes = sorted({a.batch_size for r in results if r.job == job for a in r.attempts})
        for k, p in enumerate(policies):
            runs = [r for r in results if r.job == job and r.policy == p]
            offset = (k - (len(policies) - 1) / 2) * 0.18
            attempts = [(i, a) for r in runs for i, a in enumerate(r.attempts, start=1)]
            for reached, marker in ((True, markers.get(p, "o")), (False, "x")):
                chosen = [(i, a) for i, a in attempts if a.reached == reached]
                if not chosen:
                    continue
                mappable = ax.scatter(
                    [i for i, _ in chosen], [math.log2(a.batch_size) + offset for _, a in chosen],
                    c=[a.power_limit for _, a in chosen], cmap="viridis", norm=norm, marker=marker,
                    s=14 if reached else 18, alpha=0.55, linewidths=0.8 if not reached else 0.2,
                    edgecolors=None if not reached else "black",
                )  # fmt: skip
        ax.set_yticks([math.log2(b) for b in sizes], [str(b) for b in sizes])
        ax.set_title(f"{job} ({len(seeds)} seed{'s' if len(seeds) != 1 else ''})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, axis="y", lw=0.3, alpha=0.5)
    for ax in list(axes.flat)[len(jobs) :]:
        ax.axis("off")
    if mappable is not None:
        fig.colorbar(mappable, ax=axes, label="power limit (W)", shrink=0.9)
    handles = [Line2D([], [], marker=markers[p], linestyle="", color="gray", markeredgecolor="black",
                      label=f"{p}" + (" (offset " + ("down" if k < (len(policies) - 1) / 2 else "up") + ")"
                                      if len(policies) > 1 else ""))
               for k, p in enumerate(policies)]  # fmt: skip
    handles.append(Line2D([], [], marker="x", linestyle="", color="gray", label="did not reach the target"))
    fig.legend(handles=handles, loc="outside upper center", ncol=len(handles), fontsize=8, frameon=False)
    fig.supxlabel("attempt (all seeds, translucent: darker = chosen by more seeds)", fontsize=9)
    fig.supylabel("batch size", fontsize=9)
    return fig


def write_plots(results: Sequence[SimResult], policies: Sequence[str], out: Path) -> list[Path]:
    """``regret.png`` (cumulative regret vs recurrence) and ``configs.png`` (choices over time, see
    :func:`configs_figure`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = list(dict.fromkeys(r.job for r in results))
    cols = min(4, len(jobs))
    rows = math.ceil(len(jobs) / cols)
    colors = {p: f"C{i}" for i, p in enumerate(policies)}
    paths = []

    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows + 0.6), squeeze=False)
    for ax, job in zip(axes.flat, jobs, strict=False):
        for p in policies:
            curves = [r.cumulative_regret_pct() for r in results if r.job == job and r.policy == p]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            mean = np.mean([c[:n] for c in curves], axis=0)
            ax.plot(np.arange(1, n + 1), mean, color=colors[p], label=p, lw=1.2)
        ax.set_title(job, fontsize=8)
        ax.tick_params(labelsize=7)
        # the first recurrences' regret can be huge (one bad run over one oracle run): a symlog
        # axis keeps both those and the few-percent differences that matter in the long run readable
        ax.set_yscale("symlog", linthresh=10.0)
        ax.grid(True, which="major", lw=0.3, alpha=0.5)
    for ax in list(axes.flat)[len(jobs) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("recurrence")
    fig.supylabel("cumulative regret vs oracle (%)\nmean over seeds, symlog", fontsize=9)
    fig.tight_layout()
    paths.append(out / "regret.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)

    fig = configs_figure(results, policies)
    paths.append(out / "configs.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    return paths


def as_dict(attempt: Attempt) -> dict[str, Any]:
    """One ``runs.csv`` row as a dict."""
    return asdict(attempt)
