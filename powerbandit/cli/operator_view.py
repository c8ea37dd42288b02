"""What the operator commands compute and draw, from ``Job`` messages read through the public API.

Nothing here talks to a server or a database: every function takes the ``powerbandit.v1.Job``
messages that ``GetJob``/``ListJobs`` return, so the numbers are the same against any replica.

**How energy saved is estimated**: against each GPU model's *default configuration* (the job's
default batch size at the model's maximum power limit), as :mod:`powerbandit.domain.savings`
defines it (the server's ``powerbandit_energy_saved_joules`` metric sums the same figure). This
module converts the messages into domain records (:mod:`powerbandit.proto_conversion`) and
presents the result.

``powerbandit demo``, ``jobs list``, ``jobs show`` and ``report`` all take the saving from
:func:`job_summary` and print it with :func:`saved_text`, next to the baseline it was measured
against (``saved["baseline"]``).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from powerbandit.domain import ProfilePoint, ProfileRecord, RunGroup, called_off_why, energy_time_cost
from powerbandit.domain import savings as domain_savings
from powerbandit.domain.savings import LIMIT_TOLERANCE_W, Baseline, usage_by_gpu
from powerbandit.proto_conversion import (
    PHASE_TO_PB,
    POWER_LIMIT_CONTROL_TO_PB,
    RUN_STATE_TO_PB,
    group_from_pb,
    profile_from_pb,
)
from powerbandit.v1 import optimizer_pb2 as pb

#: A run state's name for people and JSON ("unknown" for a number this client does not know).
RUN_STATE_NAMES = {pb.RUN_STATE_UNSPECIFIED: "unknown", **{v: str(k) for k, v in RUN_STATE_TO_PB.items()}}
#: A phase's name ("" when unspecified).
PHASE_NAMES = {v: str(k) for k, v in PHASE_TO_PB.items()}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhdw])\s*$", re.I)
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


# ------------------------------------------------------------------------------------ formatting
def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30m``, ``12h``, ``7d``, ``2w`` (also ``s``, decimals).

    Raises ``ValueError`` with the accepted forms otherwise.
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(
            f"invalid duration {text!r}: use a number and a unit s, m, h, d or w, e.g. 30m, 12h, 7d, 2w"
        )
    return float(match.group(1)) * _UNIT_S[match.group(2).lower()]


def finite(value: float | None) -> float | None:
    """``value`` when it is a finite number, else ``None`` (JSON has no NaN or infinity)."""
    return value if value is not None and math.isfinite(value) else None


def fmt_energy(joules: float | None) -> str:
    """Energy for people: kJ below 1 kWh, kWh above; ``-`` when unknown."""
    if joules is None or not math.isfinite(joules):
        return "-"
    if abs(joules) >= 3.6e6:
        return f"{joules / 3.6e6:.2f} kWh"
    return f"{joules / 1e3:.1f} kJ"


def fmt_time(seconds: float | None) -> str:
    """A duration for people (s, min, h, d); ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if abs(seconds) >= 2 * 86400:
        return f"{seconds / 86400:.1f} d"
    if abs(seconds) >= 3600:
        return f"{seconds / 3600:.2f} h"
    if abs(seconds) >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def fmt_num(value: float | None, unit: str = "") -> str:
    """Four significant digits and a unit; ``-`` when unknown."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.4g}{unit}"


def fmt_unix(seconds: float) -> str:
    """A timestamp as local ``YYYY-MM-DD HH:MM:SS``; ``-`` for 0."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds > 0 else "-"


def saved_text(saved: dict[str, Any]) -> str:
    """The saving of a :func:`job_summary` as one short text: ``1.23 kWh (+45.6%)``, ``-`` when unknown.

    The one formatting of a saving (demo, ``jobs list``, ``jobs show``, ``report``): the same job
    reads the same everywhere. ``partial`` marks a saving that covers only some GPU models.
    """
    if saved["energy_j"] is None:
        return "-"
    text = fmt_energy(saved["energy_j"])
    if saved["fraction"] is not None:
        text += f" ({saved['fraction']:+.1%})"
    if saved["uncovered"]:
        text += " partial"
    return text


