"""Issue 17's report tables: every setting it names, measured through ``python -m simulations``.

    python benchmarks/policy_tables.py [--policies zeus powerbandit] [--jobs 2] [--json OUT.json]
                                       [--baseline PREV.json] [--quick] [--trace-dir DIR]

Runs one simulator process per (setting, scenario) -- canonical jobs (eta 0.5, beta 2, seeds 1-10),
eta 0.2 and 0.8, seeds 11-40, beta 1.5 and 3, the alternative target sets of
:mod:`simulations.targets`, each with ``--scenario trace`` and ``--scenario leave-one-out``, and the
slowdown budgets 1.05, 1.1 and 1.25 (policies default, oracle, powerbandit) -- at most ``--jobs`` at
a time, reads each one's ``summary.json`` and prints markdown tables of the short-horizon figures
(mean over jobs and seeds, aggregated by :func:`simulations.report.short_horizon_rows`, the same
code as the simulator's own table). Progress goes to stderr, the tables to stdout.

``--baseline PREV.json`` (a file an earlier ``--json`` wrote) adds each figure's difference and lists
every (setting, policy, K) whose regret got worse by more than 0.05 points; the exit status is then
1 if any did. ``--quick`` runs 3 seeds per setting instead of 10 (or 30) for fast iteration; compare
a quick run only with a quick baseline (settings whose seeds differ are not compared).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simulations.bounds import ReferenceRow, reference_table
from simulations.report import SHORT_HORIZONS, short_horizon_rows
from simulations.targets import ALTERNATIVE_TARGET_STEPS, alternative_target_sets
from simulations.traces import CANONICAL, TraceSet

REPO_ROOT = Path(__file__).resolve().parent.parent
SCENARIOS: tuple[str, ...] = ("trace", "leave-one-out")
BUDGETS: tuple[float, ...] = (1.05, 1.1, 1.25)
BUDGET_POLICIES: tuple[str, ...] = ("default", "oracle", "powerbandit")
WORSE_THRESHOLD_POINTS = 0.05
"""A regret figure more than this many percentage points above the baseline's counts as worse."""
FIGURES: tuple[tuple[str, str], ...] = (
    *((f"first {k}", f"regret_first_{k}_pct") for k in SHORT_HORIZONS),
    ("all", "regret_pct"),
)
"""(column label, short_horizon_rows key) of the regret figures compared with a baseline."""
JSON_FORMAT = 1


@dataclass(frozen=True)
class Setting:
    """One simulator invocation: a named setting under one scenario."""

    name: str
    scenario: str
    seeds: str
    policies: tuple[str, ...]
    options: tuple[str, ...] = ()
    workloads: tuple[str, ...] = ()
    budget: float | None = None

    @property
    def key(self) -> str:
        """``"<name> / <scenario>"``, the setting's key in the JSON file and in the baseline comparison."""
        return f"{self.name} / {self.scenario}"

    def command(self, out_dir: Path, trace_dir: str | None) -> list[str]:
        """The ``python -m simulations`` command line of this setting."""
        cmd = [sys.executable, "-m", "simulations", "--seeds", self.seeds, "--policy", *self.policies]
        cmd += ["--scenario", self.scenario, "--out", str(out_dir), "--no-plots", "--quiet", "--jobs", "1"]
        cmd += list(self.options)
        if self.workloads:
            cmd += ["--workload", *self.workloads]
        if trace_dir is not None:
            cmd += ["--trace-dir", trace_dir]
        return cmd


@dataclass
class Measured:
    """What one setting's simulations gave: per policy, the aggregated figures."""

    setting: Setting
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    wall_s: float = 0.0


def seed_range(first: int, count: int) -> str:
    """``"first-last"`` of ``count`` seeds from ``first``."""
    return f"{first}-{first + count - 1}"


def seed_count(seeds: str) -> int:
    """How many seeds ``"first-last"`` names."""
    first, _, last = seeds.partition("-")
    return int(last or first) - int(first) + 1


