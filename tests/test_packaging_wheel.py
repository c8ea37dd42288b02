"""The wheel as a user gets it: fresh virtualenvs, an empty working directory, no source tree, no ../shared.

Opt-in (``pytest -m wheel tests/test_packaging_wheel.py``): it runs ``pip wheel .``, builds the sdist, and
installs into two new virtualenvs from the package index (about 3-4 minutes on a 2-core machine with a
warm pip cache). It checks:

* ``pip install 'powerbandit[server]'``: ``powerbandit --version``, ``powerbandit demo`` on the shipped
  traces, ``powerbandit simulate --all --policy zeus powerbandit --seeds 1-2``, and the tests run from the
  unpacked sdist;
* ``pip install powerbandit`` (training side): no numpy, scipy, matplotlib or Pillow installed; the SDK
  imports and completes a replay-GPU run against a server started from the other environment; the
  server commands say which extra to install.

The site-packages sizes of both are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import powerbandit
from tests.helpers import _source_copy

pytestmark = pytest.mark.wheel

SDK_RUN = """
import json, sys
from client_sdk.client import Job, OptimizerClient
import client_sdk.nvml, client_sdk.run
from client_sdk.replay import ReplayGpu

table = {32: {100.0: (90.0, 30.0), 200.0: (170.0, 20.0)}, 64: {100.0: (95.0, 20.0), 200.0: (180.0, 12.0)}}
job = Job("wheel/sdk-only", batch_sizes=(32, 64), default_batch_size=64, target_metric=0.9, max_epochs=5, seed=1)
with OptimizerClient(sys.argv[1], timeout_s=10) as client:
    with client.run(job, ReplayGpu(table, model="Replay A40"), steps_per_epoch=4, heartbeat=False) as run:
        for epoch in range(1, 6):
            for _ in range(4):
                run.step()
            if run.epoch_end(0.95 if epoch == 3 else None):
                break
    done = run.completed_run
heavy = sorted(m for m in ("numpy", "scipy", "matplotlib", "PIL") if m in sys.modules)
print(json.dumps({"batch_size": done.batch_size, "energy_j": done.energy_j, "reached": done.reached_target,
                  "heavy_modules": heavy}))
"""


def _run(cmd: list[str], cwd: Path, timeout_s: float = 600, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
    )
    assert done.returncode == 0, f"{cmd}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


def _site_packages_mb(venv: Path) -> float:
    (site,) = venv.glob("lib/python3*/site-packages")
    return sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 1e6


def _clean_env() -> dict[str, str]:
    """The environment without anything that would point the installed package back at the checkout."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "POWERBANDIT_TRACE_DIR", "VIRTUAL_ENV")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``pip wheel .`` and ``python -m build --sdist`` of a copy of the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp)
    out = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(src)], tmp, env=_clean_env())
    _run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), str(src)], tmp)
    (wheel,) = out.glob("powerbandit-*.whl")
    (sdist,) = out.glob("powerbandit-*.tar.gz")
    return wheel, sdist


def _venv(root: Path, requirement: str) -> Path:
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], root, env=_clean_env())
    _run([str(venv / "bin" / "pip"), "install", "-q", requirement], root, timeout_s=900, env=_clean_env())
    return venv


@pytest.fixture(scope="module")
def server_venv(tmp_path_factory: pytest.TempPathFactory, dists: tuple[Path, Path]) -> Path:
    """A fresh virtualenv with ``powerbandit[server]`` from the wheel."""
    return _venv(tmp_path_factory.mktemp("server-env"), f"powerbandit[server] @ {dists[0].as_uri()}")


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory: pytest.TempPathFactory, dists: tuple[Path, Path]) -> Path:
    """A fresh virtualenv with the plain ``powerbandit`` wheel (the training side)."""
    return _venv(tmp_path_factory.mktemp("sdk-env"), f"powerbandit @ {dists[0].as_uri()}")


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    """A working directory with nothing in it and nothing beside it."""
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def test_server_install_runs_from_an_empty_directory(server_venv: Path, empty_dir: Path) -> None:
    bin_dir = server_venv / "bin"
    env = _clean_env()
    assert _run([str(bin_dir / "powerbandit"), "--version"], empty_dir, env=env).strip() == (
        f"powerbandit {powerbandit.__version__}"
    )
    demo = _run([str(bin_dir / "powerbandit"), "demo", "--recurrences", "40"], empty_dir, env=env)
    assert "measured traces from" in demo and str(server_venv) in demo and "converged to" in demo
    started = time.perf_counter()
    sim = _run(
        [
            str(bin_dir / "powerbandit"),
            "simulate",
            "--all",
            "--policy",
            "zeus",
            "powerbandit",
            "--seeds",
            "1-2",
        ],
        empty_dir,
        env=env,
    )
    assert "96 simulations" in sim, sim[-2000:]
    print(f"\nsimulate --all --seeds 1-2 from the wheel: {time.perf_counter() - started:.0f} s")
    print(f"site-packages with powerbandit[server]: {_site_packages_mb(server_venv):.0f} MB")
    assert sorted(os.listdir(empty_dir)) == []  # nothing written where it was run