def saving_sentence(summary: dict[str, Any]) -> str:
    """One sentence: energy used, saved against the default configuration, and that baseline."""
    saved = summary["saved"]
    used = f"energy used {fmt_energy(summary['energy_j'])} over {summary['finished_runs']} finished run(s)"
    if saved["energy_j"] is None:
        return f"{used}; saved vs default configuration: - ({saved['reason']})"
    text = f"{used}; saved vs default configuration: {saved_text(saved)} (baseline: {saved['baseline']})"
    return text + (f"; {saved['reason']}" if saved["reason"] else "")


# ------------------------------------------------------------------------------------ estimates
def _finished(run: pb.Run | pb.RunGroup) -> bool:
    """Whether a run (or group) message completed, failed or expired."""
    return run.state in (pb.RUN_STATE_COMPLETED, pb.RUN_STATE_FAILED, pb.RUN_STATE_EXPIRED)


def _succeeded(run: pb.Run | pb.RunGroup) -> bool:
    """Whether a run (or group) message completed and reached the target."""
    return run.state == pb.RUN_STATE_COMPLETED and run.reached_target


def run_groups(job: pb.Job, since_unix_s: float | None = None) -> Sequence[pb.RunGroup]:
    """The job's run log summed per group (GPU model, batch size, limit, state, outcome, window).

    A job read from the server carries them, summed over its whole run log: they are used when the
    server marked ``in_window`` from ``since_unix_s`` (``window_start_unix_s`` of ``ListJobs`` and
    ``GetJob``), or when the window does not matter (``since_unix_s`` None: callers that ignore
    ``in_window``). Otherwise they are summed here from ``job.runs`` (which must then be complete).
    """
    if job.run_groups and since_unix_s in (None, job.run_groups_window_start_unix_s):
        return job.run_groups
    if job.run_groups and not job.runs:
        raise ValueError(
            f"job {job.spec.job_id!r} was read with window_start_unix_s={job.run_groups_window_start_unix_s:g}, "
            f"not {since_unix_s:g}: read it again with that window, or with its runs"
        )
    groups: dict[tuple[Any, ...], pb.RunGroup] = {}
    for r in job.runs:
        in_window = _finished(r) and r.finished_unix_s >= (since_unix_s or 0.0)
        key = (r.gpu_model, r.batch_size, r.power_limit_w, r.state, r.reached_target, in_window)
        g = groups.get(key)
        if g is None:
            g = groups[key] = pb.RunGroup(
                gpu_model=r.gpu_model, batch_size=r.batch_size, power_limit_w=r.power_limit_w, state=r.state,
                reached_target=r.reached_target, in_window=in_window,
            )  # fmt: skip
        g.runs += 1
        g.energy_j += r.energy_j
        g.time_s += r.time_s
        g.epochs += r.epochs
        if r.gpu_count > 0:
            g.max_power_limit_w = max(g.max_power_limit_w, r.max_power_w / r.gpu_count)
        g.last_created_unix_s = max(g.last_created_unix_s, r.created_unix_s)
    return [groups[k] for k in sorted(groups)]


def domain_groups(groups: Iterable[pb.RunGroup]) -> list[RunGroup]:
    """Run group messages as domain records; a group in a state this client does not know is left out."""
    out = []
    for g in groups:
        try:
            out.append(group_from_pb(g))
        except ValueError:
            continue
    return out


def domain_profiles(job: pb.Job) -> list[ProfileRecord]:
    """The job's power profiles as domain records."""
    return [profile_from_pb(p) for p in job.profiles]


def latest_gpu_model(job: pb.Job) -> str | None:
    """The GPU model of the job's most recent run (``None`` without runs)."""
    groups = run_groups(job)
    return max(groups, key=lambda g: g.last_created_unix_s).gpu_model if groups else None


def max_limit_w(job: pb.Job, gpu_model: str) -> float | None:
    """The per-GPU maximum power limit of ``gpu_model`` as the job's runs reported it."""
    return domain_savings.max_power_limit_w(domain_groups(run_groups(job)), gpu_model)


