"""The web dashboard over HTTP: JSON endpoints against a real server holding replayed jobs, the
pages and vendored assets it serves (nothing from the network), read-only methods, the viewer
token, and the ``powerbandit dashboard`` command as a real subprocess.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client_sdk.client import OptimizerClient
from client_sdk.replay import ReplayGpu
from optimizer_server.server import EmbeddedServer
from powerbandit.cli import operator_view as view
from powerbandit.cli.dashboard.data import timeline
from powerbandit.cli.dashboard.server import STATIC
from tests.helpers import (
    FRESH,
    MAX_W,
    NO_DEFAULT,
    SYNTH,
    TRACE,
    Dashboard,  # noqa: F401
    dashboard_url,
    replay,
)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """A real server: SYNTH on two GPU models, a job without default measurement, one run in flight."""
    db = tmp_path_factory.mktemp("dash") / "d.db"
    with EmbeddedServer(f"sqlite:///{db}") as server, OptimizerClient(server.address, timeout_s=10) as client:
        replay(client, SYNTH, TRACE, 10, "Replay A")
        replay(client, SYNTH, TRACE, 3, "Replay B")
        replay(client, NO_DEFAULT, TRACE, 4, "Replay A")
        client.register_job(FRESH)
        client.suggest(FRESH.job_id, ReplayGpu({512: {MAX_W: (200.0, 30.0)}}, model="Replay A").info())
        yield server




@pytest.fixture
def dashboard(backend: EmbeddedServer) -> Iterator[Dashboard]:
    d = Dashboard(backend.address)
    yield d
    d.close()


def get(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str) -> Any:
    status, _, body = get(url)
    assert status == 200, body
    return json.loads(body)


def test_cluster_endpoint_matches_the_operator_view(dashboard: Dashboard, backend: EmbeddedServer) -> None:
    body = get_json(dashboard.url + "/api/cluster")
    with OptimizerClient(backend.address) as client:
        expected = {j.spec.job_id: view.job_summary(j) for j in client.list_jobs()}
        synth = client.get_job(SYNTH.job_id)
    rows = {r["job_id"]: r for r in body["jobs"]}
    assert set(rows) == set(expected) == {SYNTH.job_id, NO_DEFAULT.job_id, FRESH.job_id}
    for job_id, summary in expected.items():
        row = rows[job_id]
        assert row["finished_runs"] == summary["finished_runs"]
        assert row["energy_j"] == pytest.approx(summary["energy_j"])
        assert row["saved_energy_j"] == summary["saved"]["energy_j"]
        assert row["saved_text"] == view.saved_text(summary["saved"])
        assert row["best_batch_size"] == summary["best"]["batch_size"]
    assert rows[FRESH.job_id]["in_flight_runs"] == 1
    assert rows[NO_DEFAULT.job_id]["saved_energy_j"] is None and rows[NO_DEFAULT.job_id]["saved_reason"]
    tl = body["timeline"]
    assert tl["models"] == ["Replay A", "Replay B"]
    assert tl["t"] == sorted(tl["t"])
    # the last point of each curve is the total of the jobs table
    for model in tl["models"]:
        used = sum(g["energy_j"] for s in expected.values() for g in s["per_gpu"] if g["gpu_model"] == model)
        assert tl["used_j"][model][-1] == pytest.approx(used)
    saved_a = sum(
        g["saved_energy_j"] for s in expected.values() for g in s["per_gpu"]
        if g["gpu_model"] == "Replay A" and g["saved_energy_j"] is not None
    )  # fmt: skip
    assert tl["saved_j"]["Replay A"][-1] == pytest.approx(saved_a)
    direct = timeline([synth], tl["t"][-1])
    assert direct["used_j"]["Replay B"][-1] == pytest.approx(tl["used_j"]["Replay B"][-1])


def test_prefix_filter_and_job_endpoint(dashboard: Dashboard) -> None:
    body = get_json(dashboard.url + "/api/cluster?prefix=team/s")
    assert [r["job_id"] for r in body["jobs"]] == [SYNTH.job_id]
    job = get_json(dashboard.url + "/api/job?id=" + SYNTH.job_id)
    assert [r["index"] for r in job["finished_runs"]] == list(range(1, 14))
    assert len(job["best_so_far"]) == 13
    assert all(r["batch_size"] in SYNTH.batch_sizes and r["power_limit_w"] > 0 for r in job["finished_runs"])
    assert {a["batch_size"] for a in job["arms"]} == set(SYNTH.batch_sizes)
    assert {p["gpu_model"] for p in job["profiles"]} == {"Replay A", "Replay B"}
    assert job["outlook"].startswith("next run on")
    fresh = get_json(dashboard.url + "/api/job?id=" + FRESH.job_id)
    assert len(fresh["in_flight"]) == 1 and fresh["finished_runs"] == []


def test_errors_and_read_only(dashboard: Dashboard) -> None:
    status, _, body = get(dashboard.url + "/api/job?id=team/none")
    assert status == 404 and "team/none" in json.loads(body)["error"]
    status, _, body = get(dashboard.url + "/api/job")
    assert status == 400 and "job id" in json.loads(body)["error"]
    for method in ("POST", "PUT", "DELETE"):
        status, headers, body = get(dashboard.url + "/api/job?id=" + SYNTH.job_id, method=method)
        assert status == 405 and headers["Allow"] == "GET, HEAD", method
    status, _, _ = get(dashboard.url + "/static/../server.py")
    assert status == 404
    status, _, _ = get(dashboard.url + "/nowhere")
    assert status == 404


def test_pages_and_assets_come_from_the_dashboard(dashboard: Dashboard) -> None:
    for page in ("/", "/job?id=x"):
        status, headers, body = get(dashboard.url + page)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        html = body.decode()
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(a[0] in "/#" and not a.startswith("//") for a in assets), assets
        for asset in assets:
            if asset.startswith("/static/"):
                assert get(dashboard.url + asset)[0] == 200, asset
    # the vendored chart library and its license are package data
    assert (STATIC / "vendor" / "uPlot.iife.min.js").read_bytes().startswith(b"/*! https://github.com/leeoniya/uPlot")
    assert "MIT License" in (STATIC / "vendor" / "uPlot.LICENSE").read_text()
    for script in ("common.js", "cluster.js", "job.js"):
        assert "http://" not in (STATIC / script).read_text() and "https://" not in (STATIC / script).read_text()


def test_viewer_token(backend: EmbeddedServer) -> None:
    d = Dashboard(backend.address, token="view-7f3a")
    try:
        assert get(d.url + "/api/cluster")[0] == 401
        wrong = base64.b64encode(b"ops:nope").decode()
        assert get(d.url + "/", headers={"Authorization": f"Basic {wrong}"})[0] == 401
        right = base64.b64encode(b"ops:view-7f3a").decode()
        assert get(d.url + "/api/cluster", headers={"Authorization": f"Basic {right}"})[0] == 200
        assert get(d.url + "/api/cluster", headers={"Authorization": "Bearer view-7f3a"})[0] == 200
    finally:
        d.close()


def test_reads_with_the_operators_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from optimizer_server.auth import TokenAuth

    auth = TokenAuth.parse("admin-secret-1 *\nteam-s-secret-2 team/s\n")
    with EmbeddedServer(f"sqlite:///{tmp_path / 'auth.db'}", auth=auth) as server:
        with OptimizerClient(server.address, token="admin-secret-1", timeout_s=10) as admin:
            replay(admin, SYNTH, TRACE, 2, "Replay A")
            admin.register_job(NO_DEFAULT)
        monkeypatch.setenv("POWERBANDIT_TOKEN", "team-s-secret-2")  # what the SDK sends by default
        scoped = Dashboard(server.address)
        monkeypatch.setenv("POWERBANDIT_TOKEN", "wrong-secret-3")
        refused = Dashboard(server.address)
        try:
            assert [r["job_id"] for r in get_json(scoped.url + "/api/cluster")["jobs"]] == [SYNTH.job_id]
            status, _, body = get(scoped.url + "/api/job?id=" + NO_DEFAULT.job_id)
            assert status == 403 and "PERMISSION_DENIED" in json.loads(body)["error"]
            status, _, body = get(refused.url + "/api/cluster")
            assert status == 502 and "UNAUTHENTICATED" in json.loads(body)["error"]
        finally:
            scoped.close()
            refused.close()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "powerbandit", "dashboard", *args], cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_cli_serves_and_stops_on_sigterm(backend: EmbeddedServer) -> None:
    proc = _cli("--server", backend.address, "--listen", "127.0.0.1:0", "--refresh-s", "2")
    try:
        url = dashboard_url(proc)
        assert {r["job_id"] for r in get_json(url + "/api/cluster")["jobs"]} >= {SYNTH.job_id}
        assert get_json(url + "/api/config")["refresh_s"] == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--listen", "0.0.0.0:0"], {}, "refusing to serve the dashboard on 0.0.0.0:0"),
        (["--listen", "127.0.0.1:0", "--tls-cert", "c.pem"], {}, "needs both --tls-cert and --tls-key"),
        (["--listen", "127.0.0.1:0", "--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], {},
         "cannot load the TLS certificate"),
    ],
)  # fmt: skip
def test_cli_mistakes_are_one_line(args: list[str], env: dict[str, str], message: str) -> None:
    proc = _cli("--server", "127.0.0.1:1", *args, env={"POWERBANDIT_DASHBOARD_TOKEN": "", **env})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1] and "Traceback" not in err, err


def test_cli_bad_listen_is_a_usage_error() -> None:
    proc = _cli("--listen", "nonsense")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "invalid listen address" in err and "Traceback" not in err


def test_cli_with_a_token_the_server_refuses_stops_at_start(tmp_path: Path) -> None:
    """Found by a newcomer: without POWERBANDIT_TOKEN every page answered HTTP 502."""
    from optimizer_server.auth import TokenAuth

    with EmbeddedServer(f"sqlite:///{tmp_path / 'auth.db'}", auth=TokenAuth.parse("admin-secret-1 *\n")) as server:
        for env, hint in (({"POWERBANDIT_TOKEN": ""}, "set POWERBANDIT_TOKEN"), ({"POWERBANDIT_TOKEN": "wrong-1234"}, "")):
            proc = _cli("--server", server.address, "--listen", "127.0.0.1:0", env=env)
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 1, out + err
            last = err.strip().splitlines()[-1]
            assert last.startswith("error: ") and "refuses the dashboard's reads" in last and hint in last, err
