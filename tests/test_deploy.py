"""Deployment artifacts, checked without a container daemon, and run as far as this machine allows.

* Kubernetes manifests: schema-checked against the official Kubernetes 1.30 schemas (strict: unknown
  fields fail) with ``kubernetes-validate``, cross-checked (selectors, probes, Secret keys), and the
  server container's args and env run on a throwaway PostgreSQL until its health check passes.
* compose file: schema-checked against the Compose Specification schema (vendored by
  ``check-jsonschema``), cross-checked against the Prometheus config and the Dockerfile, and its
  server service run on a throwaway PostgreSQL until its health-check command passes.
* systemd unit: ``systemd-analyze verify`` (no warnings allowed), and its ExecStart run with its
  environment until healthy, then stopped with its KillSignal.
* Dockerfile: parsed; its stages, user, health check and command checked; and its build and start
  steps run for real in a fresh virtualenv by ``deploy/docker/check_image_steps.py``.
* Every ``powerbandit`` command line and ``POWERBANDIT_*`` variable in these files is checked against
  the real command-line parser. Servers listen on free loopback ports only.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import powerbandit
from tests.helpers import REPO_ROOT

yaml = pytest.importorskip("yaml", reason="the dev extra installs PyYAML")

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
K8S_VERSION = "1.30.0"
sys.path.insert(0, str(DEPLOY / "docker"))
import check_image_steps  # noqa: E402  (deploy/docker is not a package)

SOURCES = "\n".join(
    p.read_text()
    for pkg in ("powerbandit", "optimizer_server", "client_sdk", "simulations")
    for p in (REPO_ROOT / pkg).rglob("*.py")
)


def k8s_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    """(file name, document) for every manifest, the Secret example included."""
    for path in sorted([*K8S.glob("*.yaml"), *K8S.glob("*.yaml.example")]):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path.name, doc


def by_kind(kind: str, name: str = "powerbandit-server") -> dict[str, Any]:
    """The one manifest of ``kind`` named ``name``."""
    found = [d for _, d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def assert_known_variable(name: str) -> None:
    """``POWERBANDIT_X`` is read somewhere in the package (literally or through the CLI's ``_env("X")``)."""
    short = name.removeprefix("POWERBANDIT_")
    assert name in SOURCES or f'_env("{short}"' in SOURCES, f"{name} is read nowhere in the package"


def parse_cli(argv: list[str], env: dict[str, str] | None = None) -> Any:
    """Parse a ``powerbandit`` command line with the real parser, under ``env`` (flags read POWERBANDIT_*)."""
    from powerbandit.cli.main import build_parser

    saved = dict(os.environ)
    try:
        os.environ.update(env or {})
        return build_parser().parse_args(argv)
    finally:
        os.environ.clear()
        os.environ.update(saved)


# ----------------------------------------------------------------------------------- Kubernetes
def test_every_manifest_matches_the_kubernetes_schema() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="the dev extra installs kubernetes-validate")
    kinds = []
    for name, doc in k8s_documents():
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{name}: {doc.get('kind')}: {exc}")
        kinds.append(doc["kind"])
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "Secret", "Namespace"):
        assert kind in kinds, kind


def test_the_schema_check_catches_a_misspelt_field() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="the dev extra installs kubernetes-validate")
    pdb = json.loads(json.dumps(by_kind("PodDisruptionBudget")))
    pdb["spec"]["minAvailabel"] = 1
    with pytest.raises(kv.ValidationError):
        kv.validate(pdb, K8S_VERSION, strict=True)


