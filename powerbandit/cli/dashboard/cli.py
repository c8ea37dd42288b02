"""``powerbandit dashboard``: serve the read-only web dashboard of a server's jobs."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
import sys
import threading
from types import FrameType
from typing import Any

import grpc

from powerbandit.addresses import ListenAddressError, parse_listen
from powerbandit.cli.argtypes import listen_address, positive_float, server_address
from powerbandit.cli.errors import UserError
from powerbandit.v1 import optimizer_pb2 as pb

log = logging.getLogger("powerbandit.dashboard")

DESCRIPTION = (
    "A read-only web dashboard: energy used and saved over time per GPU model, every job with its runs, "
    "best configuration, expected energy and time per run and saving; per job, cost per run, the posterior "
    "of each batch size, power profiles, runs in flight and the next suggestion. It reads through the "
    "public API (any replica) with the operator's token from POWERBANDIT_TOKEN. Beyond loopback it needs a "
    "viewer token (POWERBANDIT_DASHBOARD_TOKEN; browsers send it as the password of HTTP Basic "
    "authentication) and should have TLS (--tls-cert/--tls-key)."
)


def _env(name: str, default: str) -> str:
    return os.environ.get("POWERBANDIT_" + name, default)


def add_arguments(sub: argparse._SubParsersAction) -> None:
    """Add the ``dashboard`` command to the top-level parser."""
    p = sub.add_parser("dashboard", help="serve a read-only web dashboard of a server's jobs",
                       description=DESCRIPTION)  # fmt: skip
    p.add_argument("--server", default=_env("SERVER", "127.0.0.1:50051"), type=server_address,
                   help="optimizer server host:port [POWERBANDIT_SERVER, default 127.0.0.1:50051]")  # fmt: skip
    p.add_argument("--server-tls", action="store_true",
                   help="reach the server over TLS (system roots, or POWERBANDIT_TLS_ROOT_CERT)")  # fmt: skip
    p.add_argument("--listen", type=listen_address, default=_env("DASHBOARD_LISTEN", "127.0.0.1:8080"),
                   help="host:port of the web page [POWERBANDIT_DASHBOARD_LISTEN, default 127.0.0.1:8080]")  # fmt: skip
    p.add_argument("--refresh-s", type=positive_float, default=float(_env("DASHBOARD_REFRESH_S", "10")),
                   help="seconds between page refreshes [POWERBANDIT_DASHBOARD_REFRESH_S, default 10]")  # fmt: skip
    p.add_argument("--tls-cert", default=_env("DASHBOARD_TLS_CERT", "") or None,
                   help="PEM certificate: serve HTTPS [POWERBANDIT_DASHBOARD_TLS_CERT]")  # fmt: skip
    p.add_argument("--tls-key", default=_env("DASHBOARD_TLS_KEY", "") or None,
                   help="PEM private key [POWERBANDIT_DASHBOARD_TLS_KEY]")  # fmt: skip
    p.add_argument("--allow-unauthenticated-remote", action="store_true",
                   help="listen beyond loopback without a viewer token (not recommended)")  # fmt: skip


def _tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if bool(cert) != bool(key):
        raise UserError("HTTPS needs both --tls-cert and --tls-key")
    if not cert or not key:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"cannot load the TLS certificate {cert} or key {key}: {exc}") from None
    return context


def _check_access(client: Any, server: str) -> None:
    """One cheap read at start: a token the server refuses is said now, not as HTTP 502 per page.

    A server that cannot be reached yet is only warned about (the pages say so until it is up).
    """
    from client_sdk.client import OptimizerClientError

    try:
        client._call("ListJobs", pb.ListJobsRequest(page_size=1))
    except OptimizerClientError as exc:
        if exc.unreachable:
            log.warning("the powerbandit server at %s cannot be reached yet: %s", server, exc)
            return
        if exc.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            client.close()
            hint = "" if os.environ.get("POWERBANDIT_TOKEN") else " (set POWERBANDIT_TOKEN to the operator's token)"
            raise UserError(f"the server at {server} refuses the dashboard's reads: {exc.details}{hint}") from None
        raise


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; returns the exit code."""
    from client_sdk.client import OptimizerClient
    from powerbandit.cli.dashboard.server import DashboardServer, JobCache

    try:
        listen = parse_listen(args.listen)  # --listen's type checked it; a name may stop resolving since
    except ListenAddressError as exc:
        raise UserError(str(exc)) from None
    token = os.environ.get("POWERBANDIT_DASHBOARD_TOKEN") or None
    tls = _tls_context(args.tls_cert, args.tls_key)
    if token is not None and len(token) < 8:
        raise UserError("POWERBANDIT_DASHBOARD_TOKEN is shorter than 8 characters; use a longer viewer token")
    if not listen.is_loopback and token is None and not args.allow_unauthenticated_remote:
        raise UserError(
            f"refusing to serve the dashboard on {args.listen} (beyond loopback) without a viewer token: set "
            "POWERBANDIT_DASHBOARD_TOKEN (and --tls-cert/--tls-key), listen on 127.0.0.1, "
            "or pass --allow-unauthenticated-remote"
        )
    if not listen.is_loopback and tls is None:
        log.warning("the dashboard is served beyond loopback over plain HTTP: give --tls-cert and --tls-key")
    client = OptimizerClient(args.server, timeout_s=30.0, tls=args.server_tls)
    _check_access(client, args.server)
    try:
        server = DashboardServer(
            (listen.host, listen.port), JobCache(client), refresh_s=args.refresh_s, viewer_token=token, tls_context=tls
        )
    except OSError as exc:
        client.close()
        raise UserError(f"cannot listen on {args.listen}: {exc.strerror or exc}") from None
    scheme = "https" if tls else "http"
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    print(f"dashboard on {scheme}://{host}:{server.port}/ (server {args.server}; Ctrl-C stops)", flush=True)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
        client.close()
    return 0