def profile_point(job: pb.Job, gpu_model: str, batch_size: int, limit_w: float) -> ProfilePoint | None:
    """The profile point of ``batch_size`` on ``gpu_model`` at ``limit_w`` (within 0.5 W), if measured."""
    return domain_savings.profile_point(domain_profiles(job), gpu_model, batch_size, limit_w)


def mean_epochs_to_target(job: pb.Job, batch_size: int) -> float | None:
    """Mean epochs of the runs at ``batch_size`` that reached the target (any GPU model)."""
    return domain_savings.mean_epochs_to_target(domain_groups(run_groups(job)), batch_size)


def default_baseline(job: pb.Job, gpu_model: str) -> tuple[Baseline | None, str]:
    """The default configuration's expected successful run on ``gpu_model``, or ``None`` and why.

    From the job's run groups (see :func:`run_groups`) and profiles; the definition is
    :func:`powerbandit.domain.savings.default_baseline`.
    """
    return domain_savings.default_baseline(
        job.spec.default_batch_size, domain_groups(run_groups(job)), domain_profiles(job), gpu_model
    )


def best_expectation(job: pb.Job) -> dict[str, Any]:
    """Expected energy, time and cost of one run at the current best configuration.

    From the best batch size's profile at the best power limit on the most recent GPU model times
    its mean epochs to target; else the mean of successful runs at that configuration. Values are
    ``None`` (with ``detail`` saying why) when neither is measured.
    """
    b, limit = job.best_batch_size, job.best_power_limit_w
    out: dict[str, Any] = {
        "batch_size": b or None,
        "power_limit_w": limit or None,
        "gpu_model": None,
        "energy_j": None,
        "time_s": None,
        "cost": None,
        "source": None,
        "detail": "",
    }
    if not b:
        out["detail"] = "no batch size has reached the target yet"
        return out
    arm = next((a for a in job.arms if a.batch_size == b), None)
    if arm is not None:
        out["cost"] = finite(arm.cost_mean)
    model = latest_gpu_model(job)
    if model is None:
        out["detail"] = "no runs"
        return out
    out["gpu_model"] = model
    groups = domain_groups(run_groups(job))
    epochs = domain_savings.mean_epochs_to_target(groups, b)
    point = domain_savings.profile_point(domain_profiles(job), model, b, limit) if limit else None
    if point is not None and epochs is not None:
        out.update(
            energy_j=point.average_power_w * point.time_per_epoch_s * epochs,
            time_s=point.time_per_epoch_s * epochs,
            source="profile",
            detail=f"profile at {limit:g} W on {model} x {epochs:.3g} mean epochs to target",
        )
        return out
    measured = [
        g
        for g in groups
        if g.gpu_model == model
        and g.batch_size == b
        and domain_savings.is_success(g)
        and (not limit or abs(g.power_limit_w - limit) <= LIMIT_TOLERANCE_W)
    ]
    energy, count = domain_savings.mean_per_run(measured, "energy_j")
    if energy is not None:
        out.update(
            energy_j=energy,
            time_s=domain_savings.mean_per_run(measured, "time_s")[0],
            source="measured",
            detail=f"mean of {count} successful run(s) at this configuration on {model}",
        )
    else:
        out["detail"] = f"batch size {b} at {limit:g} W has no profile or successful run on {model}"
    return out