def test_tests_run_from_the_sdist(server_venv: Path, dists: tuple[Path, Path], tmp_path: Path) -> None:
    with tarfile.open(dists[1]) as tf:
        tf.extractall(tmp_path, filter="data")
    (root,) = tmp_path.glob("powerbandit-*")
    pip = str(server_venv / "bin" / "pip")
    _run(
        [pip, "install", "-q", "pytest>=8", "pytest-asyncio>=0.23", "hypothesis>=6.100"],
        tmp_path,
        env=_clean_env(),
    )
    out = _run(
        [str(server_venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/simulations/test_simulator.py", "tests/client_sdk/test_sdk.py", "tests/powerbandit/cli/test_cli.py", "tests/test_packaging.py",
         "-k", "not wheel_contents and not sdist_carries"],
        root, env=_clean_env(),
    )  # fmt: skip
    assert " passed" in out and " failed" not in out, out[-2000:]


@pytest.fixture
def running_server(server_venv: Path, tmp_path: Path) -> Iterator[str]:
    """``powerbandit serve`` from the server environment on a free loopback port; stopped after the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(server_venv / "bin" / "powerbandit"), "serve", "--db", f"sqlite:///{tmp_path / 'pb.db'}",
         "--listen", address],
        cwd=tmp_path, env=_clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            health = subprocess.run(
                [str(server_venv / "bin" / "powerbandit"), "health", "--server", address, "--timeout-s", "2"],
                capture_output=True, text=True, timeout=30, env=_clean_env(), check=False,
            )  # fmt: skip
            if health.returncode == 0:
                break
            assert proc.poll() is None and time.monotonic() < deadline, health.stderr
            time.sleep(0.3)
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_sdk_only_install_is_slim_and_runs_a_replay_run(
    sdk_venv: Path, running_server: str, empty_dir: Path
) -> None:
    env = _clean_env()
    python = str(sdk_venv / "bin" / "python")
    installed = json.loads(_run([python, "-m", "pip", "list", "--format", "json"], empty_dir, env=env))
    names = {p["name"].lower() for p in installed}
    assert not names & {"numpy", "scipy", "matplotlib", "pillow", "fonttools", "prometheus-client"}, names
    result = json.loads(
        _run([python, "-c", SDK_RUN, running_server], empty_dir, env=env).strip().splitlines()[-1]
    )
    assert result["reached"] and result["energy_j"] > 0 and result["heavy_modules"] == []
    cli = str(sdk_venv / "bin" / "powerbandit")
    assert _run([cli, "health", "--server", running_server], empty_dir, env=env).strip().endswith("SERVING")
    listing = _run([cli, "jobs", "list", "--server", running_server], empty_dir, env=env)
    assert "wheel/sdk-only" in listing
    refused = subprocess.run(
        [cli, "demo"], cwd=empty_dir, capture_output=True, text=True, timeout=60, env=env
    )
    assert refused.returncode == 1 and "pip install 'powerbandit[server]'" in refused.stderr
    assert "Traceback" not in refused.stderr
    print(f"\nsite-packages with the plain powerbandit (SDK): {_site_packages_mb(sdk_venv):.0f} MB")
    assert shutil.which("powerbandit", path=str(sdk_venv / "bin"))
