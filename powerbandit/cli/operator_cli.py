"""Operator commands: ``powerbandit jobs ...`` and ``powerbandit report`` (through the public gRPC API).

Everything is read with ``GetJob``/``ListJobs``, so the commands work against any server replica.
The numbers (usage, estimated savings, expected cost of the best configuration) are computed in
:mod:`powerbandit.cli.operator_view`, whose docstring says how savings are estimated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from powerbandit.cli import operator_view as view
from powerbandit.cli.argtypes import non_negative_float, non_negative_int, server_address
from powerbandit.cli.errors import UserError
from powerbandit.cli.extras import require_server_extra

COMMANDS = ("jobs", "report")

SAVINGS_NOTE = (
    "saved = (runs that reached the target) x (expected energy of one successful run at the default "
    "batch size and maximum power limit: measured runs there, else its measured profile x its mean "
    "epochs to target) - (energy of every finished run); '-' when the default was never measured"
)
SORT_KEYS = ("id", "runs", "saved", "energy", "flight")


def _env(name: str, default: str) -> str:
    return os.environ.get("POWERBANDIT_" + name, default)


def _duration(text: str) -> float:
    try:
        seconds = view.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"the duration {text!r} is not positive; use e.g. 30m, 12h, 7d")
    return seconds


def _add_server(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # The flag is accepted both before and after the subcommand; below the top level it has no
    # default (SUPPRESS), so it does not overwrite a value given before the subcommand.
    parser.add_argument(
        "--server",
        default=_env("SERVER", "127.0.0.1:50051") if top else argparse.SUPPRESS,
        type=server_address,
        help="server address host:port [POWERBANDIT_SERVER, default 127.0.0.1:50051]",
    )


def add_arguments(sub: argparse._SubParsersAction) -> None:
    """Add the ``jobs`` (list, show, plot, delete, rebuild) and ``report`` commands to the top-level parser."""
    p = sub.add_parser(
        "jobs",
        help="inspect jobs on a server",
        description="Inspect the jobs a server holds (read through the public API: works against any replica).",
    )
    _add_server(p, top=True)
    jobs = p.add_subparsers(dest="jobs_command", required=True)

    ls = jobs.add_parser(
        "list",
        help="one line per job: runs, best configuration, expected energy/time, energy saved",
        description="One line per job: finished and in-flight runs, the current best configuration with its "
        "expected energy and time per run, and the energy saved so far against the default configuration. "
        + SAVINGS_NOTE
        + ".",
    )
    _add_server(ls, top=False)
    ls.add_argument("--prefix", default="", help="only job ids starting with this")
    ls.add_argument("--sort", choices=SORT_KEYS, default="id",
                    help="order: id (ascending), runs, saved, energy, flight (descending); default id")  # fmt: skip
    ls.add_argument("--json", action="store_true", help="machine-readable output (a JSON list)")

    show = jobs.add_parser(
        "show",
        help="everything about one job",
        description="A job's spec, every batch size with its observations and posterior (cost mean and 90% "
        "credible interval, epochs to target), power profiles per GPU model, recent runs, energy saved, "
        "and what the next suggestion will be and why.",
    )
    _add_server(show, top=False)
    show.add_argument("job_id", help="the job id")
    show.add_argument("--runs", type=non_negative_int, default=15, help="recent runs to show (0: all; default 15)")
    show.add_argument("--json", action="store_true", help="machine-readable output")

    plot = jobs.add_parser(
        "plot",
        help="PNG of a job's cost per run and posterior per batch size (needs the server extra)",
        description="Write a PNG: cost per run with the best-so-far line (left) and each batch size's "
        "posterior cost with its 90% credible interval (right). Needs matplotlib, from the server extra: "
        "pip install 'powerbandit[server]'.",
    )
    _add_server(plot, top=False)
    plot.add_argument("job_id", help="the job id")
    plot.add_argument("--out", required=True, help="PNG file to write")
    plot.add_argument("--width-in", type=float, default=12.0, help="figure width in inches (default 12)")
    plot.add_argument("--height-in", type=float, default=4.5, help="figure height in inches (default 4.5)")
    plot.add_argument("--dpi", type=int, default=100, help="pixels per inch (default 100)")

    delete = jobs.add_parser(
        "delete",
        help="delete a job and its history (asks first)",
        description="Delete a job and its whole history (runs, profiles, learned state); this cannot be "
        "undone. Asks for confirmation on the terminal; --yes skips the question (needed without a terminal).",
    )
    _add_server(delete, top=False)
    delete.add_argument("job_id", help="the job id")
    delete.add_argument("--yes", "-y", action="store_true", help="delete without asking")

    rebuild = jobs.add_parser(
        "rebuild",
        help="recompute a job's policy state from its run log (needs --db and the server extra)",
        description="Recompute a job's policy state from its run log, directly on the database.",
    )
    rebuild.add_argument("job_id", help="the job id")
    rebuild.add_argument("--db", required=True, help="the server's database URL (an existing database)")

    export = jobs.add_parser(
        "export",
        help="one row per run as CSV or JSON (for pandas and spreadsheets)",
        description="Every run of every job (or of the jobs with --prefix), one row each: job, run, GPU model, "
        "batch size, power limit, energy (J and kWh), time, cost, state and outcome. With --carbon-intensity, "
        "also co2e_g_estimate = energy (kWh) x that intensity: an estimate, labelled as one.",
    )
    _add_server(export, top=False)
    export.add_argument("--prefix", default="", help="only job ids starting with this")
    export.add_argument("--format", choices=("csv", "json"), default="csv",
                        help="csv (a header line, then one line per run) or json (a list of objects); default csv")  # fmt: skip
    export.add_argument("--carbon-intensity", type=non_negative_float, metavar="G_PER_KWH",
                        default=_env("CARBON_INTENSITY", "") or None,
                        help="grid carbon intensity in gCO2e/kWh: adds estimated emissions per run "
                             "[POWERBANDIT_CARBON_INTENSITY]")  # fmt: skip
    export.add_argument("--out", help="file to write (default: standard output)")

    r = sub.add_parser(
        "report",
        help="cluster energy report: used and estimated saved, per GPU model and per job",
        description="Cluster totals over the runs finished in a time window: energy and time used and "
        "energy saved against each job's default configuration, per GPU model and per job. "
        + SAVINGS_NOTE
        + ".",
    )
    _add_server(r, top=True)
    r.add_argument("--since", type=_duration, default=_duration("7d"),
                   help="window ending now: 30m, 12h, 7d, 2w ... (default 7d)")  # fmt: skip
    r.add_argument("--prefix", default="", help="only job ids starting with this")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    r.add_argument("--png", help="also write a bar chart to this PNG file (needs the server extra: matplotlib)")


# ------------------------------------------------------------------------------------ helpers
def _connect(args: argparse.Namespace) -> Any:
    """The SDK client for ``--server`` (the one place a future auth token would be added)."""
    from client_sdk.client import OptimizerClient

    return OptimizerClient(args.server, timeout_s=30.0)


def _dump(data: Any) -> None:
    print(json.dumps(data, indent=2, allow_nan=False, default=str))


def _all_jobs(client: Any, prefix: str, since_unix_s: float = 0.0) -> list[Any]:
    """Every job with its run groups (no runs: ``ListJobs`` pages, never a ``GetJob`` per job).

    The groups mark the runs finished at or after ``since_unix_s`` (0: every finished run).
    """
    return client.list_jobs(prefix, window_start_unix_s=since_unix_s)  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------ commands
def _list(client: Any, args: argparse.Namespace) -> int:
    summaries = [view.job_summary(j) for j in _all_jobs(client, args.prefix)]

    def key(s: dict[str, Any]) -> Any:
        if args.sort == "runs":
            return (-s["finished_runs"], s["job_id"])
        if args.sort == "flight":
            return (-s["in_flight_runs"], s["job_id"])
        if args.sort == "energy":
            return (-s["energy_j"], s["job_id"])
        if args.sort == "saved":
            value = s["saved"]["energy_j"]
            return (value is None, -(value or 0.0), s["job_id"])
        return s["job_id"]

    summaries.sort(key=key)
    if args.json:
        _dump(summaries)
        return 0
    if not summaries:
        print("no jobs" + (f" with prefix {args.prefix!r}" if args.prefix else ""))
        return 0
    width = max(20, *(len(s["job_id"]) for s in summaries))
    print(f"{'job':<{width}} {'runs':>5} {'flight':>6} {'best b':>6} {'limit W':>7} {'E/run':>10} {'t/run':>9} "
          f"{'energy used':>12} {'saved vs default':>18}")  # fmt: skip
    notes = []
    for s in summaries:
        best = s["best"]
        print(f"{s['job_id']:<{width}} {s['finished_runs']:>5} {s['in_flight_runs']:>6} "
              f"{best['batch_size'] or '-':>6} {view.fmt_num(best['power_limit_w']):>7} "
              f"{view.fmt_energy(best['energy_j']):>10} {view.fmt_time(best['time_s']):>9} "
              f"{view.fmt_energy(s['energy_j']):>12} {view.saved_text(s['saved']):>18}")  # fmt: skip
        if s["saved"]["reason"]:
            notes.append(f"  {s['job_id']}: {'saved' if s['saved']['energy_j'] is None else 'partial'}: "
                         f"{s['saved']['reason']}")  # fmt: skip
    print()
    print(
        "E/run, t/run: expected energy and time of one run at the best configuration (profile x mean epochs)."
    )
    print(f"How savings are estimated: {SAVINGS_NOTE}.")
    if notes:
        print("No estimate / partial:")
        print("\n".join(notes))
    return 0


def _show(client: Any, args: argparse.Namespace) -> int:
    job = client.get_job(args.job_id)
    detail = view.job_detail(job, recent=args.runs)
    if args.json:
        _dump(detail)
        return 0
    s = detail["spec"]
    print(f"job {s['job_id']} (registered {view.fmt_unix(detail['created_unix_s'])})")
    trade_off = (
        f"max_slowdown {s['max_slowdown']:g} (energy within {100 * (s['max_slowdown'] - 1):.3g} % of the default's time)"
        if s.get("max_slowdown")
        else f"eta {s['eta']:g}"
    )
    print(f"  policy {s['policy']}, {trade_off}, beta {s['beta']:g}, target {s['target_metric']:g} "
          f"({s['metric_direction'].replace('_', ' ')}), max_epochs {s['max_epochs']}, window {s['window'] or 'all'}, "
          f"default batch size {s['default_batch_size']}, batch sizes {s['batch_sizes']}")  # fmt: skip
    print(f"runs: {detail['completed_runs']} completed, {detail['in_flight_runs']} in flight, "
          f"{detail['failed_runs']} failed or expired")  # fmt: skip
    summary = detail["summary"]
    best = summary["best"]
    print(f"best: batch size {best['batch_size'] or '-'}, power limit {view.fmt_num(best['power_limit_w'], ' W')}; "
          f"expected per run {view.fmt_energy(best['energy_j'])}, {view.fmt_time(best['time_s'])}, "
          f"cost {view.fmt_num(best['cost'])}" + (f" ({best['detail']})" if best["detail"] else ""))  # fmt: skip
    print(view.saving_sentence(summary))
    print(f"early-stop bound: {view.fmt_num(detail['max_cost'])}")
    print(f"outlook: {detail['outlook']}")
    print()
    print(
        "batch sizes (cost = eta*energy + (1-eta)*MAX_POWER*time, J-equivalent; posterior 90% credible interval):"
    )
    print(f"{'batch':>7} {'status':>10} {'obs':>4} {'ok':>4} {'observed cost min/mean':>24} "
          f"{'posterior mean':>14} {'90% interval':>22} {'epochs':>7}")  # fmt: skip
    for a in detail["arms"]:
        costs = a["observed_costs"]
        observed = f"{min(costs):.4g} / {sum(costs) / len(costs):.4g}" if costs else "-"
        interval = f"[{view.fmt_num(a['cost_low'])}, {view.fmt_num(a['cost_high'])}]"
        mark = ("*" if a["is_best"] else "") + ("d" if a["is_default"] else "")
        print(f"{a['batch_size']:>5}{mark:<2} {a['status']:>10} {a['observations']:>4} {a['successes']:>4} "
              f"{observed:>24} {view.fmt_num(a['cost_mean']):>14} {interval:>22} {view.fmt_num(a['epochs_mean']):>7}")  # fmt: skip
    print("  (* best, d default)")
    print()
    if detail["profiles"]:
        print(
            "power profiles (per GPU model and batch size: limit W -> average power W, epoch time, epoch energy):"
        )
        for p in detail["profiles"]:
            points = ", ".join(
                f"{pt['power_limit_w']:g} W: {pt['average_power_w']:.0f} W {pt['time_per_epoch_s']:.1f} s "
                f"{view.fmt_energy(pt['energy_per_epoch_j'])}"
                for pt in p["points"]
            )
            print(f"  {p['gpu_model']} b{p['batch_size']}: {points}")
    else:
        print("power profiles: none measured yet")
    print()
    runs = detail["recent_runs"]
    total = detail["completed_runs"] + detail["in_flight_runs"] + detail["failed_runs"]
    print(f"recent runs ({len(runs)} of {total}, oldest first):")
    if runs:
        print(f"  {'finished':<19} {'phase':<8} {'gpu':<16} {'batch':>5} {'limit W':>7} {'set by':<9} {'epochs':>6} "
              f"{'energy':>10} {'time':>9} {'cost':>10}  outcome")  # fmt: skip
    for r in runs:
        print(f"  {view.fmt_unix(r['finished_unix_s']):<19} {r['phase']:<8} {r['gpu_model'][:16]:<16} "
              f"{r['batch_size']:>5} {r['power_limit_w']:>7g} {r['power_limit_control'] or '-':<9} "
              f"{r['epochs']:>6.3g} {view.fmt_energy(r['energy_j']):>10} "
              f"{view.fmt_time(r['time_s']):>9} {r['cost']:>10.4g}  {r['outcome']}")  # fmt: skip
    return 0


def _plot(client: Any, args: argparse.Namespace) -> int:
    job = client.get_job(args.job_id)
    view.plot_job(job, args.out, figsize=(args.width_in, args.height_in), dpi=args.dpi)
    print(f"wrote {args.out} ({round(args.width_in * args.dpi)}x{round(args.height_in * args.dpi)} px)")
    return 0


def _report(client: Any, args: argparse.Namespace) -> int:
    since = time.time() - args.since
    report = view.cluster_report(_all_jobs(client, args.prefix, since), since)
    report["window_s"] = args.since
    if args.png:
        view.plot_report(report, args.png)
    if args.json:
        _dump(report)
        return 0
    total = report["total"]
    print(f"powerbandit report: runs finished since {view.fmt_unix(since)} ({view.fmt_time(args.since)}), "
          f"server {args.server}")  # fmt: skip
    saved = total["saved_energy_j"]
    print(f"total: {total['jobs']} jobs, {total['runs']} runs ({total['successes']} reached target), "
          f"energy {view.fmt_energy(total['energy_j'])}, GPU time {view.fmt_time(total['time_s'])}, "
          f"estimated saved {view.fmt_energy(saved)}")  # fmt: skip
    if total["jobs_without_estimate"]:
        print(f"  (no savings estimate for: {', '.join(total['jobs_without_estimate'])})")
    if total["jobs_partially_estimated"]:
        print(f"  (estimate covers only some GPU models for: {', '.join(total['jobs_partially_estimated'])})")
    for title, rows, key in (
        ("per GPU model", report["per_gpu"], "gpu_model"),
        ("per job", report["per_job"], "job_id"),
    ):
        print()
        width = max([len(title)] + [len(r[key]) for r in rows])
        print(f"{title:<{width}} {'runs':>5} {'ok':>4} {'energy':>11} {'time':>9} {'saved vs default':>18}")
        for r in rows:
            saved_text = view.fmt_energy(r["saved_energy_j"])
            if key == "job_id" and r["saved_fraction"] is not None:
                saved_text += f" ({r['saved_fraction']:+.1%})"
            partial = r["partial"] if key == "job_id" else bool(r["uncovered_jobs"])
            if partial and r["saved_energy_j"] is not None:
                saved_text += " partial"
            print(f"{r[key]:<{width}} {r['runs']:>5} {r['successes']:>4} {view.fmt_energy(r['energy_j']):>11} "
                  f"{view.fmt_time(r['time_s']):>9} {saved_text:>18}")  # fmt: skip
    print()
    print(f"How savings are estimated: {SAVINGS_NOTE}.")
    if args.png:
        print(f"wrote {args.png}")
    return 0


def _export(client: Any, args: argparse.Namespace) -> int:
    from powerbandit.cli import export

    jobs = (client.get_job(j.spec.job_id) for j in client.list_jobs(args.prefix))  # one job's runs at a time
    rows = export.run_rows(jobs, args.carbon_intensity)
    carbon = args.carbon_intensity is not None
    if args.out:
        with open(args.out, "w", encoding="utf-8", newline="") as out:
            count = export.write(rows, out, args.format, carbon=carbon)
        print(f"wrote {count} run(s) to {args.out}", file=sys.stderr)
    else:
        export.write(rows, sys.stdout, args.format, carbon=carbon)
    if carbon:
        print(f"note: {export.carbon_note(args.carbon_intensity)}", file=sys.stderr)
    return 0


def _delete(client: Any, args: argparse.Namespace) -> int:
    job = client.get_job(args.job_id, max_runs=1)  # NOT_FOUND before asking anything
    if not args.yes:
        runs = job.completed_runs + job.failed_runs + job.in_flight_runs
        question = f"delete job {args.job_id} and its history ({runs} runs)? This cannot be undone. [y/N] "
        if not _confirm(question):
            print(f"kept {args.job_id}", file=sys.stderr)
            return 1
    client.delete_job(args.job_id)
    print(f"deleted {args.job_id}")
    return 0


def _confirm(question: str) -> bool:
    """Ask on the terminal; without one (a script, a pipe) refuse and say to pass --yes."""
    if sys.stdin is None or not sys.stdin.isatty():
        raise UserError("jobs delete asks for confirmation and there is no terminal to ask on: pass --yes")
    print(question, end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _rebuild(args: argparse.Namespace) -> int:
    from optimizer_server.server import open_store_checked
    from optimizer_server.service import OptimizerService

    store = open_store_checked(args.db, create=False)  # a mistyped --db must not create a database
    try:
        record = OptimizerService(store).rebuild_job(args.job_id)
    finally:
        store.close()
    print(f"rebuilt {args.job_id} from its run log: {json.dumps(record.policy_state)[:200]}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run an operator command (``jobs ...`` or ``report``); returns the exit code.

    Errors (server unreachable or refusing, a file that cannot be written) reach the caller, whose
    :func:`powerbandit.cli.errors.run_command` prints them as one line.
    """
    # what the server extra brings is checked first: a slim install says so before contacting the server
    if args.command == "jobs" and args.jobs_command == "plot":
        require_server_extra("jobs plot", "matplotlib")
    if args.command == "report" and args.png:
        require_server_extra("report --png", "matplotlib")
    if args.command == "jobs" and args.jobs_command == "rebuild":
        require_server_extra("jobs rebuild", "optimizer_server.server")
        return _rebuild(args)
    client = _connect(args)
    try:
        if args.command == "report":
            return _report(client, args)
        if args.jobs_command == "list":
            return _list(client, args)
        if args.jobs_command == "show":
            return _show(client, args)
        if args.jobs_command == "plot":
            return _plot(client, args)
        if args.jobs_command == "export":
            return _export(client, args)
        return _delete(client, args)
    finally:
        client.close()
