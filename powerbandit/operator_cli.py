"""Operator commands: ``powerbandit jobs ...`` (read through the public gRPC API)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

COMMANDS = ("jobs",)


def _env(name: str, default: str) -> str:
    return os.environ.get("POWERBANDIT_" + name, default)


def _fmt(value: float, unit: str = "") -> str:
    return "-" if not math.isfinite(value) else f"{value:.4g}{unit}"


def add_arguments(sub: argparse._SubParsersAction) -> None:
    """Add the ``jobs`` command (and its subcommands) to the top-level parser."""
    p = sub.add_parser(
        "jobs", help="inspect jobs on a server", description="Inspect the jobs a server holds."
    )
    p.add_argument("--server", default=_env("SERVER", "127.0.0.1:50051"),
                   help="server address [POWERBANDIT_SERVER, default 127.0.0.1:50051]")  # fmt: skip
    jobs = p.add_subparsers(dest="jobs_command", required=True)
    ls = jobs.add_parser("list", help="one line per job")
    ls.add_argument("--prefix", default="", help="only job ids starting with this")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    show = jobs.add_parser("show", help="everything about one job")
    show.add_argument("job_id")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    delete = jobs.add_parser("delete", help="delete a job and its history")
    delete.add_argument("job_id")
    rebuild = jobs.add_parser("rebuild", help="recompute a job's policy state from its run log (needs --db)")
    rebuild.add_argument("job_id")
    rebuild.add_argument("--db", required=True, help="the server's database URL")


def _fmt(value: float, unit: str = "") -> str:
    return "-" if not math.isfinite(value) else f"{value:.4g}{unit}"


def run(args: argparse.Namespace) -> int:
    """Run an operator command; returns the exit code."""
    from google.protobuf import json_format

    from client_sdk.client import OptimizerClient, OptimizerClientError

    if args.jobs_command == "rebuild":
        from optimizer_server.service import OptimizerService
        from optimizer_server.store.base import open_store

        store = open_store(args.db)
        try:
            record = OptimizerService(store).rebuild_job(args.job_id)
        finally:
            store.close()
        print(f"rebuilt {args.job_id} from its run log: {json.dumps(record.policy_state)[:200]}")
        return 0
    client = OptimizerClient(args.server)
    try:
        if args.jobs_command == "list":
            listed = client.list_jobs(args.prefix)
            if args.json:
                print(json.dumps([json_format.MessageToDict(j) for j in listed], indent=2))
                return 0
            print(f"{'job':<40} {'done':>5} {'flight':>6} {'failed':>6} {'best batch':>10} {'limit W':>8}")
            for j in listed:
                print(f"{j.spec.job_id:<40} {j.completed_runs:>5} {j.in_flight_runs:>6} {j.failed_runs:>6} "
                      f"{j.best_batch_size or '-':>10} {j.best_power_limit_w or '-':>8}")  # fmt: skip
        elif args.jobs_command == "show":
            job = client.get_job(args.job_id)
            if args.json:
                print(json.dumps(json_format.MessageToDict(job), indent=2))
                return 0
            s = job.spec
            print(f"job {s.job_id}: policy {s.policy}, eta {s.eta:g}, beta {s.beta:g}, target {s.target_metric:g}, "
                  f"max_epochs {s.max_epochs}, default batch size {s.default_batch_size}")  # fmt: skip
            print(
                f"runs: {job.completed_runs} completed, {job.in_flight_runs} in flight, {job.failed_runs} failed"
            )
            print(
                f"best: batch size {job.best_batch_size or '-'}, power limit {job.best_power_limit_w or '-'} W"
            )
            print(f"early-stop bound: {_fmt(job.max_cost)}; {job.outlook}")
            print(
                f"{'batch':>6} {'status':>10} {'obs':>4} {'ok':>4} {'cost mean':>10} {'90% interval':>22} {'epochs':>7}"
            )
            for a in job.arms:
                interval = f"[{_fmt(a.cost_low)}, {_fmt(a.cost_high)}]"
                print(f"{a.batch_size:>6} {a.status:>10} {a.observations:>4} {a.successes:>4} "
                      f"{_fmt(a.cost_mean):>10} {interval:>22} {_fmt(a.epochs_mean):>7}")  # fmt: skip
        elif args.jobs_command == "delete":
            client.delete_job(args.job_id)
            print(f"deleted {args.job_id}")
    except OptimizerClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0