def test_server_deployment_probes_secrets_and_disruption_budget() -> None:
    deployment, service, pdb, secret = (
        by_kind("Deployment"), by_kind("Service"), by_kind("PodDisruptionBudget"), by_kind("Secret")
    )  # fmt: skip
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"] == selector and service["spec"]["selector"] == selector
    assert pdb["spec"]["minAvailable"] >= 1 and deployment["spec"]["replicas"] > pdb["spec"]["minAvailable"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e for e in container["env"]}
    assert env["POWERBANDIT_LISTEN"]["value"].endswith(f":{ports['grpc']}")
    assert env["POWERBANDIT_METRICS_PORT"]["value"] == str(ports["metrics"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], (
            probe
        )  # grpc.health.v1 (open without a token)
    db = env["POWERBANDIT_DB"]["valueFrom"]["secretKeyRef"]
    assert db["name"] == secret["metadata"]["name"] and db["key"] in secret["stringData"]
    assert secret["stringData"][db["key"]].startswith("postgresql://")  # replicas share one PostgreSQL
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    tokens = volumes["tokens"]["secret"]
    assert tokens["secretName"] == secret["metadata"]["name"]
    (item,) = tokens["items"]
    assert item["key"] in secret["stringData"]
    assert env["POWERBANDIT_AUTH_TOKENS_FILE"]["value"] == f"{mounts['tokens']['mountPath']}/{item['path']}"
    assert "POWERBANDIT_AUTH_TOKENS" not in env  # tokens never in plain env or args
    security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["image"] == f"powerbandit:{powerbandit.__version__}"
    args = parse_cli(container.get("args", []), {k: v["value"] for k, v in env.items() if "value" in v})
    assert args.command == "serve" and args.metrics_port == ports["metrics"]
    for name in env:
        assert_known_variable(name)
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports


def test_every_manifest_lives_in_a_namespace_defined_here() -> None:
    defined = {doc["metadata"]["name"] for _, doc in k8s_documents() if doc["kind"] == "Namespace"}
    used = {doc["metadata"].get("namespace") for _, doc in k8s_documents() if doc["kind"] != "Namespace"}
    assert "powerbandit" in defined and used <= defined, used - defined


# ----------------------------------------------------------------------------------- compose
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_file_matches_the_compose_specification() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip(
        "check_jsonschema", reason="the dev extra installs check-jsonschema (it vendors the schema)"
    )
    text = (
        importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    ).read_text()
    schema = json.loads(text)
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []
    broken = compose()
    broken["services"]["powerbandit"]["healthcheck"]["intervall"] = "5s"
    assert list(validator.iter_errors(broken))


def test_compose_wiring() -> None:
    doc = compose()
    services = doc["services"]
    server = services["powerbandit"]
    assert (DEPLOY / server["build"]["context"] / server["build"]["dockerfile"]).resolve() == (
        DEPLOY / "docker" / "Dockerfile"
    )
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"]
    env = {k: str(v) for k, v in server["environment"].items()}
    for name in env:
        assert_known_variable(name)
    assert parse_cli(server["command"], env).command == "serve"
    health = server["healthcheck"]["test"]
    assert health[0] == "CMD" and parse_cli(health[2:], env).command == "health"
    for secret in server["secrets"]:
        assert secret in doc["secrets"]
    assert env["POWERBANDIT_AUTH_TOKENS_FILE"] == f"/run/secrets/{server['secrets'][0]}"
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port  # published on the host's loopback only
    prometheus = services["prometheus"]
    config_mount = next(v for v in prometheus["volumes"] if v.endswith("/etc/prometheus/prometheus.yml:ro"))
    config = yaml.safe_load((DEPLOY / config_mount.split(":")[0]).read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert f"powerbandit:{env['POWERBANDIT_METRICS_PORT']}" in targets
    assert env["POWERBANDIT_METRICS_HOST"] == "0.0.0.0"  # reachable from the prometheus container


# ----------------------------------------------------------------------------------- systemd
UNIT = DEPLOY / "systemd" / "powerbandit-server.service"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unit_service_settings() -> tuple[list[list[str]], dict[str, str], dict[str, str]]:
    """The unit's ExecStart* command lines, its ``Environment=`` variables, and its other [Service] keys."""
    commands, env, keys = [], {}, {}
    section = ""
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            if key.startswith("ExecStart"):
                commands.append(shlex.split(value))
            elif key == "Environment":
                name, _, val = value.partition("=")
                env[name] = val
            else:
                keys[key] = value
    return commands, env, keys


def test_systemd_unit_verifies_and_runs_real_commands(tmp_path: Path) -> None:
    commands, env, keys = unit_service_settings()
    for name in env:
        assert_known_variable(name)
    assert [c[1:] for c in commands] == [["serve"]]
    parse_cli(commands[0][1:], env)
    assert keys.get("DynamicUser") == "yes" or keys.get("User", "root") != "root"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify wants the binaries to exist: point them at this environment's powerbandit.
    cli = shutil.which("powerbandit") or pytest.skip("no powerbandit console script on PATH")
    copy = tmp_path / "powerbandit-server.service"
    copy.write_text(UNIT.read_text().replace("/opt/powerbandit/bin/powerbandit", str(cli)))
    done = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "" and done.stderr.strip() == "", done.stderr


def test_systemd_unit_starts_a_healthy_server_and_stops_on_its_signal(tmp_path: Path) -> None:
    """What systemd would run: ExecStart with the unit's environment, a fresh state directory, the tokens credential.

    Paths of the unit are mapped under tmp_path (StateDirectory, %d), the listen address to a free
    loopback port; the user, the sandboxing and the credential mechanism are systemd's and not run.
    """
    commands, env, keys = unit_service_settings()
    state = tmp_path / "var-lib-powerbandit"
    state.mkdir()
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "tokens").write_text("unit-check-token *\n")
    port, metrics_port = free_port(), free_port()
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("POWERBANDIT_")}
    for name, value in env.items():
        run_env[name] = value.replace("/var/lib/powerbandit", str(state)).replace("%d", str(credentials))
    run_env["POWERBANDIT_LISTEN"] = f"127.0.0.1:{port}"
    assert run_env["POWERBANDIT_METRICS_PORT"].isdigit()
    run_env["POWERBANDIT_METRICS_PORT"] = str(metrics_port)  # the unit's 9464 may be taken on this machine
    run_env["PYTHONPATH"] = str(REPO_ROOT)
    cwd = Path(keys["WorkingDirectory"].replace("/var/lib/powerbandit", str(state)))
    (serve,) = commands
    log = run_until_healthy(
        serve[1:], run_env, cwd, ["health", "--timeout-s", "2"], metrics_port,
        stop_signal=keys.get("KillSignal", "SIGTERM"), stop_timeout_s=float(keys.get("TimeoutStopSec", "90")),
    )  # fmt: skip
    assert f"serving on 127.0.0.1:{port}" in log
    assert (state / "powerbandit.db").exists()  # the unit's POWERBANDIT_DB, in its StateDirectory
    assert "authentication: bearer tokens required" in log, log[-2000:]  # the tokens credential was read


