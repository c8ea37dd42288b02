"""Energy metrics and Prometheus hygiene, on two real server replicas sharing one SQLite file.

Jobs are replayed through the real SDK (replay GPU). Each replica's ``/metrics`` is scraped over
HTTP, parsed with the exposition-format parser (and ``promtool check metrics`` when installed),
and its numbers are checked against the store: per-replica counters add up over replicas,
store-wide gauges are equal on both and equal the operator view's saving. A real Prometheus
server scrapes both replicas when it is installed.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from client_sdk.client import OptimizerClient
from optimizer_server.server import EmbeddedServer
from powerbandit import __version__
from powerbandit.cli import operator_view as view
from powerbandit.v1 import optimizer_pb2 as pb
from tests.helpers import SYNTH, TRACE, replay

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> str:
    """The text of ``/metrics`` on ``127.0.0.1:port``."""
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def samples(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and sorted labels (the parser rejects bad syntax)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(data: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return data.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedServer, EmbeddedServer]]:
    """Two replicas on one database: SYNTH replayed on 'Replay A' through one, 'Replay B' through the other."""
    db = tmp_path_factory.mktemp("metrics") / "m.db"
    url = f"sqlite:///{db}"
    with EmbeddedServer(url, metrics_port=0) as first, EmbeddedServer(url, metrics_port=0) as second:
        with OptimizerClient(first.address, timeout_s=10) as client:
            replay(client, SYNTH, TRACE, 12, "Replay A")
        with OptimizerClient(second.address, timeout_s=10) as client:
            replay(client, SYNTH, TRACE, 3, "Replay B")
        yield first, second


def test_energy_counters_add_up_over_replicas(replicas: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    first, second = replicas
    a, b = (samples(scrape(s.running.metrics_port or 0)) for s in (first, second))
    with OptimizerClient(first.address) as client:
        job = client.get_job(SYNTH.job_id)
    finished = [r for r in job.runs if r.state != pb.RUN_STATE_IN_FLIGHT]
    assert len(finished) == 15
    for model, replica in (("Replay A", a), ("Replay B", b)):
        runs = [r for r in finished if r.gpu_model == model]
        energy = sum(r.energy_j for r in runs)
        gpu_s = sum(r.time_s * r.gpu_count for r in runs)
        # each replica counts the runs it finished; sum() over replicas is the store's total
        total = sum(value(d, "powerbandit_run_energy_joules_total", gpu_model=model) for d in (a, b))
        assert total == pytest.approx(energy, rel=1e-9) and energy > 0
        assert value(replica, "powerbandit_run_energy_joules_total", gpu_model=model) == pytest.approx(energy)
        assert sum(
            value(d, "powerbandit_run_gpu_seconds_total", gpu_model=model) for d in (a, b)
        ) == pytest.approx(gpu_s)
        assert sum(
            value(d, "powerbandit_runs_finished_total", gpu_model=model, state="completed") for d in (a, b)
        ) == len(runs)


def test_saving_is_the_operator_views_and_store_wide(replicas: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    first, second = replicas
    with OptimizerClient(first.address) as client:
        report = view.cluster_report(client.list_jobs(), 0.0)
    expected = {r["gpu_model"]: r["saved_energy_j"] for r in report["per_gpu"] if r["saved_energy_j"] is not None}
    assert expected, "the replayed job should have a measured default configuration"
    for server in (first, second):
        data = samples(scrape(server.running.metrics_port or 0))
        got = {
            dict(labels)["gpu_model"]: v
            for (name, labels), v in data.items()
            if name == "powerbandit_energy_saved_joules"
        }
        assert got == pytest.approx(expected)
        assert all(dict(labels)["scope"] == "store" for (name, labels) in data if name == "powerbandit_energy_saved_joules")
        assert value(data, "powerbandit_jobs", scope="store") == 1
        assert value(data, "powerbandit_runs", scope="store", state="in_flight") == 0


def test_hygiene(replicas: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    text = scrape(replicas[0].running.metrics_port or 0)
    data = samples(text)
    names = {name for name, _ in data}
    assert not [n for n in names if n.endswith("_created")]
    assert "powerbandit_runs_in_flight" not in names
    # cumulative figures are counters (TYPE counter), current state is a gauge
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    for counter in ("powerbandit_run_energy_joules", "powerbandit_run_gpu_seconds", "powerbandit_runs_finished",
                    "powerbandit_rpc"):  # fmt: skip
        assert types[counter] == "counter", counter
    assert types["powerbandit_runs"] == types["powerbandit_energy_saved_joules"] == "gauge"
    assert {dict(labels)["state"] for (name, labels) in data if name == "powerbandit_runs"} == {"in_flight"}
    assert value(data, "powerbandit_build_info", version=__version__) == 1
    assert any(n.startswith("process_") for n in names) and any(n.startswith("python_") for n in names)
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus): the parser check above ran")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check.stdout + check.stderr


def test_delete_does_not_lower_counters(tmp_path: Path) -> None:
    with EmbeddedServer(f"sqlite:///{tmp_path / 'd.db'}", metrics_port=0) as server:
        with OptimizerClient(server.address, timeout_s=10) as client:
            replay(client, SYNTH, TRACE, 4, "Replay A")
            before = samples(scrape(server.running.metrics_port or 0))
            # a retried completion (same measurements) is not counted again
            run = client.get_job(SYNTH.job_id).runs[-1]
            server.service.complete_run(
                SYNTH.job_id, run.run_id, energy_j=run.energy_j, time_s=run.time_s, epochs=run.epochs,
                reached_target=run.reached_target,
            )  # fmt: skip
            client.delete_job(SYNTH.job_id)
        after = samples(scrape(server.running.metrics_port or 0))
    energy = value(before, "powerbandit_run_energy_joules_total", gpu_model="Replay A")
    assert energy > 0
    assert value(after, "powerbandit_run_energy_joules_total", gpu_model="Replay A") == energy
    assert value(after, "powerbandit_runs_finished_total", gpu_model="Replay A", state="completed") == 4
    assert value(after, "powerbandit_jobs", scope="store") == 0


def test_a_new_replica_starts_known_series_at_zero(replicas: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    # a counter that appears with its first event in it loses that event to rate() and increase()
    url = replicas[0].config.db_url
    with EmbeddedServer(url, metrics_port=0) as third:
        data = samples(scrape(third.running.metrics_port or 0))
    for model in ("Replay A", "Replay B"):
        assert ("powerbandit_run_energy_joules_total", (("gpu_model", model),)) in data
        assert value(data, "powerbandit_run_energy_joules_total", gpu_model=model) == 0
        for state in ("completed", "failed", "expired"):
            assert ("powerbandit_runs_finished_total", (("gpu_model", model), ("state", state))) in data
    for method in ("Suggest", "CompleteRun", "ListJobs"):
        assert ("powerbandit_rpc_total", (("code", "OK"), ("method", method))) in data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _query(port: int, promql: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    answer = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert answer["status"] == "success", answer
    return answer["data"]["result"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def prometheus(replicas: tuple[EmbeddedServer, EmbeddedServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real Prometheus scraping both replicas every second; yields its web port once both are up."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    tmp_path = tmp_path_factory.mktemp("prometheus")
    ports = [s.running.metrics_port for s in replicas]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: powerbandit\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{ports[0]}', '127.0.0.1:{ports[1]}']}}]\n"
    )
    web = _free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{web}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        result: list[dict[str, object]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                result = _query(web, 'count(up{job="powerbandit"} == 1)')
            except OSError:
                result = []
            if result and result[0]["value"][1] == "2":  # type: ignore[index]
                break
            time.sleep(0.5)
        assert result and result[0]["value"][1] == "2", "Prometheus did not scrape both replicas"  # type: ignore[index]
        time.sleep(3)  # a few samples each, for rate() and increase()
        yield web
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_real_prometheus_scrapes_both_replicas(
    replicas: tuple[EmbeddedServer, EmbeddedServer], prometheus: int
) -> None:
    energy = _query(prometheus, "sum by (gpu_model) (powerbandit_run_energy_joules_total)")
    jobs = _query(prometheus, 'max without (instance) (powerbandit_jobs{scope="store"})')
    summed_jobs = _query(prometheus, 'sum(powerbandit_jobs{scope="store"})')
    with OptimizerClient(replicas[0].address) as client:
        runs = client.get_job(SYNTH.job_id).runs
    by_model = {r["metric"]["gpu_model"]: float(r["value"][1]) for r in energy}  # type: ignore[index]
    for model in ("Replay A", "Replay B"):
        assert by_model[model] == pytest.approx(sum(r.energy_j for r in runs if r.gpu_model == model), rel=1e-6)
    assert float(jobs[0]["value"][1]) == 1  # type: ignore[index]
    assert float(summed_jobs[0]["value"][1]) == 2  # why store-wide series take max: sum counts each replica


def test_grafana_queries_run_on_real_prometheus(prometheus: int) -> None:
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy/grafana/powerbandit.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 12
    empty = []
    for expr in exprs:
        concrete = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "1h")
        if not _query(prometheus, concrete):  # raises on a query Prometheus refuses
            empty.append(expr)
    # every panel shows data; only error rates may be empty (no failed RPC in this replay)
    assert all('code!="OK"' in e for e in empty), empty