def job_summary(job: pb.Job, since_unix_s: float = 0.0) -> dict[str, Any]:
    """One job's usage and estimated savings (JSON-ready), from its run groups (:func:`run_groups`).

    ``used`` and ``saved`` cover the runs finished at or after ``since_unix_s``; the baselines
    use the job's whole history. ``saved.energy_j`` is ``None`` with ``saved.reason`` when no GPU
    model has a baseline; when only some have, it covers those (listed in ``saved.uncovered``).
    """
    window = domain_groups(run_groups(job, since_unix_s))
    history = domain_groups(run_groups(job))
    usage = usage_by_gpu(window)
    per_gpu = []
    saved_e = saved_t = base_e = covered_used = 0.0
    covered, uncovered, reasons, methods, baselines = 0, [], [], set(), []
    for s in domain_savings.savings_by_gpu(job.spec.default_batch_size, window, history, domain_profiles(job)):
        g, baseline = s.usage, s.baseline
        per_gpu.append(
            {
                "gpu_model": g.gpu_model,
                "runs": g.runs,
                "successes": g.successes,
                "energy_j": g.energy_j,
                "time_s": g.time_s,
                "baseline": baseline.to_dict() if baseline else None,
                "saved_energy_j": s.saved_energy_j,
                "saved_time_s": s.saved_time_s,
                "reason": s.reason or None,
            }
        )
        if baseline is not None:
            saved_e += s.saved_energy_j  # type: ignore[operator]
            saved_t += s.saved_time_s  # type: ignore[operator]
            base_e += g.successes * baseline.energy_j
            covered_used += g.energy_j
            covered += 1
            methods.add(baseline.source)
            baselines.append(baseline.detail)
        else:
            uncovered.append(g.gpu_model)
            reasons.append(s.reason)
    saved: dict[str, Any] = {
        "energy_j": None,
        "time_s": None,
        "fraction": None,
        "baseline_energy_j": None,
        "method": None,
        "baseline": None,
        "uncovered": uncovered,
        "reason": None,
    }
    if covered:
        saved.update(
            energy_j=saved_e,
            time_s=saved_t,
            fraction=(saved_e / base_e) if base_e > 0 else None,
            baseline_energy_j=base_e,
            method="+".join(sorted(methods)),
            baseline="; ".join(baselines),
            reason=("not counted: " + "; ".join(reasons)) if reasons else None,
        )
    elif per_gpu:
        saved["reason"] = "; ".join(reasons)
    else:
        saved["reason"] = "no finished runs" + (" in the window" if since_unix_s > 0 else "")
    return {
        "job_id": job.spec.job_id,
        "completed_runs": job.completed_runs,
        "in_flight_runs": job.in_flight_runs,
        "failed_runs": job.failed_runs,
        "finished_runs": sum(u.runs for u in usage.values()),
        "successes": sum(u.successes for u in usage.values()),
        "energy_j": sum(u.energy_j for u in usage.values()),  # summed in the order the groups came
        "time_s": sum(u.time_s for u in usage.values()),
        "best": best_expectation(job),
        "saved": saved,
        "per_gpu": per_gpu,
    }


def cluster_report(jobs: Sequence[pb.Job], since_unix_s: float) -> dict[str, Any]:
    """Cluster totals since ``since_unix_s``: energy, time, estimated saved; per GPU model and job."""
    summaries = [job_summary(j, since_unix_s) for j in jobs]
    by_gpu: dict[str, dict[str, Any]] = {}
    for s in summaries:
        for row in s["per_gpu"]:
            g = by_gpu.setdefault(
                row["gpu_model"],
                {"gpu_model": row["gpu_model"], "runs": 0, "successes": 0, "energy_j": 0.0, "time_s": 0.0,
                 "saved_energy_j": None, "uncovered_jobs": []},
            )  # fmt: skip
            g["runs"] += row["runs"]
            g["successes"] += row["successes"]
            g["energy_j"] += row["energy_j"]
            g["time_s"] += row["time_s"]
            if row["saved_energy_j"] is None:
                g["uncovered_jobs"].append(s["job_id"])
            else:
                g["saved_energy_j"] = (g["saved_energy_j"] or 0.0) + row["saved_energy_j"]
    active = [s for s in summaries if s["finished_runs"]]
    saved_values = [s["saved"]["energy_j"] for s in active if s["saved"]["energy_j"] is not None]
    return {
        "since_unix_s": since_unix_s,
        "until_unix_s": time.time(),
        "total": {
            "jobs": len(active),
            "runs": sum(s["finished_runs"] for s in active),
            "successes": sum(s["successes"] for s in active),
            "energy_j": sum(s["energy_j"] for s in active),
            "time_s": sum(s["time_s"] for s in active),
            "saved_energy_j": sum(saved_values) if saved_values else None,
            "jobs_without_estimate": [s["job_id"] for s in active if s["saved"]["energy_j"] is None],
            "jobs_partially_estimated": [
                s["job_id"] for s in active if s["saved"]["energy_j"] is not None and s["saved"]["uncovered"]
            ],
        },
        "per_gpu": [by_gpu[m] for m in sorted(by_gpu)],
        "per_job": [
            {
                "job_id": s["job_id"],
                "runs": s["finished_runs"],
                "successes": s["successes"],
                "energy_j": s["energy_j"],
                "time_s": s["time_s"],
                "saved_energy_j": s["saved"]["energy_j"],
                "saved_fraction": s["saved"]["fraction"],
                "partial": bool(s["saved"]["energy_j"] is not None and s["saved"]["uncovered"]),
                "reason": s["saved"]["reason"],
            }
            for s in active
        ],
    }


