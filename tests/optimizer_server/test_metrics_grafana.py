"""The Grafana dashboard (deploy/grafana/powerbandit.json) and its provisioning by deploy/compose.yaml.

Static checks here: layout, the panels the issue asks for, every query's syntax (``promtool check
rules``) and metric names (those the server exports), and the compose wiring. The queries are run
against a real Prometheus scraping two replicas in ``test_metrics_energy.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from optimizer_server.metrics import Metrics
from optimizer_server.store.open import open_store

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "powerbandit.json"
PROMQL_WORDS = {
    "sum", "max", "min", "count", "by", "without", "rate", "increase", "histogram_quantile", "le", "on",
    "ignoring", "group_left", "avg", "and", "or", "unless",
}  # fmt: skip


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def concrete(expr: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "1h")


def test_layout_and_panels() -> None:
    doc = dashboard()
    assert doc["uid"] == "powerbandit-energy" and doc["templating"]["list"][0]["type"] == "datasource"
    panels = doc["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}"
    titles = " | ".join(p["title"] for p in panels)
    for wanted in ("Energy used per GPU model", "Estimated energy saved per GPU model", "Runs finished per state",
                   "Runs in flight", "RPC rate", "RPC latency"):  # fmt: skip
        assert wanted in titles, wanted
    # store-wide series are aggregated with max, per-replica counters with sum
    for expr in exprs():
        if 'scope="store"' in expr:
            assert not re.search(r"\bsum\b", expr), expr


def test_queries_name_exported_metrics(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'g.db'}")
    try:
        text = generate_latest(Metrics(store).registry).decode()
    finally:
        store.close()
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples} | {"up"}
    exported |= {f.name for f in text_string_to_metric_families(text)}
    for expr in exprs():
        body = re.sub(r'"[^"]*"', "", re.sub(r"\{[^}]*\}", "", re.sub(r"\[[^\]]*\]", "", expr)))
        names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", body)) - PROMQL_WORDS - {"gpu_model", "method", "code",
                                                                                     "state", "version", "e6"}
        missing = {n for n in names if not re.fullmatch(r"e\d+", n)} - exported
        # labelled counters and histograms without samples yet: compare against their family
        missing = {n for n in missing if re.sub(r"_(total|bucket|count|sum)$", "", n) not in exported}
        assert not missing, f"{expr}: {missing}"


def test_queries_parse_with_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": concrete(e)} for i, e in enumerate(exprs())
    ]}]}  # fmt: skip
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_compose_provisions_grafana() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[1]: DEPLOY / v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")}
    for source in mounts.values():
        assert source.is_file(), source
    datasources = yaml.safe_load(mounts["/etc/grafana/provisioning/datasources/powerbandit.yaml"].read_text())
    (source,) = datasources["datasources"]
    prometheus_port = compose["services"]["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert source["type"] == "prometheus" and source["url"] == f"http://prometheus:{prometheus_port}"
    providers = yaml.safe_load(mounts["/etc/grafana/provisioning/dashboards/powerbandit.yaml"].read_text())
    path = providers["providers"][0]["options"]["path"]
    assert any(t.startswith(path + "/") and s == DASHBOARD for t, s in mounts.items())
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert "grafana_admin_password" in compose["secrets"]
    assert all(p.startswith("127.0.0.1:") for p in grafana["ports"])