def build_settings(
    policies: Sequence[str], target_sets: Mapping[str, Mapping[str, float]], quick: bool
) -> list[Setting]:
    """Every setting of issue 17, each under both scenarios; the budgets last."""
    seeds = seed_range(1, 3 if quick else 10)
    more_seeds = seed_range(11, 3 if quick else 30)
    named: list[tuple[str, str, tuple[str, ...], tuple[str, ...]]] = [
        ("canonical", seeds, (), ()),
        ("eta 0.2", seeds, ("--eta", "0.2"), ()),
        ("eta 0.8", seeds, ("--eta", "0.8"), ()),
        (f"seeds {more_seeds}", more_seeds, (), ()),
        ("beta 1.5", seeds, ("--beta", "1.5"), ()),
        ("beta 3", seeds, ("--beta", "3"), ()),
    ]
    for set_name, targets in target_sets.items():
        overrides = tuple(f"{w}={t:g}" for w, t in targets.items())
        named.append((f"targets {set_name}", seeds, ("--target", *overrides), tuple(targets)))
    settings = [
        Setting(name, scenario, run_seeds, tuple(policies), options, workloads)
        for scenario in SCENARIOS
        for name, run_seeds, options, workloads in named
    ]
    settings += [
        Setting(
            f"max_slowdown {b:g}", scenario, seeds, BUDGET_POLICIES, ("--max-slowdown", f"{b:g}"), budget=b
        )
        for scenario in SCENARIOS
        for b in BUDGETS
    ]
    return settings


def finite_or_none(value: Any) -> Any:
    """NaN and infinities as ``None`` (JSON has no NaN)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def measure(setting: Setting, trace_dir: str | None, timeout_s: float) -> Measured:
    """Run ``setting`` through ``python -m simulations`` and aggregate its ``summary.json``."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="policy-tables-") as tmp:
        out_dir = Path(tmp) / "out"
        cmd = setting.command(out_dir, trace_dir)
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{setting.key}: `{' '.join(cmd[1:])}` exited {proc.returncode}:\n{proc.stderr.strip()[-2000:]}"
            )
        summaries = json.loads((out_dir / "summary.json").read_text())
    rows = {
        row["policy"]: {k: finite_or_none(v) for k, v in row.items() if k != "policy"}
        for row in short_horizon_rows(summaries, setting.policies)
    }
    return Measured(setting, rows, time.perf_counter() - start)