def job_detail(job: pb.Job, recent: int = 20) -> dict[str, Any]:
    """Everything ``jobs show`` prints, JSON-ready: spec, arms, profiles, recent runs, outlook."""
    s = job.spec
    arms = []
    for a in job.arms:
        finished = [r for r in job.runs if r.batch_size == a.batch_size and _finished(r)]
        arms.append(
            {
                "batch_size": a.batch_size,
                "status": a.status,
                "observations": a.observations,
                "successes": a.successes,
                "observed_costs": [r.cost for r in finished if r.state == pb.RUN_STATE_COMPLETED],
                "cost_mean": finite(a.cost_mean),
                "cost_low": finite(a.cost_low),
                "cost_high": finite(a.cost_high),
                "epochs_mean": finite(a.epochs_mean),
                "is_best": a.batch_size == job.best_batch_size,
                "is_default": a.batch_size == s.default_batch_size,
            }
        )
    return {
        "spec": {
            "job_id": s.job_id,
            "batch_sizes": list(s.batch_sizes),
            "default_batch_size": s.default_batch_size,
            "target_metric": s.target_metric,
            "metric_direction": (
                "lower_is_better"
                if s.metric_direction == pb.METRIC_DIRECTION_LOWER_IS_BETTER
                else "higher_is_better"
            ),
            "max_epochs": s.max_epochs,
            "eta": s.eta,
            "beta": s.beta,
            "policy": s.policy,
            "window": s.window,
            "seed": s.seed,
            "max_slowdown": s.max_slowdown if s.HasField("max_slowdown") else None,
        },
        "created_unix_s": job.created_unix_s,
        "completed_runs": job.completed_runs,
        "in_flight_runs": job.in_flight_runs,
        "failed_runs": job.failed_runs,
        "best_batch_size": job.best_batch_size or None,
        "best_power_limit_w": job.best_power_limit_w or None,
        "max_cost": finite(job.max_cost),
        "outlook": job.outlook,
        "arms": arms,
        "profiles": [
            {
                "gpu_model": p.gpu_model,
                "batch_size": p.batch_size,
                "points": [
                    {
                        "power_limit_w": pt.power_limit_w,
                        "average_power_w": pt.average_power_w,
                        "time_per_epoch_s": pt.time_per_epoch_s,
                        "energy_per_epoch_j": pt.average_power_w * pt.time_per_epoch_s,
                    }
                    for pt in sorted(p.points, key=lambda pt: pt.power_limit_w)
                ],
            }
            for p in sorted(job.profiles, key=lambda p: (p.gpu_model, p.batch_size))
        ],
        "recent_runs": [run_dict(r) for r in (job.runs[-recent:] if recent > 0 else job.runs)],
        "summary": job_summary(job),
    }


#: How a run's limit was applied: "nvml" (directly), "agent" (node agent), "none" (not in force),
#: "simulated" (replay or simulated GPU); "" = not reported (older SDK, run in flight).
POWER_LIMIT_CONTROL_NAMES = {v: str(k) for k, v in POWER_LIMIT_CONTROL_TO_PB.items()}