def run_until_healthy(
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    health_argv: list[str],
    metrics_port: int | None,
    stop_signal: str = "SIGTERM",
    stop_timeout_s: float = 30.0,
) -> str:
    """Run ``powerbandit ARGV`` until ``powerbandit HEALTH_ARGV`` passes, scrape metrics, stop it; returns its log.

    The source tree's ``powerbandit`` stands in for the installed command; the process is always stopped.
    """
    python_cli = [sys.executable, "-m", "powerbandit"]
    run_env = {**env, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([*python_cli, *argv], cwd=cwd, env=run_env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            health = subprocess.run(
                [*python_cli, *health_argv],
                env=run_env,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if health.returncode == 0:
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, health.stderr
            time.sleep(0.3)
        assert health.stdout.strip().endswith(": SERVING")
        if metrics_port is not None:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
                assert "powerbandit_jobs" in reply.read().decode()
    finally:
        proc.send_signal(getattr(signal, stop_signal))
        try:
            code = proc.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
            raise
        log = proc.stderr.read() if proc.stderr else ""
    assert code == 0, log[-3000:]
    return log


@pytest.mark.postgres
def test_compose_server_runs_on_postgresql_with_its_secrets(tmp_path: Path, postgres_server: Any) -> None:
    """The compose service's command, environment, tokens secret and health check, on a real PostgreSQL.

    The database URL of compose.env points at the test cluster instead of the `postgres` service;
    the listen and metrics addresses are free loopback ports instead of 0.0.0.0.
    """
    server = compose()["services"]["powerbandit"]
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    (secrets / server["secrets"][0]).write_text("compose-check-token *\n")
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWERBANDIT_")}
    env.update({k: str(v).replace("/run/secrets", str(secrets)) for k, v in server["environment"].items()})
    env.update(
        POWERBANDIT_DB=postgres_server.new_database(), POWERBANDIT_LISTEN=f"127.0.0.1:{port}",
        POWERBANDIT_METRICS_HOST="127.0.0.1", POWERBANDIT_METRICS_PORT=str(metrics_port),
    )  # fmt: skip
    health_argv = server["healthcheck"]["test"][2:]  # ["CMD", "powerbandit", ...]
    log = run_until_healthy(server["command"], env, tmp_path, health_argv, metrics_port)
    assert "authentication: bearer tokens required" in log and "postgresql://" in log


@pytest.mark.postgres
def test_kubernetes_container_runs_on_postgresql_with_its_secret(
    tmp_path: Path, postgres_server: Any
) -> None:
    """The Deployment's container: args, env (the Secret's keys resolved), the tokens volume, the gRPC probe's port.

    The Secret's db-url points at the test cluster; the listen and metrics addresses are free
    loopback ports instead of 0.0.0.0.
    """
    deployment, secret = by_kind("Deployment"), by_kind("Secret")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    data = dict(secret["stringData"], **{"db-url": postgres_server.new_database()})
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounted: dict[str, str] = {}
    for mount in container["volumeMounts"]:
        directory = tmp_path / "mounts" / mount["mountPath"].strip("/")
        directory.mkdir(parents=True)
        source = volumes[mount["name"]].get("secret")
        if source is not None:
            for item in source["items"]:
                (directory / item["path"]).write_text(data[item["key"]])
        mounted[mount["mountPath"]] = str(directory)
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWERBANDIT_")}
    for var in container["env"]:
        if "value" in var:
            value = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            value = data[ref["key"]]
        for path, directory in mounted.items():
            if value.startswith(path + "/"):  # a file in a mounted volume
                value = directory + value[len(path) :]
                break
        env[var["name"]] = value
    port, metrics_port = free_port(), free_port()
    assert env["POWERBANDIT_LISTEN"].endswith(f":{container['readinessProbe']['grpc']['port']}")
    env.update(POWERBANDIT_LISTEN=f"127.0.0.1:{port}", POWERBANDIT_METRICS_HOST="127.0.0.1",
               POWERBANDIT_METRICS_PORT=str(metrics_port))  # fmt: skip
    log = run_until_healthy(
        container["args"], env, tmp_path, ["health", "--server", f"127.0.0.1:{port}"], metrics_port,
        stop_timeout_s=float(pod["terminationGracePeriodSeconds"]),
    )  # fmt: skip
    assert "authentication: bearer tokens required" in log and "postgresql://" in log


# ----------------------------------------------------------------------------------- Dockerfile
def test_dockerfile_is_multi_stage_non_root_with_a_grpc_health_check() -> None:
    instructions = check_image_steps.parse_dockerfile((DEPLOY / "docker" / "Dockerfile").read_text())
    stages = [i for i in instructions if i.keyword == "FROM"]
    assert len(stages) >= 2
    final = instructions[instructions.index(stages[-1]) :]
    users = [i.args for i in final if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    copies = [i.args for i in final if i.keyword == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies)  # the runtime stage gets only wheels
    env: dict[str, str] = {}
    for i in final:
        if i.keyword == "ENV":
            env.update(check_image_steps.parse_env(i.args, env))
    for name in env:
        if name.startswith("POWERBANDIT_"):
            assert_known_variable(name)
    (health,) = [i.args for i in final if i.keyword == "HEALTHCHECK"]
    health_cmd = check_image_steps.exec_form(health.partition("CMD ")[2])
    assert health_cmd[0] == "powerbandit" and parse_cli(health_cmd[1:], env).command == "health"
    entry = [check_image_steps.exec_form(i.args) for i in final if i.keyword in ("ENTRYPOINT", "CMD")]
    command = [word for part in entry for word in part]
    assert command[0] == "powerbandit" and parse_cli(command[1:], env).command == "serve"


def test_dockerignore_keeps_the_build_context_small() -> None:
    patterns = check_image_steps.dockerignore_patterns()
    for path in (".venv/bin/python", ".git/HEAD", "optimizer_server/__pycache__/x.pyc", "powerbandit.db"):
        assert check_image_steps.is_ignored(path, patterns), path
    for path in (
        "pyproject.toml",
        "simulations/data/zeus_nsdi23/summary_train.csv",
        "protos/powerbandit/v1/x.proto",
    ):
        assert not check_image_steps.is_ignored(path, patterns), path


def test_the_image_build_and_start_steps_run(tmp_path: Path) -> None:
    """The Dockerfile's RUN/ENV/COPY steps in a fresh virtualenv, then its CMD as USER until HEALTHCHECK passes."""
    if shutil.which("setpriv") is None and os.geteuid() == 0:
        pytest.skip("setpriv (util-linux) is needed to run the server as the image's user")
    done = subprocess.run(
        [sys.executable, str(DEPLOY / "docker" / "check_image_steps.py"), "--pip-cache"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert "HEALTHCHECK powerbandit health" in out and ": SERVING" in out
    assert "the server stopped cleanly (exit 0)" in out and "image steps: OK" in out
    assert "[  skipped] useradd" in out  # said, not hidden