def measure_all(
    settings: Sequence[Setting], jobs: int, trace_dir: str | None, timeout_s: float,
    report: Callable[[str], None],
) -> list[Measured]:  # fmt: skip
    """Every setting, ``jobs`` simulator processes at a time, results in ``settings`` order."""
    results: dict[Setting, Measured] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        # the longest first (budgets, then the most seeds), so that the last process to finish is a short one
        longest_first = sorted(settings, key=lambda s: (s.budget is None, -seed_count(s.seeds)))
        futures: dict[Future[Measured], Setting] = {
            pool.submit(measure, s, trace_dir, timeout_s): s for s in longest_first
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                if error is not None:
                    for other in pending:
                        other.cancel()
                    raise error
                measured = future.result()
                results[futures[future]] = measured
                report(f"[{len(results)}/{len(settings)}] {measured.setting.key}: {measured.wall_s:.1f} s")
    return [results[s] for s in settings]


def fmt(value: float | None, digits: int = 2) -> str:
    """A figure, or ``-`` when there is none."""
    return "-" if value is None else f"{value:.{digits}f}"


def with_diff(value: float | None, before: float | None) -> str:
    """``value``, followed by its difference from ``before`` when there is one."""
    if before is None or value is None:
        return fmt(value)
    return f"{value:.2f} ({value - before:+.2f})"


def recurrences_cell(row: Mapping[str, Any]) -> str:
    """``"23.4 (1 never)"``: the mean recurrences to <10 % and how many simulations never got there."""
    text = fmt(row.get("recurrences_to_regret_10pct"), 1)
    never = row.get("never_under_10pct") or 0
    return f"{text} ({never} never)" if never else text


def baseline_row(baseline: Mapping[str, Any] | None, m: Measured, policy: str) -> Mapping[str, Any] | None:
    """The baseline's figures of ``policy`` in ``m``'s setting, if it measured the same seeds."""
    if baseline is None:
        return None
    before = baseline.get("settings", {}).get(m.setting.key)
    if before is None or before.get("seeds") != m.setting.seeds:
        return None
    return before.get("policies", {}).get(policy)


def regret_table(
    measured: Sequence[Measured], baseline: Mapping[str, Any] | None, budgets: bool
) -> list[str]:
    """Markdown rows: per setting and policy, the regret of the first K recurrences and more."""
    head = ["setting", "policy", *(f"{label} (%)" for label, _ in FIGURES)]
    head += ["mean time / default", "recurrences over budget (%)"] if budgets else ["recurrences to <10%"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in measured:
        label = (
            m.setting.name
            if m.setting.seeds in m.setting.name
            else f"{m.setting.name} (seeds {m.setting.seeds})"
        )
        for policy, row in m.rows.items():
            before = baseline_row(baseline, m, policy)
            cells = [label, policy]
            cells += [
                with_diff(row.get(key), None if before is None else before.get(key)) for _, key in FIGURES
            ]
            if budgets:
                cells += [fmt(row.get("slowdown_mean"), 3), fmt(row.get("budget_broken_pct"), 1)]
            else:
                cells.append(recurrences_cell(row))
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def worse_than_baseline(
    measured: Sequence[Measured], baseline: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """(every figure worse by more than the threshold, every setting that could not be compared)."""
    worse: list[str] = []
    missing: list[str] = []
    for m in measured:
        for policy, row in m.rows.items():
            before = baseline_row(baseline, m, policy)
            if before is None:
                missing.append(f"{m.setting.key} {policy}")
                continue
            for label, key in FIGURES:
                now, then = row.get(key), before.get(key)
                if now is not None and then is not None and now - then > WORSE_THRESHOLD_POINTS:
                    worse.append(
                        f"{m.setting.key}, {policy}, {label}: {then:.2f} -> {now:.2f} ({now - then:+.2f})"
                    )
    return worse, missing


def target_lines(target_sets: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Markdown: the alternative targets the rule chose, per set and workload."""
    workloads = list(CANONICAL)
    lines = [
        "Alternative targets (rule: `simulations.targets`; a target qualifies when the default batch size "
        "reaches it in every trace seed on every GPU; `easier-N`/`harder-N`: the N-th qualifying target "
        "easier/harder than the canonical one; `-`: the workload has none and is left out of the set):",
        "",
        "| set | " + " | ".join(workloads) + " |",
        "|" + "---|" * (len(workloads) + 1),
        "| canonical | " + " | ".join(f"{CANONICAL[w].target_metric:g}" for w in workloads) + " |",
    ]
    for name, targets in target_sets.items():
        lines.append(
            f"| {name} | " + " | ".join(f"{targets[w]:g}" if w in targets else "-" for w in workloads) + " |"
        )
    return lines


def reference_lines(references: Sequence[ReferenceRow]) -> list[str]:
    """The reference points (policies that know the oracle) as a markdown table."""
    lines = [
        "",
        "## Reference points: what knowing the oracle is worth",
        "",
        "Expected regret (%) of the canonical jobs' first K recurrences for a policy that knows the best "
        "configuration (`simulations/bounds.py`): the default run then the oracle; a walk through every "
        "batch size from the default to the best, then the oracle; the same plus one trial past the best.",
        "",
        "| reference | " + " | ".join(f"first {k} (%)" for k in SHORT_HORIZONS) + " |",
        "|---|" + "---|" * len(SHORT_HORIZONS),
    ]
    for row in references:
        lines.append(f"| {row.reference} | " + " | ".join(fmt(row.regret_pct[k]) for k in SHORT_HORIZONS) + " |")
    return lines


def markdown(
    measured: Sequence[Measured], target_sets: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Any] | None, wall_s: float, references: Sequence[ReferenceRow] = (),
) -> str:  # fmt: skip
    """Every table, as one markdown text."""
    lines = ["# Issue 17 tables", ""]
    lines.append(
        "Every setting runs the 24 canonical jobs (6 workloads x 4 GPU models) at eta 0.5, beta 2 and the "
        "canonical targets unless its name says otherwise; a target set runs only the workloads it changes."
    )
    lines.append("")
    lines += target_lines(target_sets)
    if references:
        lines += reference_lines(references)
    titles = {
        "trace": "without the cross-job prior (`--scenario trace`)",
        "leave-one-out": "with the cross-job prior (`--scenario leave-one-out`)",
    }
    note = " Differences from the baseline in brackets." if baseline is not None else ""
    for budgets in (False, True):
        for scenario in SCENARIOS:
            chosen = [
                m
                for m in measured
                if m.setting.scenario == scenario and (m.setting.budget is not None) == budgets
            ]
            if not chosen:
                continue
            what = "Slowdown budgets" if budgets else "Regret of the first K recurrences"
            lines += ["", f"## {what}, {titles[scenario]}", ""]
            lines.append(
                (
                    "Cost = energy; regret against the cheapest configuration expected to fit the budget. "
                    if budgets
                    else ""
                )
                + "Mean over jobs and seeds, in %."
                + note
            )
            lines.append("")
            lines += regret_table(chosen, baseline, budgets)
    if baseline is not None:
        worse, missing = worse_than_baseline(measured, baseline)
        lines += ["", f"## Worse than the baseline by more than {WORSE_THRESHOLD_POINTS} points", ""]
        lines += [f"- {w}" for w in worse] or ["none"]
        if missing:
            lines += ["", "Not compared (not in the baseline, or other seeds): " + "; ".join(missing)]
    sims = sum(row.get("simulations") or 0 for m in measured for row in m.rows.values())
    lines += ["", f"{len(measured)} settings, {sims} simulations, {wall_s:.0f} s wall."]
    return "\n".join(lines) + "\n"


def git_commit() -> str | None:
    """The checkout's ``HEAD`` commit, if there is one."""
    proc = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def uncommitted_changes() -> bool | None:
    """Whether the checkout has changes ``HEAD`` does not hold (``None`` outside a git checkout)."""
    proc = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    return bool(proc.stdout.strip()) if proc.returncode == 0 else None


def as_json(
    measured: Sequence[Measured], target_sets: Mapping[str, Mapping[str, float]], quick: bool, wall_s: float
) -> dict[str, Any]:
    """Every figure, keyed by setting (``"<name> / <scenario>"``) and policy."""
    return {
        "format": JSON_FORMAT,
        "commit": git_commit(),
        "uncommitted_changes": uncommitted_changes(),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "wall_s": round(wall_s, 1),
        "target_sets": {name: dict(t) for name, t in target_sets.items()},
        "target_steps": dict(ALTERNATIVE_TARGET_STEPS),
        "settings": {
            m.setting.key: {
                "name": m.setting.name,
                "scenario": m.setting.scenario,
                "seeds": m.setting.seeds,
                "options": list(m.setting.options),
                "workloads": list(m.setting.workloads),
                "max_slowdown": m.setting.budget,
                "wall_s": round(m.wall_s, 1),
                "policies": m.rows,
            }
            for m in measured
        },
    }


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not >= 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", nargs="+", default=["zeus", "powerbandit"],
                        help="policies of the non-budget settings (default: zeus powerbandit)")  # fmt: skip
    parser.add_argument(
        "--jobs", type=positive_int, default=2, help="simulator processes at a time (default 2)"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="write every figure here")
    parser.add_argument("--baseline", type=Path, default=None, metavar="PREV.json",
                        help="an earlier --json file: show differences, exit 1 if a figure got worse")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="3 seeds per setting instead of 10 (30)")
    parser.add_argument("--trace-dir", default=None, help="trace directory (default: the shipped traces)")
    parser.add_argument(
        "--timeout-s", type=float, default=900.0, help="limit per simulator process (default 900)"
    )
    args = parser.parse_args(argv)

    baseline = None
    if args.baseline is not None:
        try:
            baseline = json.loads(args.baseline.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"--baseline {args.baseline}: {exc}")
        if baseline.get("format") != JSON_FORMAT:
            parser.error(f"--baseline {args.baseline}: not a file written by --json (format {JSON_FORMAT})")

    start = time.perf_counter()
    target_sets = alternative_target_sets(TraceSet(args.trace_dir))
    for name, targets in target_sets.items():
        chosen = ", ".join(f"{w}={t:g}" for w, t in targets.items())
        print(f"targets {name}: {chosen}", file=sys.stderr)
    settings = build_settings(args.policies, target_sets, args.quick)

    def report(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        measured = measure_all(settings, args.jobs, args.trace_dir, args.timeout_s, report)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"policy_tables: {exc}", file=sys.stderr)
        return 2
    wall_s = time.perf_counter() - start
    references = reference_table(TraceSet(args.trace_dir).jobs(), SHORT_HORIZONS)
    sys.stdout.write(markdown(measured, target_sets, baseline, wall_s, references))
    if args.json is not None:
        figures = as_json(measured, target_sets, args.quick, wall_s)
        figures["references"] = {row.reference: {str(k): v for k, v in row.regret_pct.items()} for row in references}
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"{len(settings)} settings in {wall_s:.1f} s wall (--jobs {args.jobs})", file=sys.stderr)
    if baseline is not None:
        worse, _ = worse_than_baseline(measured, baseline)
        if worse:
            print(f"{len(worse)} figures worse than {args.baseline} by more than {WORSE_THRESHOLD_POINTS} points",
                  file=sys.stderr)  # fmt: skip
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