def run_outcome(run: pb.Run) -> str:
    """A run's outcome in words."""
    if run.state == pb.RUN_STATE_IN_FLIGHT:
        return "in flight"
    if run.state == pb.RUN_STATE_COMPLETED:
        if run.reached_target:
            return "reached target"
        why = called_off_why(run.reason)
        if why is not None:
            return f"called off: {why}"
        return f"stopped: {run.reason}" if run.reason else "did not reach target"
    name = RUN_STATE_NAMES.get(run.state, "unknown")
    return f"{name}: {run.reason}" if run.reason else name


def run_dict(run: pb.Run) -> dict[str, Any]:
    """A run, JSON-ready."""
    return {
        "run_id": run.run_id,
        "state": RUN_STATE_NAMES.get(run.state, "unknown"),
        "phase": PHASE_NAMES.get(run.phase, ""),
        "batch_size": run.batch_size,
        "power_limit_w": run.power_limit_w,
        "gpu_model": run.gpu_model,
        "gpu_count": run.gpu_count,
        "energy_j": run.energy_j,
        "time_s": run.time_s,
        "epochs": run.epochs,
        "cost": run.cost,
        "reached_target": run.reached_target,
        "profiled": run.profiled,
        "power_limit_control": POWER_LIMIT_CONTROL_NAMES.get(run.power_limit_control, ""),
        "created_unix_s": run.created_unix_s,
        "finished_unix_s": run.finished_unix_s,
        "outcome": run_outcome(run),
    }


# ------------------------------------------------------------------------------------ plots
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cost_scale(values: Iterable[float]) -> tuple[float, str]:
    top = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    for factor, prefix in ((1e9, "GJ"), (1e6, "MJ"), (1e3, "kJ")):
        if top >= factor:
            return factor, prefix
    return 1.0, "J"


def plot_job(job: pb.Job, out: str, *, figsize: tuple[float, float] = (12.0, 4.5), dpi: int = 100) -> None:
    """Write a PNG: cost per run with the best-so-far line, and each batch size's posterior cost.

    The image is ``figsize * dpi`` pixels. Cost is ``eta*energy + (1-eta)*MAX_POWER*time`` in
    joules (energy-equivalent). Each run's colour is its batch size (the same colour in both
    panels), its marker its outcome; legends sit below the axes, never over a point.
    """
    plt = _pyplot()
    fig = job_figure(job, figsize=figsize, dpi=dpi)
    fig.savefig(out, dpi=dpi, format="png")
    plt.close(fig)


def job_figure(job: pb.Job, *, figsize: tuple[float, float] = (12.0, 4.5), dpi: int = 100) -> Any:
    """The matplotlib figure :func:`plot_job` writes (the caller closes it)."""
    plt = _pyplot()
    with plt.rc_context({"font.size": max(5.0, min(10.0, figsize[0] * 0.85))}):  # small figures, small text
        return _job_figure(plt, job, figsize, dpi)


