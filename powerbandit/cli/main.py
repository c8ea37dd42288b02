"""The ``powerbandit`` command: ``serve``, ``demo``, ``simulate``, ``jobs`` and ``db``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys

from powerbandit import __version__
from powerbandit.cli import health, operator_cli
from powerbandit.cli.argtypes import (
    listen_address,
    log_level,
    non_negative_float,
    port_or_off,
    positive_float,
    positive_int,
)
from powerbandit.cli.errors import run_command
from powerbandit.cli.extras import is_missing_server_extra, missing_server_extra_message
from powerbandit.cli.logs import configure_logging

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
    p.add_argument("--listen", default=_env("LISTEN", "127.0.0.1:50051"), type=listen_address,
                   help="host:port to listen on [POWERBANDIT_LISTEN, default 127.0.0.1:50051]")  # fmt: skip
    p.add_argument("--lease-s", type=positive_float, default=_env("LEASE_S", "300"),
                   help="seconds a run may go without a heartbeat before it expires [POWERBANDIT_LEASE_S, 300]")  # fmt: skip
    p.add_argument("--grace-s", type=non_negative_float, default=_env("GRACE_S", "10"),
                   help="seconds in-flight RPCs get to finish on SIGTERM [POWERBANDIT_GRACE_S, 10]")  # fmt: skip
    p.add_argument("--auth-tokens-file", default=_env("AUTH_TOKENS_FILE", "") or None,
                   help="file of bearer tokens and their job-id prefixes [POWERBANDIT_AUTH_TOKENS_FILE; tokens may "
                        "also come from POWERBANDIT_AUTH_TOKENS, never from the command line]")  # fmt: skip
    p.add_argument("--allow-unauthenticated-remote", action="store_true",
                   help="listen beyond loopback without tokens (not recommended)")  # fmt: skip
    p.add_argument("--tls-cert", default=_env("TLS_CERT", "") or None, help="PEM certificate [POWERBANDIT_TLS_CERT]")
    p.add_argument("--tls-key", default=_env("TLS_KEY", "") or None, help="PEM private key [POWERBANDIT_TLS_KEY]")
    p.add_argument("--metrics-port", type=port_or_off, default=_env("METRICS_PORT", "-1"),
                   help="serve Prometheus metrics on this port, -1 = off [POWERBANDIT_METRICS_PORT, -1]")  # fmt: skip
    p.add_argument("--metrics-host", default=_env("METRICS_HOST", "127.0.0.1"),
                   help="address of the metrics endpoint [POWERBANDIT_METRICS_HOST, 127.0.0.1]")  # fmt: skip
    p.add_argument("--sweep-interval-s", type=positive_float, default=_env("SWEEP_INTERVAL_S", "30"),
                   help="how often lapsed leases are expired [POWERBANDIT_SWEEP_INTERVAL_S, 30]")  # fmt: skip
    p.add_argument("--max-runs-in-flight", type=positive_int, default=_env("MAX_RUNS_IN_FLIGHT", "1000"),
                   help="runs one job may have in flight; Suggest beyond it answers RESOURCE_EXHAUSTED "
                        "[POWERBANDIT_MAX_RUNS_IN_FLIGHT, 1000]")  # fmt: skip
    p.add_argument("--db-timeout-s", type=positive_float, default=_env("DB_TIMEOUT_S", "3"),
                   help="PostgreSQL: seconds a call waits for a database connection before answering "
                        "UNAVAILABLE [POWERBANDIT_DB_TIMEOUT_S, 3]")  # fmt: skip


def _serve(args: argparse.Namespace) -> int:
    from optimizer_server.server import ServerConfig, serve_forever

    config = ServerConfig(
        db_url=args.db,
        listen=args.listen,
        lease_s=args.lease_s,
        sweep_interval_s=args.sweep_interval_s,
        grace_s=args.grace_s,
        auth_tokens_file=args.auth_tokens_file,
        allow_unauthenticated_remote=args.allow_unauthenticated_remote,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        metrics_host=args.metrics_host,
        max_runs_in_flight=args.max_runs_in_flight,
        db_timeout_s=args.db_timeout_s,
    )
    asyncio.run(serve_forever(config))  # a bad address, port in use or database: one line, from main()
    return 0


def _add_db(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="database maintenance")
    db = p.add_subparsers(dest="db_command", required=True)
    up = db.add_parser(
        "upgrade",
        help="apply pending schema migrations",
        description="Apply the pending schema migrations of a database (SQLite or PostgreSQL) and exit; "
        "`powerbandit serve` does the same at start. Back up the database first (docs/operations.md); a "
        "database newer than this version is refused, never changed.",
    )
    up.add_argument(
        "--db", default=_env("DB", "sqlite:///powerbandit.db"), help="database URL [POWERBANDIT_DB]"
    )


def _db(args: argparse.Namespace) -> int:
    from optimizer_server.server import open_store_checked

    open_store_checked(args.db, create=False).close()  # opening a store applies pending migrations
    print(f"{args.db}: schema up to date")
    return 0


_RST_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc):`~?([^`]+)`")
_RST_LITERAL = re.compile(r"``([^`]+)``")


def _plain_text(parser: argparse.ArgumentParser) -> None:
    """Drop reStructuredText markup from the description of ``parser`` and of every parser under it.

    Module docstrings make good descriptions, but ``--help`` is plain text: double backticks and
    roles such as :class: are dropped, their text kept.
    """
    if parser.description:
        parser.description = _RST_LITERAL.sub(r"\1", _RST_ROLE.sub(r"\1", parser.description))
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _plain_text(sub)


LIGHT_COMMANDS = frozenset({"agent", "run"})
"""Commands whose process builds only its own parser: the node agent is a daemon on every GPU node,
and the demo's and simulator's flags would load numpy and the simulator into it (about 20 MiB);
``run`` wraps training where only the slim SDK is installed."""


def requested_command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (after the global options), if any."""
    words = iter(argv)
    for word in words:
        if word in ("--log-level", "--log-format"):
            next(words, None)  # the option's value
        elif not word.startswith("-"):
            return word
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full command-line parser (``demo`` and ``simulate`` take their flags from the server extra).

    ``only``: one of :data:`LIGHT_COMMANDS`, whose parser alone is built.
    """
    parser = argparse.ArgumentParser(
        prog="powerbandit",
        description="Cut the GPU energy of recurring training jobs: optimizer server, demo, simulator, operator view.",
    )
    parser.add_argument("--version", action="version", version=f"powerbandit {__version__}")
    parser.add_argument(
        "--log-level", default=_env("LOG_LEVEL", "INFO"), type=log_level,
        help="DEBUG, INFO, WARNING or ERROR [POWERBANDIT_LOG_LEVEL, default INFO]"
    )
    parser.add_argument("--log-format", default=_env("LOG_FORMAT", "text"), choices=["text", "json"],
                        help="log line format [POWERBANDIT_LOG_FORMAT, default text]")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    if only == "agent":
        from powerbandit.cli import agent as agent_cli

        agent_cli.add_arguments(sub)
        _plain_text(parser)
        return parser
    if only == "run":
        from powerbandit.cli import run_wrapper

        run_wrapper.add_arguments(sub)
        _plain_text(parser)
        return parser
    _add_serve(sub)
    d = sub.add_parser("demo", help="replay a recurring job through a real server and SDK")
    sim = sub.add_parser(
        "simulate", help="trace-driven policy simulation", description="Trace-driven simulation."
    )
    try:
        from powerbandit.cli import demo
        from simulations import cli as sim_cli
    except ModuleNotFoundError as exc:  # the SDK-only install: the commands say what to install
        if not is_missing_server_extra(exc):
            raise
        for p in (d, sim):
            p.set_defaults(server_extra_missing=True)  # main() then says which extra to install
    else:
        d.description = demo.DESCRIPTION
        demo.add_arguments(d)
        sim_cli.add_arguments(sim)
    operator_cli.add_arguments(sub)
    _add_db(sub)
    h = sub.add_parser("health", help="check a server's gRPC health (exit 0 = SERVING)", description=health.__doc__)
    health.add_arguments(h)
    from powerbandit.cli import agent as agent_cli

    agent_cli.add_arguments(sub)
    from powerbandit.cli.dashboard import cli as dashboard_cli

    dashboard_cli.add_arguments(sub)
    from powerbandit.cli import run_wrapper

    run_wrapper.add_arguments(sub)
    _plain_text(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``powerbandit`` console script."""
    command = requested_command(sys.argv[1:] if argv is None else argv)
    health.quiet_grpc_core_logging(command)  # before anything imports grpc: `health` prints its own line only
    parser = build_parser(only=command if command in LIGHT_COMMANDS else None)
    args, unknown = parser.parse_known_args(argv)  # argument types need no extra (powerbandit.addresses)
    if unknown and not getattr(args, "server_extra_missing", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    configure_logging(args.log_level, args.log_format, quiet_default=args.command in ("demo", "simulate"))
    try:
        code = run_command(lambda: _dispatch(args))  # a user's mistake: one `error:` line, no traceback
    except ModuleNotFoundError as exc:
        if not is_missing_server_extra(exc):
            raise
        print(missing_server_extra_message(args.command, exc), file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.exit(code)


def _dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; returns its exit code."""
    if args.command == "serve":
        return _serve(args)
    if args.command == "demo":
        from powerbandit.cli import demo

        return demo.run(args)
    if args.command == "simulate":
        from simulations import cli as sim_cli

        return sim_cli.run(args)
    if args.command == "health":
        return health.run(args)
    if args.command == "agent":
        from powerbandit.cli import agent as agent_cli

        return agent_cli.run(args)
    if args.command in operator_cli.COMMANDS:
        return operator_cli.run(args)
    if args.command == "run":
        from powerbandit.cli import run_wrapper

        return run_wrapper.run(args)
    if args.command == "dashboard":
        from powerbandit.cli.dashboard import cli as dashboard_cli

        return dashboard_cli.run(args)
    return _db(args)
