"""The dashboard's HTTP server: static pages and JSON read through the public API (read-only).

Routes (GET and HEAD only; anything else answers 405):

* ``/`` cluster page, ``/job?id=JOB`` job page, ``/static/...`` their scripts, styles and the
  vendored chart library (served from the package: no CDN);
* ``/api/cluster?prefix=P``: the jobs table and energy used and saved over time per GPU model;
* ``/api/job?id=JOB``: one job's runs, posterior per batch size, profiles, runs in flight, outlook.

Jobs come from ``ListJobs``; their runs (for the curves over time) from ``GetJob``, kept in a cache
and read again only for jobs whose run counts changed, so a refresh costs one ``ListJobs`` and a
``GetJob`` per job that moved. Server errors answer JSON ``{"error": ...}`` with a status that
says whose problem it is (404 unknown job, 502 server refused or unreachable).
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import math
import mimetypes
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc

from client_sdk.client import OptimizerClient, OptimizerClientError
from powerbandit.cli.dashboard import data
from powerbandit.v1 import optimizer_pb2 as pb

log = logging.getLogger("powerbandit.dashboard")

STATIC = resources.files("powerbandit.cli.dashboard") / "static"
PAGES = {"/": "index.html", "/index.html": "index.html", "/job": "job.html"}

#: Jobs fetched with ``GetJob`` at once when the cache is refreshed.
FETCH_WORKERS = 4


def _clean(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by ``None`` (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class JobCache:
    """Jobs with their runs, read through the SDK; a job is read again only when its run counts move."""

    def __init__(self, client: OptimizerClient) -> None:
        self.client = client
        self._jobs: dict[str, tuple[tuple[int, int, int], pb.Job]] = {}
        self._lock = threading.Lock()

    def cluster(self, prefix: str) -> dict[str, Any]:
        """The cluster page's data for jobs whose id starts with ``prefix``."""
        listed = self.client.list_jobs(prefix)
        stale = []
        with self._lock:
            for job in listed:
                key = (job.completed_runs, job.failed_runs, job.in_flight_runs)
                cached = self._jobs.get(job.spec.job_id)
                if cached is None or cached[0] != key:
                    stale.append((job.spec.job_id, key))
        if stale:
            with ThreadPoolExecutor(FETCH_WORKERS) as pool:
                fetched = list(pool.map(lambda item: self._fetch(item[0]), stale))
            with self._lock:
                for (job_id, key), job in zip(stale, fetched, strict=True):
                    if job is not None:
                        self._jobs[job_id] = (key, job)
        with self._lock:
            ids = {j.spec.job_id for j in listed}
            for job_id in [k for k in self._jobs if k.startswith(prefix) and k not in ids]:
                del self._jobs[job_id]  # deleted on the server
            with_runs = [self._jobs[i][1] for i in sorted(ids) if i in self._jobs]
        return {
            "generated_unix_s": time.time(),
            "prefix": prefix,
            "jobs": [data.job_row(j) for j in listed],
            "timeline": data.timeline(with_runs, time.time()),
        }

    def _fetch(self, job_id: str) -> pb.Job | None:
        try:
            return self.client.get_job(job_id)
        except OptimizerClientError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:  # deleted between ListJobs and GetJob
                return None
            raise

    def job(self, job_id: str) -> dict[str, Any]:
        """The job page's data (always read fresh)."""
        return data.job_page(self.client.get_job(job_id))


class DashboardServer(ThreadingHTTPServer):
    """A threaded HTTP server bound to ``host:port``; ``viewer_token``: HTTP Basic password required."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        cache: JobCache,
        *,
        refresh_s: float = 10.0,
        viewer_token: str | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.cache = cache
        self.refresh_s = refresh_s
        self.viewer_token = viewer_token
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, DashboardHandler)
        if tls_context is not None:
            self.socket = tls_context.wrap_socket(self.socket, server_side=True)

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.server_address[1])


class DashboardHandler(BaseHTTPRequestHandler):
    """One request: a page, a static file or a JSON answer."""

    server: DashboardServer
    server_version = "powerbandit-dashboard"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s " + format, self.address_string(), *args)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._route(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._route(head=False)

    def _refuse_method(self) -> None:
        self._send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "the dashboard is read-only: GET and HEAD only"},
                        head=False, extra={"Allow": "GET, HEAD"})  # fmt: skip

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse_method  # noqa: N815

    def _authorized(self) -> bool:
        token = self.server.viewer_token
        if token is None:
            return True
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                password = base64.b64decode(header[6:], validate=True).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                return False
            return hmac.compare_digest(password.encode(), token.encode())
        if header.startswith("Bearer "):
            return hmac.compare_digest(header[7:].encode(), token.encode())
        return False

    def _route(self, *, head: bool) -> None:
        if not self._authorized():
            self._send_json(HTTPStatus.UNAUTHORIZED, {"error": "this dashboard needs its viewer token as password"},
                            head=head, extra={"WWW-Authenticate": 'Basic realm="powerbandit"'})  # fmt: skip
            return
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path in PAGES:
            self._send_static(PAGES[url.path], head=head, no_store=True)
        elif url.path.startswith("/static/"):
            self._send_static(url.path[len("/static/"):], head=head)
        elif url.path == "/api/cluster":
            self._api(lambda: self.server.cache.cluster(query.get("prefix", "")), head)
        elif url.path == "/api/job":
            job_id = query.get("id", "")
            if not job_id:
                self._send_json(HTTPStatus.BAD_REQUEST, {"error": "give the job id: /api/job?id=JOB"}, head=head)
                return
            self._api(lambda: self.server.cache.job(job_id), head)
        elif url.path == "/api/config":
            from powerbandit.cli.operator_cli import SAVINGS_NOTE

            config = {"refresh_s": self.server.refresh_s, "savings_note": SAVINGS_NOTE + "."}
            self._send_json(HTTPStatus.OK, config, head=head)
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no page {url.path}"}, head=head)

    def _api(self, compute: Callable[[], dict[str, Any]], head: bool) -> None:
        try:
            body = compute()
        except OptimizerClientError as exc:
            status = {
                grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
                grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
                grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
            }.get(exc.code, HTTPStatus.BAD_GATEWAY)
            self._send_json(status, {"error": str(exc)}, head=head)
            return
        self._send_json(HTTPStatus.OK, body, head=head)

    def _send_static(self, name: str, *, head: bool, no_store: bool = False) -> None:
        parts = [p for p in name.split("/") if p]
        if not parts or any(p in (".", "..") or p.startswith(".") for p in parts):
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no file {name}"}, head=head)
            return
        target = STATIC.joinpath(*parts)
        if not target.is_file():
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no file {name}"}, head=head)
            return
        body = target.read_bytes()
        kind = mimetypes.guess_type(parts[-1])[0] or "application/octet-stream"
        if kind.startswith("text/") or kind.endswith("javascript"):
            kind += "; charset=utf-8"
        cache = "no-store" if no_store else "max-age=300"
        self._send(HTTPStatus.OK, body, kind, head=head, extra={"Cache-Control": cache})

    def _send_json(self, status: HTTPStatus, payload: Any, *, head: bool, extra: dict[str, str] | None = None) -> None:
        body = json.dumps(_clean(payload), allow_nan=False, separators=(",", ":")).encode()
        headers = {"Cache-Control": "no-store"} | (extra or {})
        self._send(status, body, "application/json", head=head, extra=headers)

    def _send(self, status: HTTPStatus, body: bytes, kind: str, *, head: bool, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'")
        for key, val in extra.items():
            self.send_header(key, val)
        self.end_headers()
        if not head:
            self.wfile.write(body)