def _job_figure(plt: Any, job: pb.Job, figsize: tuple[float, float], dpi: int) -> Any:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    scale = (plt.rcParams["font.size"] / 10.0) ** 2  # marker area follows the text size
    finished = [r for r in job.runs if _finished(r)]
    arms = list(job.arms)
    sizes = sorted({a.batch_size for a in arms} | {r.batch_size for r in finished})
    colour = {b: f"C{i % 10}" for i, b in enumerate(sizes)}
    factor, unit = _cost_scale(
        [r.cost for r in finished] + [v for a in arms for v in (a.cost_mean, a.cost_high)]
    )
    fig, (left, right) = plt.subplots(
        1, 2, figsize=figsize, dpi=dpi, layout="constrained", gridspec_kw={"width_ratios": [3, 2]}
    )
    fig.suptitle(
        f"{job.spec.job_id}  (eta {job.spec.eta:g}, default batch size {job.spec.default_batch_size})"
    )

    kinds = (
        ("reached target", lambda r: _succeeded(r), "o"),
        ("stopped / missed target", lambda r: r.state == pb.RUN_STATE_COMPLETED and not r.reached_target, "X"),
        ("failed / expired", lambda r: r.state != pb.RUN_STATE_COMPLETED, "v"),
    )  # fmt: skip
    handles: list[Any] = []
    for label, keep, marker in kinds:
        points = [(i, r.cost / factor, colour[r.batch_size]) for i, r in enumerate(finished, start=1) if keep(r)]
        if points:
            xs, ys, cs = zip(*points, strict=True)
            left.scatter(xs, ys, marker=marker, c=list(cs), s=36 * scale, zorder=3, edgecolors="black",
                         linewidths=0.4)
            handles.append(Line2D([], [], marker=marker, linestyle="", color="gray", markeredgecolor="black",
                                  markeredgewidth=0.4, label=label))  # fmt: skip
    best_x, best_y, best = [], [], math.inf
    for i, r in enumerate(finished, start=1):
        if _succeeded(r):
            best = min(best, r.cost)
        if math.isfinite(best):
            best_x.append(i)
            best_y.append(best / factor)
    if best_x:
        (line,) = left.step(best_x, best_y, where="post", color="black", lw=1.2, label="best so far (reached target)")
        handles.append(line)
    if finished:
        model = finished[-1].gpu_model
        baseline, _ = default_baseline(job, model)
        if baseline is not None:
            p_max = max_limit_w(job, model) or 0.0
            count = finished[-1].gpu_count or 1
            cost = energy_time_cost(job.spec.eta, baseline.energy_j, baseline.time_s, p_max * count)
            handles.append(left.axhline(cost / factor, color="tab:red", linestyle="--",
                                        label=f"default config, estimated ({baseline.source})"))  # fmt: skip
    ran = [b for b in sizes if any(r.batch_size == b for r in finished)]
    handles += [Line2D([], [], marker="s", linestyle="", color=colour[b], label=f"batch size {b}") for b in ran]
    left.set_xlabel("run (in order of suggestion, finished runs only)")
    left.set_ylabel(f"cost per run ({unit}, energy-equivalent)")
    left.set_title("Cost per run (colour: batch size)")
    left.grid(alpha=0.3)
    left.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True, min_n_ticks=1))
    if finished:
        left.set_xlim(0.5, len(finished) + 0.5)
    else:
        left.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=left.transAxes)

    xs = list(range(len(arms)))
    known = [i for i, a in enumerate(arms) if math.isfinite(a.cost_mean)]
    if known:
        means = [arms[i].cost_mean / factor for i in known]
        low = [
            max(0.0, (arms[i].cost_mean - arms[i].cost_low) / factor)
            if math.isfinite(arms[i].cost_low)
            else 0.0
            for i in known
        ]
        high = [
            max(0.0, (arms[i].cost_high - arms[i].cost_mean) / factor)
            if math.isfinite(arms[i].cost_high)
            else 0.0
            for i in known
        ]
        handles.append(right.errorbar([xs[i] for i in known], means, yerr=[low, high], fmt="none", ecolor="black",
                                      capsize=4, label="posterior: 90% credible interval"))  # fmt: skip
        right.scatter(
            [xs[i] for i in known], means, c=[colour[arms[i].batch_size] for i in known], s=60 * scale, zorder=3,
            edgecolors=["black" if arms[i].batch_size == job.best_batch_size else "none" for i in known],
            linewidths=2,
        )  # fmt: skip
        handles.append(Line2D([], [], marker="o", linestyle="", color="gray", markeredgecolor="black",
                              markeredgewidth=2, label="posterior mean (black ring: best)"))  # fmt: skip
    # batch sizes without an estimate say why in their tick label (one per tick: nothing overlaps)
    labels = []
    for a in arms:
        text = f"{a.batch_size}*" if a.batch_size == job.spec.default_batch_size else str(a.batch_size)
        labels.append(text if math.isfinite(a.cost_mean) else f"{text}\n({a.status})")
    crowded = len(arms) > 0 and figsize[0] * 0.4 / len(arms) < 0.9  # inches per tick label
    right.set_xticks(xs, labels, fontsize="x-small" if crowded else "small", rotation=90 if crowded else 0)
    right.set_xlim(-0.5, len(arms) - 0.5)
    right.set_xlabel("batch size (* = default)")
    right.set_ylabel(f"cost of one run ({unit}, energy-equivalent)")
    right.set_title("Posterior cost per batch size")
    right.grid(alpha=0.3)
    if not known:
        right.text(0.5, 0.5, "no batch size has an estimate yet", ha="center", va="center", transform=right.transAxes)
    if handles:  # one legend below both panels: it never covers a point
        fig.legend(handles=handles, loc="outside lower center", fontsize="small", frameon=False,
                   ncol=max(1, min(len(handles), int(figsize[0] / 2.4))))  # fmt: skip
    return fig


