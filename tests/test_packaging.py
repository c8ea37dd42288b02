"""Packaging: shipped traces and their manifest, the trace-dir lookup, the version, the slim SDK, wheel and sdist.

The slow end-to-end check (fresh virtualenvs, no source tree) is ``tests/test_packaging_wheel.py``
(opt-in: ``pytest -m wheel``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import powerbandit
from simulations.traces import TRACE_DIR_ENV, TraceSet, default_trace_dir, packaged_trace_dir
from tests.helpers import BLOCK_SERVER_EXTRA, REPO_ROOT, _source_copy

SHARED_TRACES = REPO_ROOT.parent / "shared" / "traces" / "zeus_nsdi23"
TRACE_FILES = (
    "summary_train.csv",
    "summary_power_v100.csv",
    "summary_power_a40.csv",
    "summary_power_rtx6000.csv",
    "summary_power_p100.csv",
)
# (grpc_reflection is left out: grpcio itself imports it when it is installed.)
SERVER_ONLY_MODULES = ("numpy", "scipy", "matplotlib", "PIL", "fontTools", "prometheus_client")
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _env_without_trace_dir() -> dict[str, str]:
    env = dict(os.environ)
    env.pop(TRACE_DIR_ENV, None)
    return env


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m powerbandit ARGS`` in ``cwd`` (the source tree on PYTHONPATH, as an install would have it)."""
    run_env = _env_without_trace_dir() if env is None else env
    run_env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "powerbandit", *args],
        cwd=cwd,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ---------------------------------------------------------------------------------- shipped traces
