"""``powerbandit jobs export``: one row per run (CSV for spreadsheets, JSON for pandas), checked
against the server's own store, with optional carbon figures labelled as an estimate.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from client_sdk.client import OptimizerClient
from client_sdk.replay import ReplayGpu
from optimizer_server.server import EmbeddedServer
from powerbandit.cli.export import COLUMNS
from tests.helpers import FRESH, MAX_W, NO_DEFAULT, SYNTH, TRACE, cli, replay

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    db = tmp_path_factory.mktemp("export") / "e.db"
    with EmbeddedServer(f"sqlite:///{db}") as srv, OptimizerClient(srv.address, timeout_s=10) as client:
        replay(client, SYNTH, TRACE, 5, "Replay A")
        replay(client, SYNTH, TRACE, 2, "Replay B")
        replay(client, NO_DEFAULT, TRACE, 3, "Replay A")
        client.register_job(FRESH)
        client.suggest(FRESH.job_id, ReplayGpu({512: {MAX_W: (200.0, 30.0)}}, model="Replay A").info())
        yield srv


def _store_runs(server: EmbeddedServer) -> dict[str, object]:
    store = server.service.store
    return {r.run_id: r for job in (SYNTH, NO_DEFAULT, FRESH) for r in store.list_runs(job.job_id)}


def test_csv_has_one_row_per_run(server: EmbeddedServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["jobs", "--server", server.address, "export"], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert tuple(rows[0].keys()) == COLUMNS
    runs = _store_runs(server)
    assert len(rows) == len(runs) == 5 + 2 + 3 + 1
    for row in rows:
        run = runs[row["run_id"]]
        assert row["job_id"] == run.job_id and row["gpu_model"] == run.gpu_model  # type: ignore[attr-defined]
        assert int(row["batch_size"]) == run.batch_size  # type: ignore[attr-defined]
        assert float(row["power_limit_w"]) == run.power_limit_w  # type: ignore[attr-defined]
        assert float(row["energy_j"]) == pytest.approx(run.energy_j)  # type: ignore[attr-defined]
        assert float(row["energy_kwh"]) == pytest.approx(run.energy_j / 3.6e6)  # type: ignore[attr-defined]
        assert float(row["time_s"]) == pytest.approx(run.time_s)  # type: ignore[attr-defined]
        assert float(row["cost"]) == pytest.approx(run.cost)  # type: ignore[attr-defined]
        assert row["state"] == run.state  # type: ignore[attr-defined]
    in_flight = [r for r in rows if r["state"] == "in_flight"]
    assert len(in_flight) == 1 and in_flight[0]["outcome"] == "in flight" and in_flight[0]["finished_unix_s"] == ""
    assert {r["outcome"] for r in rows} >= {"reached target"}
    assert "co2e" not in out and "note:" not in err


def test_json_with_carbon_is_labelled_an_estimate(
    server: EmbeddedServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "runs.json"
    argv = ["jobs", "export", "--server", server.address, "--prefix", "team/s", "--format", "json",
            "--carbon-intensity", "400", "--out", str(out_file)]  # fmt: skip
    code, out, err = cli(argv, capsys)
    assert code == 0 and out == ""
    rows = json.loads(out_file.read_text())
    assert len(rows) == 7 and {r["job_id"] for r in rows} == {SYNTH.job_id}
    for row in rows:
        assert row["carbon_intensity_g_per_kwh"] == 400
        assert row["co2e_g_estimate"] == pytest.approx(row["energy_j"] / 3.6e6 * 400)
    assert "wrote 7 run(s)" in err and "estimate" in err and "400 gCO2e/kWh" in err
    # a list of flat objects with the same keys: pandas.read_json / DataFrame(rows) take it as is
    assert all(list(r) == list(rows[0]) and not any(isinstance(v, dict | list) for v in r.values()) for r in rows)


def test_empty_export_and_mistakes(server: EmbeddedServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["jobs", "--server", server.address, "export", "--prefix", "nobody/", "--format", "json"], capsys)
    assert code == 0 and json.loads(out) == []
    code, out, _ = cli(["jobs", "--server", server.address, "export", "--prefix", "nobody/"], capsys)
    assert code == 0 and out.strip() == ",".join(COLUMNS)
    proc = subprocess.run(
        [sys.executable, "-m", "powerbandit", "jobs", "export", "--carbon-intensity", "-3"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "negative" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "powerbandit", "jobs", "export", "--server", server.address, "--out", "/nonexistent/x.csv"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
