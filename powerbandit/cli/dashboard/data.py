"""What the dashboard's JSON endpoints answer, computed from ``Job`` messages of the public API.

Every figure comes from :mod:`powerbandit.cli.operator_view` (the one definition of energy used and
saved, and of a job's expected cost), so the dashboard, ``jobs list`` and ``report`` agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from powerbandit.cli import operator_view as view
from powerbandit.v1 import optimizer_pb2 as pb

#: Points of the cluster's energy-over-time curves at most (one per run finish beyond that is too many).
TIMELINE_POINTS = 200


def job_row(job: pb.Job) -> dict[str, Any]:
    """One row of the cluster page's jobs table (from a ``ListJobs`` job: run groups, no runs)."""
    s = view.job_summary(job)
    best = s["best"]
    return {
        "job_id": s["job_id"],
        "finished_runs": s["finished_runs"],
        "in_flight_runs": s["in_flight_runs"],
        "best_batch_size": best["batch_size"],
        "best_power_limit_w": best["power_limit_w"],
        "expected_energy_j": best["energy_j"],
        "expected_time_s": best["time_s"],
        "energy_j": s["energy_j"],
        "saved_energy_j": s["saved"]["energy_j"],
        "saved_fraction": s["saved"]["fraction"],
        "saved_text": view.saved_text(s["saved"]),
        "saved_reason": s["saved"]["reason"],
    }


def _baselines(job: pb.Job) -> dict[str, float]:
    """Energy (J) of one successful run at the default configuration, per GPU model that has one."""
    out = {}
    for row in view.job_summary(job)["per_gpu"]:
        if row["baseline"] is not None:
            out[row["gpu_model"]] = float(row["baseline"]["energy_j"])
    return out


def timeline(jobs: Iterable[pb.Job], now_unix_s: float, points: int = TIMELINE_POINTS) -> dict[str, Any]:
    """Cumulative energy used and estimated saved over time, per GPU model, from jobs read with their runs.

    A run counts from when it finished. "Saved" is :func:`powerbandit.cli.operator_view.job_summary`'s
    estimate built up run by run: each run that reached the target adds the job's baseline on its
    GPU model (default configuration, measured), every finished run subtracts its energy, on the
    GPU models that have a baseline; so the last point of each curve is the total of ``jobs list``.
    The curves are sampled at ``points`` instants at most (the finish times, when fewer).
    """
    events: list[tuple[float, str, float, float]] = []  # (finished, model, used J, saved J)
    for job in jobs:
        baselines = _baselines(job)
        for run in job.runs:
            if run.state not in (pb.RUN_STATE_COMPLETED, pb.RUN_STATE_FAILED, pb.RUN_STATE_EXPIRED):
                continue
            base = baselines.get(run.gpu_model)
            saved = math.nan
            if base is not None:
                success = run.state == pb.RUN_STATE_COMPLETED and run.reached_target
                saved = (base if success else 0.0) - run.energy_j
            events.append((run.finished_unix_s, run.gpu_model, run.energy_j, saved))
    events.sort(key=lambda e: e[0])
    models = sorted({e[1] for e in events})
    if not events:
        return {"t": [], "models": [], "used_j": {}, "saved_j": {}}
    start, end = events[0][0], max(now_unix_s, events[-1][0])
    if len(events) <= points:
        instants = sorted({e[0] for e in events} | {end})
    else:
        step = (end - start) / (points - 1)
        instants = [start + i * step for i in range(points)]
        instants[-1] = end
    used = {m: 0.0 for m in models}
    saved: dict[str, float | None] = {m: None for m in models}
    out_used: dict[str, list[float]] = {m: [] for m in models}
    out_saved: dict[str, list[float | None]] = {m: [] for m in models}
    i = 0
    for t in instants:
        while i < len(events) and events[i][0] <= t:
            _, model, e_used, e_saved = events[i]
            used[model] += e_used
            if not math.isnan(e_saved):
                saved[model] = (saved[model] or 0.0) + e_saved
            i += 1
        for m in models:
            out_used[m].append(used[m])
            out_saved[m].append(saved[m])
    return {"t": instants, "models": models, "used_j": out_used, "saved_j": out_saved}


def _best_so_far(runs: Sequence[dict[str, Any]]) -> list[float | None]:
    best = math.inf
    out: list[float | None] = []
    for r in runs:
        if r["state"] == "completed" and r["reached_target"]:
            best = min(best, r["cost"])
        out.append(best if math.isfinite(best) else None)
    return out


def job_page(job: pb.Job) -> dict[str, Any]:
    """Everything the job page shows (a job read with ``GetJob``, every run)."""
    detail = view.job_detail(job, recent=0)
    runs = detail.pop("recent_runs")
    finished = [r for r in runs if r["state"] != "in_flight"]
    for i, r in enumerate(finished, start=1):
        r["index"] = i
    summary = detail["summary"]
    detail["summary"] = {
        "finished_runs": summary["finished_runs"],
        "successes": summary["successes"],
        "energy_j": summary["energy_j"],
        "time_s": summary["time_s"],
        "saved_text": view.saved_text(summary["saved"]),
        "saving_sentence": view.saving_sentence(summary),
        "best": summary["best"],
        "per_gpu": summary["per_gpu"],
    }
    detail["finished_runs"] = finished
    detail["best_so_far"] = _best_so_far(finished)
    detail["in_flight"] = [r for r in runs if r["state"] == "in_flight"]
    return detail
