"""The ``powerbandit`` command: ``serve``, ``demo``, ``simulate``, ``jobs`` and ``db``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys

from powerbandit.logs import configure_logging

ENV_PREFIX = "POWERBANDIT_"


def _env(name: str, default: str) -> str:
    """A setting from ``POWERBANDIT_<NAME>``; flags given on the command line win over it."""
    return os.environ.get(ENV_PREFIX + name, default)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the optimizer server",
        description="Run the gRPC optimizer server. Settings: flag > POWERBANDIT_* environment variable > default.",
    )
    p.add_argument("--db", default=_env("DB", "sqlite:///powerbandit.db"),
                   help="sqlite:///PATH (relative) or sqlite:////ABS/PATH, or postgresql://... "
                        "[POWERBANDIT_DB, default sqlite:///powerbandit.db]")  # fmt: skip
    p.add_argument("--listen", default=_env("LISTEN", "127.0.0.1:50051"),
                   help="host:port to listen on [POWERBANDIT_LISTEN, default 127.0.0.1:50051]")  # fmt: skip
    p.add_argument("--lease-s", type=float, default=float(_env("LEASE_S", "300")),
                   help="seconds a run may go without a heartbeat before it expires [POWERBANDIT_LEASE_S, 300]")  # fmt: skip
    p.add_argument("--grace-s", type=float, default=float(_env("GRACE_S", "10")),
                   help="seconds in-flight RPCs get to finish on SIGTERM [POWERBANDIT_GRACE_S, 10]")  # fmt: skip
    p.add_argument("--sweep-interval-s", type=float, default=float(_env("SWEEP_INTERVAL_S", "30")),
                   help="how often lapsed leases are expired [POWERBANDIT_SWEEP_INTERVAL_S, 30]")  # fmt: skip


def _serve(args: argparse.Namespace) -> int:
    from optimizer_server.errors import OptimizerError
    from optimizer_server.server import ServerConfig, serve_forever

    config = ServerConfig(
        db_url=args.db,
        listen=args.listen,
        lease_s=args.lease_s,
        sweep_interval_s=args.sweep_interval_s,
        grace_s=args.grace_s,
    )
    try:
        asyncio.run(serve_forever(config))
    except (OptimizerError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_jobs(sub: argparse._SubParsersAction) -> None:
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


def _jobs(args: argparse.Namespace) -> int:
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


def _add_db(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="database maintenance")
    db = p.add_subparsers(dest="db_command", required=True)
    up = db.add_parser("upgrade", help="apply pending schema migrations")
    up.add_argument(
        "--db", default=_env("DB", "sqlite:///powerbandit.db"), help="database URL [POWERBANDIT_DB]"
    )


def _db(args: argparse.Namespace) -> int:
    from optimizer_server.store.base import open_store

    open_store(args.db).close()  # opening a store applies pending migrations
    print(f"{args.db}: schema up to date")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full command-line parser."""
    from powerbandit import demo

    parser = argparse.ArgumentParser(
        prog="powerbandit",
        description="Cut the GPU energy of recurring training jobs: optimizer server, demo, simulator, operator view.",
    )
    parser.add_argument(
        "--log-level", default=_env("LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING [POWERBANDIT_LOG_LEVEL]"
    )
    parser.add_argument("--log-format", default=_env("LOG_FORMAT", "text"), choices=["text", "json"],
                        help="log line format [POWERBANDIT_LOG_FORMAT, default text]")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    d = sub.add_parser(
        "demo", help="replay a recurring job through a real server and SDK", description=demo.__doc__
    )
    demo.add_arguments(d)
    sim = sub.add_parser(
        "simulate", help="trace-driven policy simulation", description="Trace-driven simulation."
    )
    from simulations import cli as sim_cli

    sim_cli.add_arguments(sim)
    _add_jobs(sub)
    _add_db(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``powerbandit`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format, quiet_default=args.command in ("demo", "simulate"))
    if args.command == "serve":
        code = _serve(args)
    elif args.command == "demo":
        from powerbandit import demo

        code = demo.run(args)
    elif args.command == "simulate":
        from simulations import cli as sim_cli

        code = sim_cli.run(args)
    elif args.command == "jobs":
        code = _jobs(args)
    else:
        code = _db(args)
    logging.shutdown()
    sys.exit(code)