def test_shipped_traces_match_their_sha256_manifest() -> None:
    directory = packaged_trace_dir()
    manifest = {}
    for line in (directory / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        manifest[name] = digest
    assert sorted(manifest) == sorted(TRACE_FILES)
    for name, digest in manifest.items():
        assert hashlib.sha256((directory / name).read_bytes()).hexdigest() == digest, name
    assert sorted(p.name for p in directory.glob("*.csv")) == sorted(TRACE_FILES)  # nothing unlisted


def test_shipped_traces_name_their_origin_and_license() -> None:
    readme = (packaged_trace_dir() / "README.md").read_text()
    notice = (REPO_ROOT / "NOTICE").read_text()
    for text in (readme, notice):
        assert "Zeus" in text and "NSDI" in text and "Apache" in text
    assert "Apache License" in (REPO_ROOT / "LICENSE").read_text()
    assert "Version 2.0" in (REPO_ROOT / "LICENSE").read_text()


@pytest.mark.skipif(
    not SHARED_TRACES.exists(), reason="no ../shared/traces beside the checkout to compare with"
)
def test_shipped_traces_are_the_published_files_unchanged() -> None:
    for name in TRACE_FILES:
        assert (packaged_trace_dir() / name).read_bytes() == (SHARED_TRACES / name).read_bytes(), name


@pytest.mark.traces
def test_shipped_traces_load_the_24_canonical_jobs() -> None:
    assert len(TraceSet(packaged_trace_dir()).jobs()) == 24


# ------------------------------------------------------------------------------ trace-dir lookup
def test_default_trace_dir_is_the_shipped_copy_unless_the_variable_names_another(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(TRACE_DIR_ENV, raising=False)
    assert default_trace_dir() == packaged_trace_dir()
    monkeypatch.setenv(TRACE_DIR_ENV, str(tmp_path))
    assert default_trace_dir() == tmp_path
    monkeypatch.setenv(TRACE_DIR_ENV, "  ")
    assert default_trace_dir() == packaged_trace_dir()


@pytest.mark.traces
def test_simulate_reads_the_shipped_traces_from_any_directory(tmp_path: Path) -> None:
    done = _cli(
        "simulate", "--gpu", "a40", "--workload", "squad", "--seeds", "1", "--policy", "zeus", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "squad@a40" in done.stdout and "1 simulations" in done.stdout


@pytest.mark.traces
def test_trace_dir_flag_beats_the_variable_which_beats_the_shipped_copy(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    env = _env_without_trace_dir()
    env[TRACE_DIR_ENV] = str(empty)
    args = ("simulate", "--gpu", "a40", "--workload", "squad", "--seeds", "1", "--policy", "zeus", "--quiet")
    refused = _cli(*args, cwd=tmp_path, env=dict(env))
    assert refused.returncode != 0
    assert f"no summary_train.csv under {empty}" in refused.stderr and "Traceback" not in refused.stderr
    demo = _cli("demo", "--recurrences", "1", "--quiet", cwd=tmp_path, env=dict(env))
    assert demo.returncode != 0 and f"error: no traces at {empty}" in demo.stderr
    assert "Traceback" not in demo.stderr
    copy = tmp_path / "copy"
    shutil.copytree(packaged_trace_dir(), copy)
    flagged = _cli(*args, "--trace-dir", str(copy), cwd=tmp_path, env=dict(env))
    assert flagged.returncode == 0, flagged.stderr


# ------------------------------------------------------------------------------------ version
def test_version_has_one_source() -> None:
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert "version" not in PYPROJECT["project"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "powerbandit.__version__"}
    done = _cli("--version", cwd=REPO_ROOT)
    assert done.returncode == 0 and done.stdout.strip() == f"powerbandit {powerbandit.__version__}"
    changelog = (REPO_ROOT / "CHANGELOG.md").read_text()
    assert f"## [{powerbandit.__version__}]" in changelog


# ------------------------------------------------------------------------------------ slim SDK
def test_base_install_has_no_server_dependencies() -> None:
    base = " ".join(PYPROJECT["project"]["dependencies"]).lower()
    for heavy in ("numpy", "scipy", "matplotlib", "pillow", "prometheus", "reflection"):
        assert heavy not in base, heavy
    server = " ".join(PYPROJECT["project"]["optional-dependencies"]["server"]).lower()
    for needed in ("numpy", "matplotlib", "prometheus-client", "grpcio-reflection"):
        assert needed in server, needed


def test_sdk_modules_import_no_server_dependency() -> None:
    code = (
        "import sys\n"
        "import client_sdk.client, client_sdk.run, client_sdk.replay, client_sdk.nvml, client_sdk.gpu\n"
        "import powerbandit.cli.main, powerbandit.cli.health\n"
        f"print(sorted(m for m in {SERVER_ONLY_MODULES!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"




@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--version"], 0, f"powerbandit {powerbandit.__version__}"),
        (["demo", "--synthetic"], 1, "error: `powerbandit demo` needs the server extra"),
        (["simulate", "--all"], 1, "error: `powerbandit simulate` needs the server extra"),
        (["serve", "--db", "sqlite:///x.db"], 1, "error: `powerbandit serve` needs the server extra"),
        (["health", "--server", "127.0.0.1:9", "--timeout-s", "1"], 1, "error: 127.0.0.1:9: unreachable"),
        (["jobs", "list", "--help"], 0, "usage: powerbandit jobs list"),
    ],
)
def test_cli_without_the_server_extra(tmp_path: Path, args: list[str], code: int, expected: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_SERVER_EXTRA, *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == code, done.stderr
    assert expected in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    if code == 1 and "server extra" in expected:
        assert (
            "pip install 'powerbandit[server]'" in done.stderr and len(done.stderr.strip().splitlines()) == 1
        )




@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The wheel and the sdist, built from a copy of the tree with the installed setuptools (no network)."""
    pytest.importorskip("build", reason="the dev extra installs 'build'")
    tmp = tmp_path_factory.mktemp("dist")
    src = _source_copy(tmp)
    out = tmp / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--no-isolation",
            "--wheel",
            "--sdist",
            "--outdir",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return wheel, sdist


def test_wheel_contents(built: tuple[Path, Path]) -> None:
    wheel, _ = built
    version = powerbandit.__version__
    assert wheel.name == f"powerbandit-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(f"powerbandit-{version}.dist-info/METADATA").decode()
    for proto in (REPO_ROOT / "protos").rglob("*.proto"):
        assert proto.relative_to(REPO_ROOT / "protos").as_posix() in names, proto
    for package in ("powerbandit", "client_sdk", "optimizer_server", "simulations"):
        assert f"{package}/py.typed" in names
    for name in (*TRACE_FILES, "SHA256SUMS", "README.md"):
        assert f"simulations/data/zeus_nsdi23/{name}" in names
    for name in ("LICENSE", "NOTICE"):
        assert f"powerbandit-{version}.dist-info/licenses/{name}" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "docs/", "deploy/")) for n in names)
    assert f"Version: {version}" in metadata and "License-Expression: Apache-2.0" in metadata
    assert "Provides-Extra: server" in metadata and "Classifier: Typing :: Typed" in metadata
    assert "Project-URL: Documentation" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    base = [line for line in requires if "extra ==" not in line]
    assert base and not any(m in line.lower() for line in base for m in ("numpy", "scipy", "matplotlib"))


def test_sdist_carries_what_the_tests_need(built: tuple[Path, Path]) -> None:
    _, sdist = built
    prefix = f"powerbandit-{powerbandit.__version__}/"
    with tarfile.open(sdist) as tf:
        names = {n.removeprefix(prefix) for n in tf.getnames()}
    for needed in (
        "tests/conftest.py", "tests/helpers.py", "tests/test_packaging.py", "protos/powerbandit/v1/optimizer.proto", "buf.yaml",
        "tools/gen_protos.py", "mkdocs.yml", "docs/index.md", "deploy/docker/Dockerfile", "setup.py",
        "LICENSE", "NOTICE", "CHANGELOG.md", "simulations/data/zeus_nsdi23/SHA256SUMS",
        "examples/train_synthetic_classifier.py", "benchmarks/load.py",
    ):  # fmt: skip
        assert needed in names, needed
    assert not any("__pycache__" in n or n.endswith(".db") for n in names)
