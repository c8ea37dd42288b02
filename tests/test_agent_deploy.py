"""The agent's deployment files: the DaemonSet and the systemd unit, checked without a cluster."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import powerbandit
from powerbandit.cli.main import build_parser

yaml = pytest.importorskip("yaml", reason="the dev extra installs PyYAML")

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = REPO_ROOT / "deploy" / "kubernetes" / "agent-daemonset.yaml"
UNIT = REPO_ROOT / "deploy" / "systemd" / "powerbandit-agent.service"


def documents() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text()) if d}


def test_daemonset_schema_and_least_privilege() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="the dev extra installs kubernetes-validate")
    docs = documents()
    for doc in docs.values():
        kv.validate(doc, "1.30.0", strict=True)
    namespace, ds = docs["Namespace"], docs["DaemonSet"]
    assert ds["metadata"]["namespace"] == namespace["metadata"]["name"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True and spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    assert container["securityContext"]["privileged"] is True
    assert container["image"] == f"powerbandit:{powerbandit.__version__}"
    args = build_parser().parse_args(container["args"])
    assert args.command == "agent" and args.agent_command == "serve" and args.socket_mode == 0o660
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
    assert str(Path(args.socket).parent) == mounts["socket-dir"] == host["socket-dir"]
    assert args.state_dir == mounts["state"] == host["state"]  # the journal outlives the pod
    probe = container["readinessProbe"]["exec"]["command"]
    assert build_parser().parse_args(probe[1:]).socket == args.socket


def test_systemd_unit_runs_the_real_command_and_verifies(tmp_path: Path) -> None:
    unit = UNIT.read_text()
    (exec_start,) = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start)
    args = build_parser().parse_args(argv[1:])
    assert args.agent_command == "serve" and args.socket_group == "powerbandit-gpu"
    assert args.socket == "/run/powerbandit/agent.sock" and "RuntimeDirectory=powerbandit" in unit
    assert args.state_dir == "/var/lib/powerbandit-agent" and "StateDirectory=powerbandit-agent" in unit
    assert "Restart=always" in unit  # a crashed agent comes back and restores at start-up
    analyze = shutil.which("systemd-analyze")
    cli = shutil.which("powerbandit")
    if analyze is None or cli is None:
        pytest.skip("systemd-analyze or the powerbandit console script is missing")
    copy = tmp_path / "powerbandit-agent.service"
    copy.write_text(unit.replace("/opt/powerbandit/bin/powerbandit", cli))
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
