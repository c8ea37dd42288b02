"""Operator commands (``jobs list/show/plot``, ``report``) against a real server holding replayed jobs.

The jobs are built like ``powerbandit demo`` builds them: the built-in synthetic job replayed through
the real SDK with the replay GPU. Numbers printed are checked against the server's own store.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from client_sdk.client import Job, OptimizerClient
from client_sdk.replay import ReplayGpu
from optimizer_server.server import EmbeddedServer
from powerbandit.cli import operator_view as view
from powerbandit.cli.main import build_parser
from powerbandit.v1 import optimizer_pb2_grpc as pb_grpc
from tests.helpers import FRESH, MAX_W, NO_DEFAULT, PINNED, SYNTH, TRACE, TRACE_DIR, cli, replay


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """A real server with four jobs: replayed on two GPU models, without default, pinned, in flight."""
    db = tmp_path_factory.mktemp("operator") / "op.db"
    with EmbeddedServer(f"sqlite:///{db}") as server, OptimizerClient(server.address, timeout_s=10) as client:
        replay(client, SYNTH, TRACE, 16, "Replay A")
        replay(client, SYNTH, TRACE, 5, "Replay B")  # 5: the best batch size runs on B too
        replay(client, NO_DEFAULT, TRACE, 6, "Replay A")
        replay(client, PINNED, TRACE, 6, "Replay A", can_set=False)
        client.register_job(FRESH)
        client.suggest(FRESH.job_id, ReplayGpu({512: {MAX_W: (200.0, 30.0)}}, model="Replay A").info())
        yield server




def finished(server: EmbeddedServer, job_id: str) -> list[Any]:
    return [r for r in server.service.store.list_runs(job_id) if r.state != "in_flight"]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ------------------------------------------------------------------------------------ jobs list
def test_list_json_matches_the_store(cluster: EmbeddedServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["jobs", "--server", cluster.address, "list", "--json"], capsys)
    assert code == 0
    rows = {r["job_id"]: r for r in json.loads(out)}
    assert set(rows) == {SYNTH.job_id, NO_DEFAULT.job_id, PINNED.job_id, FRESH.job_id}
    for job_id, row in rows.items():
        runs = finished(cluster, job_id)
        assert row["finished_runs"] == len(runs)
        assert row["energy_j"] == pytest.approx(sum(r.energy_j for r in runs))
        assert row["time_s"] == pytest.approx(sum(r.time_s for r in runs))
        assert row["successes"] == sum(r.reached_target for r in runs)
    assert rows[FRESH.job_id]["in_flight_runs"] == 1 and rows[FRESH.job_id]["finished_runs"] == 0
    assert (
        rows[FRESH.job_id]["saved"]["energy_j"] is None
        and "no finished runs" in rows[FRESH.job_id]["saved"]["reason"]
    )
    # Expected energy/time of one run at the best configuration: its profile x its mean epochs.
    best = rows[SYNTH.job_id]["best"]
    store = cluster.service.store
    last_model = store.list_runs(SYNTH.job_id)[-1].gpu_model
    b, limit = best["batch_size"], best["power_limit_w"]
    point = next(
        p for p in store.list_profiles(SYNTH.job_id) if p.gpu_model == last_model and p.batch_size == b
    )
    pt = point.points[limit]
    epochs = [r.epochs for r in finished(cluster, SYNTH.job_id) if r.batch_size == b and r.reached_target]
    assert best["energy_j"] == pytest.approx(pt.average_power_w * pt.time_per_epoch_s * np.mean(epochs))
    assert best["time_s"] == pytest.approx(pt.time_per_epoch_s * np.mean(epochs))


def test_savings_from_the_default_profile_match_the_store(cluster: EmbeddedServer) -> None:
    """b0 profiled at the maximum limit on Replay A (not on Replay B): A is counted, B is not."""
    with OptimizerClient(cluster.address) as client:
        summary = view.job_summary(client.get_job(SYNTH.job_id))
    store = cluster.service.store
    runs = finished(cluster, SYNTH.job_id)
    b0 = SYNTH.default_batch_size
    profile = next(
        p for p in store.list_profiles(SYNTH.job_id) if p.gpu_model == "Replay A" and p.batch_size == b0
    )
    at_max = profile.points[MAX_W]
    epochs0 = np.mean([r.epochs for r in runs if r.batch_size == b0 and r.reached_target])
    baseline = at_max.average_power_w * at_max.time_per_epoch_s * epochs0
    on_a = [r for r in runs if r.gpu_model == "Replay A"]
    expected = sum(r.reached_target for r in on_a) * baseline - sum(r.energy_j for r in on_a)
    rows = {row["gpu_model"]: row for row in summary["per_gpu"]}
    assert rows["Replay A"]["baseline"]["source"] == "profile"
    assert rows["Replay A"]["saved_energy_j"] == pytest.approx(expected)
    assert rows["Replay B"]["saved_energy_j"] is None and "Replay B" in rows["Replay B"]["reason"]
    assert summary["saved"]["energy_j"] == pytest.approx(expected)
    assert summary["saved"]["uncovered"] == ["Replay B"] and summary["saved"]["method"] == "profile"
    assert summary["saved"]["energy_j"] > 0  # the optimizer beats batch size 512 at 250 W here


def test_savings_from_measured_default_runs(cluster: EmbeddedServer) -> None:
    with OptimizerClient(cluster.address) as client:
        summary = view.job_summary(client.get_job(PINNED.job_id))
    runs = finished(cluster, PINNED.job_id)
    at_default = [r for r in runs if r.batch_size == 512 and r.reached_target and r.power_limit_w == MAX_W]
    assert at_default, "the pinned job should have run its default batch size at the maximum limit"
    baseline = np.mean([r.energy_j for r in at_default])
    expected = sum(r.reached_target for r in runs) * baseline - sum(r.energy_j for r in runs)
    assert summary["saved"]["method"] == "measured"
    assert summary["saved"]["energy_j"] == pytest.approx(expected)


def test_no_claim_without_a_default_measurement(
    cluster: EmbeddedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(["jobs", "--server", cluster.address, "list"], capsys)
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith(NO_DEFAULT.job_id))
    assert line.rstrip().endswith("-")
    assert "default batch size 1024 has not reached the target" in out
    assert "How savings are estimated" in out


def test_list_sorting(cluster: EmbeddedServer, capsys: pytest.CaptureFixture[str]) -> None:
    def order(key: str) -> list[str]:
        code, out, _ = cli(["jobs", "list", "--server", cluster.address, "--sort", key, "--json"], capsys)
        assert code == 0
        return [r["job_id"] for r in json.loads(out)]

    assert order("id") == sorted([SYNTH.job_id, NO_DEFAULT.job_id, PINNED.job_id, FRESH.job_id])
    assert order("runs")[0] == SYNTH.job_id and order("runs")[-1] == FRESH.job_id
    saved = order("saved")
    assert saved[0] == SYNTH.job_id and set(saved[-2:]) == {NO_DEFAULT.job_id, FRESH.job_id}  # unknown last
    assert order("flight")[0] == FRESH.job_id


# ------------------------------------------------------------------------------------ jobs show
def test_show_text(cluster: EmbeddedServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["jobs", "--server", cluster.address, "show", SYNTH.job_id, "--runs", "5"], capsys)
    assert code == 0
    assert "outlook: next run on Replay B:" in out
    assert "90% interval" in out and "power profiles" in out and "Replay A b512:" in out
    assert "recent runs (5 of 21" in out and "reached target" in out
    for b in SYNTH.batch_sizes:
        assert any(line.strip().startswith(str(b)) for line in out.splitlines())


def test_show_json_matches_the_server(cluster: EmbeddedServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(
        ["jobs", "show", SYNTH.job_id, "--json", "--server", cluster.address, "--runs", "0"], capsys
    )
    assert code == 0
    detail = json.loads(out)
    job = cluster.service.get_job(SYNTH.job_id)
    assert detail["outlook"] == job.outlook and detail["spec"]["default_batch_size"] == 512
    assert [a["batch_size"] for a in detail["arms"]] == [a.batch_size for a in job.arms]
    for shown, arm in zip(detail["arms"], job.arms, strict=True):
        assert shown["observations"] == arm.observations and shown["successes"] == arm.successes
        if np.isfinite(arm.cost_mean):
            assert shown["cost_low"] <= shown["cost_mean"] <= shown["cost_high"]
    completed = [r for r in finished(cluster, SYNTH.job_id) if r.state == "completed"]
    assert sum(len(a["observed_costs"]) for a in detail["arms"]) == len(completed)
    assert len(detail["recent_runs"]) == len(cluster.service.store.list_runs(SYNTH.job_id))
    assert {p["gpu_model"] for p in detail["profiles"]} == {"Replay A", "Replay B"}


def test_unknown_job(cluster: EmbeddedServer, capsys: pytest.CaptureFixture[str]) -> None:
    for sub in (["show", "nope"], ["plot", "nope", "--out", "x.png"]):
        code, _, err = cli(["jobs", "--server", cluster.address, *sub], capsys)
        assert code == 1 and "NOT_FOUND" in err and "nope" in err


# ------------------------------------------------------------------------------------ plots
def test_plot_png(cluster: EmbeddedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "job.png"
    code, text, _ = cli(
        ["jobs", "--server", cluster.address, "plot", SYNTH.job_id, "--out", str(out)], capsys
    )
    assert code == 0 and str(out) in text
    assert png_size(out) == (1200, 450)  # figsize 12 x 4.5 in at 100 dpi
    import matplotlib.image

    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (450, 1200) and image.std() > 0.01  # not blank
    small = tmp_path / "small.png"
    code, _, _ = cli(["jobs", "--server", cluster.address, "plot", FRESH.job_id, "--out", str(small),
                      "--width-in", "6", "--height-in", "3", "--dpi", "80"], capsys)  # fmt: skip
    assert code == 0 and png_size(small) == (480, 240)  # a job with no finished runs still plots


# ------------------------------------------------------------------------------------ report
def test_report_totals_match_the_store(
    cluster: EmbeddedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "report.png"
    code, out, _ = cli(
        ["report", "--server", cluster.address, "--since", "2w", "--json", "--png", str(png)], capsys
    )
    assert code == 0
    report = json.loads(out)
    every = [r for j in (SYNTH, NO_DEFAULT, PINNED, FRESH) for r in finished(cluster, j.job_id)]
    assert report["total"]["runs"] == len(every)
    assert report["total"]["energy_j"] == pytest.approx(sum(r.energy_j for r in every))
    assert report["total"]["time_s"] == pytest.approx(sum(r.time_s for r in every))
    gpus = {g["gpu_model"]: g for g in report["per_gpu"]}
    assert gpus["Replay B"]["energy_j"] == pytest.approx(
        sum(r.energy_j for r in every if r.gpu_model == "Replay B")
    )
    assert gpus["Replay B"]["saved_energy_j"] is None
    jobs = {j["job_id"]: j for j in report["per_job"]}
    assert jobs[NO_DEFAULT.job_id]["saved_energy_j"] is None
    assert report["total"]["jobs_without_estimate"] == [NO_DEFAULT.job_id]
    assert report["total"]["saved_energy_j"] == pytest.approx(
        jobs[SYNTH.job_id]["saved_energy_j"] + jobs[PINNED.job_id]["saved_energy_j"]
    )
    assert FRESH.job_id not in jobs  # nothing finished
    assert png_size(png) == (1200, 500)

    code, out, _ = cli(["report", "--server", cluster.address, "--since", "30m"], capsys)
    assert code == 0
    assert (
        "per GPU model" in out
        and "per job" in out
        and "Replay A" in out
        and "How savings are estimated" in out
    )


def test_report_window(cluster: EmbeddedServer) -> None:
    """Only runs finished inside the window count; the baselines still use the whole history."""
    every = sorted(
        (r for j in (SYNTH, NO_DEFAULT, PINNED) for r in finished(cluster, j.job_id)),
        key=lambda r: r.finished_unix_s,
    )
    cutoff = every[len(every) // 2].finished_unix_s
    with OptimizerClient(cluster.address) as client:
        jobs = [client.get_job(j.job_id) for j in (SYNTH, NO_DEFAULT, PINNED)]
    report = view.cluster_report(jobs, cutoff)
    inside = [r for r in every if r.finished_unix_s >= cutoff]
    assert report["total"]["runs"] == len(inside)
    assert report["total"]["energy_j"] == pytest.approx(sum(r.energy_j for r in inside))
    assert view.cluster_report(jobs, time.time() + 60)["total"]["runs"] == 0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600), ("90s", 90), ("1.5h", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert view.parse_duration(text) == seconds


def test_bad_duration_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["report", "--since", "7days"])
    assert exc.value.code == 2 and "30m, 12h, 7d, 2w" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ errors, help
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_names_the_address(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{_free_port()}"
    code, _, err = cli(["report", "--server", address], capsys)
    assert code == 1 and address in err and "cannot reach" in err


class _Unauthenticated(pb_grpc.OptimizerServiceServicer):
    def ListJobs(self, request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid token (set POWERBANDIT_TOKEN)")

    GetJob = ListJobs


def test_auth_failure_passes_the_server_message(capsys: pytest.CaptureFixture[str]) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_OptimizerServiceServicer_to_server(_Unauthenticated(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        for argv in (["jobs", "list"], ["jobs", "show", "x"], ["report"]):
            code, _, err = cli([argv[0], "--server", f"127.0.0.1:{port}", *argv[1:]], capsys)
            assert code == 1 and "UNAUTHENTICATED" in err and "missing or invalid token" in err
    finally:
        server.stop(None)


@pytest.mark.parametrize(
    "command",
    [
        ["jobs"],
        ["jobs", "list"],
        ["jobs", "show"],
        ["jobs", "plot"],
        ["jobs", "delete"],
        ["jobs", "rebuild"],
        ["report"],
    ],
)
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*command, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "usage: powerbandit" in out and len(out.splitlines()) > 3


def test_server_flag_before_and_after_the_subcommand() -> None:
    parser = build_parser()
    assert parser.parse_args(["jobs", "--server", "a:1", "list"]).server == "a:1"
    assert parser.parse_args(["jobs", "list", "--server", "b:2"]).server == "b:2"
    args = parser.parse_args(["jobs", "list"])
    assert isinstance(args, argparse.Namespace) and args.server


# ------------------------------------------------------------------------------------ end to end
def test_end_to_end_subprocess(cluster: EmbeddedServer, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "powerbandit"]
    done = subprocess.run([*cmd, "jobs", "--server", cluster.address, "list", "--sort", "saved"],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].startswith(SYNTH.job_id)
    png = tmp_path / "r.png"
    done = subprocess.run([*cmd, "report", "--server", cluster.address, "--since", "7d", "--json", "--png", str(png)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["total"]["runs"] > 0 and png_size(png) == (1200, 500)


@pytest.mark.traces
def test_on_published_traces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from simulations.traces import TraceSet

    trace = TraceSet(TRACE_DIR).job("a40", "squad")
    job = Job("traces/squad@a40", trace.batch_sizes, trace.default_batch_size, trace.target_metric,
              trace.max_epochs, seed=2)  # fmt: skip
    with (
        EmbeddedServer(f"sqlite:///{tmp_path / 't.db'}") as server,
        OptimizerClient(server.address) as client,
    ):
        replay(client, job, trace, 6, "Replay a40")
        code, out, _ = cli(["jobs", "--server", server.address, "list", "--json"], capsys)
        assert code == 0
        row = json.loads(out)[0]
        runs = [r for r in server.service.store.list_runs(job.job_id) if r.state != "in_flight"]
        assert row["energy_j"] == pytest.approx(sum(r.energy_j for r in runs))
        out_png = tmp_path / "t.png"
        assert (
            cli(["jobs", "--server", server.address, "plot", job.job_id, "--out", str(out_png)], capsys)[0]
            == 0
        )
        assert png_size(out_png) == (1200, 450)


# ------------------------------------------------------------------------------------ one saving
def test_demo_and_the_operator_view_report_the_same_saving(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo, ``jobs list``, ``jobs show`` and ``report`` give one job one saving, baseline named."""
    from powerbandit.cli import demo

    with EmbeddedServer(f"sqlite:///{tmp_path / 'demo.db'}") as server:
        argv = ["demo", "--synthetic", "--recurrences", "15", "--quiet", "--server", server.address]
        assert demo.run(build_parser().parse_args(argv)) == 0
        out = capsys.readouterr().out
        match = re.search(
            r"^job (\S+): energy used .+; saved vs default configuration: (.+?) \(baseline: (.+)\)$", out, re.M
        )
        assert match, out
        job_id, demo_saved, baseline = match.groups()
        assert re.fullmatch(r"[\d.]+ k(W?h|J) \([+-][\d.]+%\)", demo_saved), demo_saved
        assert "batch size 512" in baseline and "250 W" in baseline  # the default configuration, named

        code, listed, _ = cli(["jobs", "--server", server.address, "list", "--prefix", job_id], capsys)
        (row,) = [line for line in listed.splitlines() if line.startswith(job_id)]
        assert code == 0 and row.endswith(demo_saved), (row, demo_saved)

        code, shown, _ = cli(["jobs", "--server", server.address, "show", job_id], capsys)
        assert code == 0 and f"saved vs default configuration: {demo_saved} (baseline: {baseline})" in shown

        code, reported, _ = cli(["report", "--server", server.address, "--prefix", job_id], capsys)
        (per_job,) = [line for line in reported.splitlines() if line.startswith(job_id)]
        assert code == 0 and per_job.endswith(demo_saved), (per_job, demo_saved)


def test_run_outcome_in_words() -> None:
    from powerbandit.v1 import optimizer_pb2 as v1

    def outcome(**fields: Any) -> str:
        return view.run_outcome(v1.Run(**fields))

    assert outcome(state=v1.RUN_STATE_IN_FLIGHT) == "in flight"
    assert outcome(state=v1.RUN_STATE_COMPLETED, reached_target=True) == "reached target"
    assert outcome(state=v1.RUN_STATE_COMPLETED) == "did not reach target"
    assert outcome(state=v1.RUN_STATE_COMPLETED, reason="max epochs") == "stopped: max epochs"
    called_off = "exploration_called_off: exploring batch size 32 no longer pays off"
    assert outcome(state=v1.RUN_STATE_COMPLETED, reason=called_off) == "called off: exploring batch size 32 no longer pays off"
    assert outcome(state=v1.RUN_STATE_FAILED, reason="CUDA OOM") == "failed: CUDA OOM"