def _symlog_linthresh(values: Sequence[float]) -> float:
    """The linear range of a symlog energy axis (kWh): the decade of the smallest non-zero value."""
    small = min((abs(v) for v in values if v and math.isfinite(v)), default=1.0)
    return 10.0 ** math.floor(math.log10(small))


def plot_report(
    report: dict[str, Any], out: str, *, figsize: tuple[float, float] = (12.0, 5.0), dpi: int = 100
) -> None:
    """Write a PNG of a :func:`cluster_report`: energy used and estimated saved, per job and per GPU model.

    The energy axis is symmetric-logarithmic (a 0.4 kWh job stays visible next to a 74 kWh one; a
    negative saving, exploration that cost more than it saved so far, reads to the left of zero),
    and each bar carries its value.
    """
    plt = _pyplot()
    fig = report_figure(report, figsize=figsize, dpi=dpi)
    fig.savefig(out, dpi=dpi, format="png")
    plt.close(fig)


def report_figure(report: dict[str, Any], *, figsize: tuple[float, float] = (12.0, 5.0), dpi: int = 100) -> Any:
    """The matplotlib figure :func:`plot_report` writes (the caller closes it)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=figsize, dpi=dpi, layout="constrained")
    for ax, rows, key, title in (
        (axes[0], report["per_job"], "job_id", "Per job"),
        (axes[1], report["per_gpu"], "gpu_model", "Per GPU model"),
    ):
        names = [r[key] for r in rows]
        used = [r["energy_j"] / 3.6e6 for r in rows]
        saved = [(r["saved_energy_j"] or 0.0) / 3.6e6 for r in rows]
        ys = list(range(len(rows)))
        ax.barh([y - 0.2 for y in ys], used, height=0.4, color="tab:blue", label="energy used")
        ax.barh([y + 0.2 for y in ys], saved, height=0.4, color="tab:green",
                label="estimated saved vs default config")  # fmt: skip
        for y, r, u, s in zip(ys, rows, used, saved, strict=True):
            ax.annotate(fmt_energy(r["energy_j"]), (u, y - 0.2), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize="x-small")  # fmt: skip
            text = "no estimate" if r["saved_energy_j"] is None else fmt_energy(r["saved_energy_j"])
            ax.annotate(text, (max(s, 0.0), y + 0.2), xytext=(3, 0), textcoords="offset points", va="center",
                        fontsize="x-small", color="tab:gray" if r["saved_energy_j"] is None else "black")  # fmt: skip
        ax.set_yticks(ys, names)
        ax.invert_yaxis()
        if rows:
            ax.set_xscale("symlog", linthresh=_symlog_linthresh(used + saved))
            top = max([abs(v) for v in used + saved] + [1e-9])
            ax.set_xlim(min([0.0] + [v * 3 for v in saved]), top * 8)  # room for the value labels
        ax.set_xlabel("energy (kWh, symmetric log scale)")
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="x")
        if rows:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize="small", ncol=2, frameon=False)
        else:
            ax.text(
                0.5, 0.5, "no finished runs in the window", ha="center", va="center", transform=ax.transAxes
            )
    since = fmt_unix(report["since_unix_s"]) if report["since_unix_s"] > 0 else "the beginning"
    fig.suptitle(f"powerbandit: energy since {since}")
    return fig
