"""Helpers shared by the test modules (fixtures live in conftest.py, which imports these)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from client_sdk.client import Job, OptimizerClient
from client_sdk.replay import ReplayGpu
from optimizer_server.policy.base import (
    ProfilePoint,
)
from optimizer_server.server import EmbeddedServer
from powerbandit.agent.client import AgentClient, AgentError
from powerbandit.cli import operator_cli
from powerbandit.cli.dashboard.server import DashboardServer, JobCache
from powerbandit.cli.demo import synthetic_job
from powerbandit.cli.errors import run_command
from powerbandit.cli.main import build_parser
from powerbandit.v1 import optimizer_pb2 as pb
from simulations.traces import TraceJob, default_trace_dir

REPO_ROOT = Path(__file__).resolve().parent.parent


TRACE_DIR = default_trace_dir()
"""The published traces: the copy shipped in the package, or ``$POWERBANDIT_TRACE_DIR``."""


# A small replay table: batch size -> power limit -> (average power W, seconds per epoch).
SMALL_TABLE = {
    32: {100.0: (90.0, 30.0), 200.0: (170.0, 20.0), 300.0: (240.0, 18.0)},
    64: {100.0: (95.0, 20.0), 200.0: (180.0, 12.0), 300.0: (250.0, 11.0)},
    128: {100.0: (98.0, 16.0), 200.0: (190.0, 9.0), 300.0: (260.0, 8.5)},
}


def small_job(job_id: str = "team/job", **overrides: object) -> Job:
    """A job matching :data:`SMALL_TABLE`."""
    values: dict[str, object] = {
        "job_id": job_id,
        "batch_sizes": (32, 64, 128),
        "default_batch_size": 64,
        "target_metric": 0.9,
        "max_epochs": 20,
        "seed": 7,
    }
    values.update(overrides)
    return Job(**values)  # type: ignore[arg-type]


def gpu_pb(model: str = "NVIDIA A40", count: int = 1) -> pb.GpuInfo:
    """A Suggest request's GPU field."""
    return pb.GpuInfo(
        model=model, count=count, min_power_limit_w=100, max_power_limit_w=300, power_limits_w=[100, 200, 300]
    )


# ----------------------------------------------------------------------------------- PostgreSQL
def _postgres_bin() -> Path | None:
    import shutil

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """A throwaway PostgreSQL cluster in a temporary directory, on a free loopback port."""

    def __init__(self, root: Path) -> None:
        import os
        import subprocess

        bindir = _postgres_bin()
        if bindir is None:
            pytest.skip("PostgreSQL is not installed (initdb not found); .ci/run installs it with apt-get")
        self.bindir = bindir
        self.data = root / "pgdata"
        self.socket_dir = root / "sock"
        self.socket_dir.mkdir()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._prefix: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
            import shutil

            shutil.chown(root, "postgres")
            shutil.chown(self.socket_dir, "postgres")
            self._prefix = ["runuser", "-u", "postgres", "--"]
        run = lambda *args: subprocess.run([*self._prefix, *args], check=True, capture_output=True, timeout=120)  # noqa: E731
        run(str(bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        opts = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        run(str(bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-w", "-l", str(root / "pg.log"), "start")
        self._run = run
        self._databases = 0

    def new_database(self) -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        self._databases += 1
        name = f"test_{self._databases}"
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stop the cluster (fast shutdown)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


TRACE = synthetic_job()


MAX_W = max(TRACE.power_limits)


SYNTH = Job(
    "team/synth", TRACE.batch_sizes, TRACE.default_batch_size, TRACE.target_metric, TRACE.max_epochs, seed=3
)


# Default batch size 1024 never reaches the target: no default configuration to compare with.
NO_DEFAULT = Job("team/nodefault", TRACE.batch_sizes, 1024, TRACE.target_metric, TRACE.max_epochs, seed=4)


# A process that may not set power limits: every run at the maximum, so b0 is measured there directly.
PINNED = Job("team/pinned", TRACE.batch_sizes, 512, TRACE.target_metric, TRACE.max_epochs, seed=5)


FRESH = Job("team/fresh", TRACE.batch_sizes, 512, TRACE.target_metric, TRACE.max_epochs, seed=6)


def replay(client: OptimizerClient, job: Job, trace: TraceJob, runs: int, model: str, *, can_set: bool = True,
           seed: int = 1) -> None:  # fmt: skip
    """Replay ``runs`` runs of ``job`` through the SDK, as ``powerbandit demo`` does."""
    table = {
        b: {p: (pt.average_power_w, pt.time_per_epoch_s) for p, pt in trace.power[b].items()}
        for b in trace.batch_sizes
    }
    rng = np.random.default_rng(seed)
    steps = 4 * len(trace.power_limits)
    for _ in range(runs):
        gpu = ReplayGpu(table, model=model, can_set_power_limit=can_set)
        with client.run(job, gpu, steps_per_epoch=steps, heartbeat=False) as r:
            seeds = trace.target_epochs[r.batch_size]
            target = seeds[int(rng.integers(len(seeds)))]
            for epoch in range(1, trace.max_epochs + 1):
                for _ in range(steps):
                    r.step()
                if r.epoch_end(trace.target_metric if epoch == target else None):
                    break


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Parse ``argv`` with the real parser and run it in-process as ``main`` does: (exit code, stdout, stderr)."""
    args = build_parser().parse_args(argv)
    code = run_command(lambda: operator_cli.run(args))
    out, err = capsys.readouterr()
    return code, out, err


REPO_ROOT = Path(__file__).resolve().parents[1]


NOBODY = 65534


def limits_w(state: Path) -> list[float]:
    """The simulated GPUs' power limits, W, straight from the "hardware" file."""
    return [g["limit_mw"] / 1000 for g in json.loads(state.read_text())["gpus"]]


@dataclass
class Agent:
    """A running agent process and its paths."""

    proc: subprocess.Popen[str]
    socket: str
    state_dir: Path
    gpus_file: Path
    args: list[str]

    def client(self) -> AgentClient:
        return AgentClient(self.socket, timeout_s=10)

    def uuids(self) -> list[str]:
        return [g["uuid"] for g in json.loads(self.gpus_file.read_text())["gpus"]]


def start_agent(root: Path, *extra: str, gpus: int = 2) -> Agent:
    """Start ``powerbandit agent serve`` on simulated GPUs; returns once it answers."""
    sock = str(root / "agent.sock")
    state_dir = root / "state"
    gpus_file = root / "gpus.json"
    args = [
        sys.executable, "-m", "powerbandit", "agent", "serve", "--socket", sock, "--socket-mode", "0666",
        "--state-dir", str(state_dir), "--simulate-gpus", str(gpus), "--simulate-range", "100:300",
        "--simulate-state", str(gpus_file), *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    agent = Agent(proc, sock, state_dir, gpus_file, args)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"agent exited: {proc.stdout.read() if proc.stdout else ''}")
        if os.path.exists(sock):
            client = agent.client()
            try:
                client.status()
                return agent
            except AgentError:
                pass
            finally:
                client.close()
        time.sleep(0.05)
    stop(agent.proc)
    raise AssertionError("agent did not start within 20 s")


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    """Stop a process we started; returns its output."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.stdout.read() if proc.stdout else ""






CHILD = """
import json, os, signal, sys, time
mode = sys.argv[1]
Path = __import__("pathlib").Path
record = {"argv": sys.argv[2:], "env": {k: v for k, v in os.environ.items() if k.startswith("POWERBANDIT_")}}
Path(os.environ["CHILD_RECORD"]).write_text(json.dumps(record))
if mode == "print":
    print("epoch 1 loss 0.3")
    print("powerbandit-metric: 0.5")
    print("powerbandit-metric: 0.95")
    print("powerbandit-epochs: 3")
elif mode == "file":
    Path(os.environ["POWERBANDIT_METRIC_FILE"]).write_text(json.dumps({"metric": 0.5, "epochs": 2}))
elif mode == "crash":
    print("Traceback: CUDA out of memory", file=sys.stderr)
    sys.exit(3)
elif mode == "wait":
    got = []
    def handler(signum, frame):
        got.append(signal.Signals(signum).name)
        time.sleep(0.3)  # a second delivery would land here
        Path(os.environ["CHILD_RECORD"] + ".signals").write_text(json.dumps(got))
        sys.exit(128 + signum)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    print("ready", flush=True)
    for _ in range(600):
        time.sleep(0.1)
"""






def _wrapper(server: EmbeddedServer, files: dict[str, Path], *flags: str, mode: str = "print",
             command: list[str] | None = None) -> list[str]:  # fmt: skip
    command = command or [sys.executable, str(files["child"]), mode, "--batch-size", "{batch_size}", "--id={run_id}"]
    return [sys.executable, "-c", BLOCK_SERVER_EXTRA, "run", "--job", "team/wrapped", "--server", server.address,
            "--replay", str(files["table"]), *flags, "--", *command]  # fmt: skip


def _env(files: dict[str, Path]) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CHILD_RECORD": str(files["record"])}
    env.pop("POWERBANDIT_FAIL_OPEN", None)
    return env


SPEC = ["--batch-sizes", "32,64,128", "--default-batch-size", "64", "--target-metric", "0.9", "--max-epochs", "20"]


def _runs(server: EmbeddedServer) -> list[pb.Run]:
    with OptimizerClient(server.address, timeout_s=10) as client:
        return list(client.get_job("team/wrapped").runs)


def write_tiny_trace(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary_train.csv").write_text(
        "dataset,network,batch_size,optimizer,learning_rate,run,target_metric,target_epoch\n"
        "cifar100,shufflenetv2,8,adadelta,0.1,1,0.6,10\n"
        "cifar100,shufflenetv2,8,adadelta,0.1,2,0.6,12\n"
        "cifar100,shufflenetv2,16,adadelta,0.1,1,0.6,6\n"
        "cifar100,shufflenetv2,16,adadelta,0.1,2,0.6,\n"
        "cifar100,shufflenetv2,32,adadelta,0.1,1,0.6,7\n"
        "cifar100,shufflenetv2,32,adadelta,0.1,2,0.6,nan\n"
        "cifar100,shufflenetv2,8,adadelta,0.1,1,0.5,8\n"
    )
    header = "dataset,network,batch_size,optimizer,power_limit,time_per_epoch,average_power\n"
    rows = [
        f"cifar100,shufflenetv2,{b},adadelta,{p},{t},{w}"
        for b, p, t, w in [
            (8, 100, 20.0, 100.0),
            (8, 200, 10.0, 180.0),
            (16, 100, 16.0, 90.0),
            (16, 200, 8.0, 190.0),
            (32, 100, 9.0, 95.0),
            (32, 200, 5.0, 195.0),
        ]
    ]
    (root / "summary_power_v100.csv").write_text(header + "\n".join(rows) + "\n")
    return root


# batch size -> power limit -> (average power W, seconds per epoch); every seed needs the epochs below
POWER = {
    8: {100.0: (70.0, 15.0), 200.0: (150.0, 10.0)},
    16: {100.0: (80.0, 12.0), 200.0: (170.0, 6.0)},
    32: {100.0: (90.0, 5.0), 200.0: (190.0, 4.0)},
}


EPOCHS = {8: 10, 16: 10, 32: 30}


def budget_job(**overrides: object) -> TraceJob:
    """Default b=8 at 200 W takes 100 s. Energy: b16@100 W 9600 J in 120 s, b16@200 W 10200 J in 60 s,
    b8@100 W 10500 J in 150 s, b8@200 W 15000 J; b32 needs three times the epochs."""
    values: dict[str, object] = dict(
        gpu="v100",
        workload="cifar100",
        target_metric=0.6,
        max_epochs=100,
        default_batch_size=8,
        batch_sizes=(8, 16, 32),
        power_limits=(100.0, 200.0),
        target_epochs={b: (k, k) for b, k in EPOCHS.items()},
        power={b: {p: ProfilePoint(p, w, t) for p, (w, t) in row.items()} for b, row in POWER.items()},
        eta=1.0,
        recurrences=30,
    )
    values.update(overrides)
    return TraceJob(**values)  # type: ignore[arg-type]


BLOCK_SERVER_EXTRA = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"numpy", "matplotlib", "grpc_reflection", "prometheus_client"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
sys.argv = ["powerbandit", *sys.argv[1:]]
runpy.run_module("powerbandit", run_name="__main__")
"""


# -------------------------------------------------------------------------------- wheel and sdist
def _source_copy(tmp_path: Path) -> Path:
    """The checkout without its virtualenv, git data and build leftovers (builds never touch the tree)."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns(
        ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
        ".hypothesis", "site", "*.db", "*.db-wal", "*.db-shm",
    )  # fmt: skip
    shutil.copytree(REPO_ROOT, src, ignore=ignore)
    return src


class Dashboard:
    """A dashboard HTTP server on a thread, reading ``address`` through the SDK."""

    def __init__(self, address: str, *, token: str | None = None) -> None:
        self.client = OptimizerClient(address, timeout_s=10)
        self.http = DashboardServer(("127.0.0.1", 0), JobCache(self.client), refresh_s=1.0, viewer_token=token)
        self.thread = threading.Thread(target=self.http.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.http.port}"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(timeout=10)
        self.client.close()


HOLDER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from powerbandit.agent.client import AgentClient, AgentError
    client = AgentClient({sock!r})
    try:
        lease = client.set_power_limit({gpus!r}, float({watts!r}), {lease_s!r}, lease_id={lease_id!r}).lease
    except AgentError as exc:
        print("refused", exc.code.name, exc, flush=True)
        sys.exit(3)
    print("held", lease.lease_id, lease.holder_pid, flush=True)
    time.sleep(120)
    """
)


def start_holder(
    agent: Agent,
    gpus: list[str],
    watts: float,
    *,
    lease_s: float = 60.0,
    lease_id: str = "",
    env: dict[str, str] | None = None,
    as_nobody: bool = False,
) -> tuple[subprocess.Popen[str], str]:
    """A client process that takes a lease and sleeps; returns it and its first output line."""
    code = HOLDER.format(repo=str(REPO_ROOT), sock=agent.socket, gpus=gpus, watts=str(watts), lease_s=lease_s,
                         lease_id=lease_id)  # fmt: skip
    cmd = [sys.executable, "-c", code]
    if as_nobody:
        cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]
    child_env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")}
    child_env.update(env or {})
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    return proc, line


def wait_for(predicate, timeout_s: float) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``predicate()`` held (polling every 10 ms); fails after ``timeout_s``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout_s} s")


# ----------------------------------------------------------------------------------------- TLS
def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """``(cert.pem, key.pem)`` in ``directory``: a one-day certificate for localhost and 127.0.0.1,
    made with ``openssl`` (the test is skipped where it cannot make one)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {made.stderr[-200:]!r}")
    return cert, key


# ----------------------------------------------------------------------------------------- CLI
def all_parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``("powerbandit jobs show", parser)`` for the command and every subcommand, depth first."""
    from powerbandit.cli.main import build_parser

    stack = [("powerbandit", build_parser())]
    while stack:
        name, parser = stack.pop()
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend((f"{name} {sub}", p) for sub, p in action.choices.items())


def dashboard_url(proc: subprocess.Popen[str]) -> str:
    """The ``http://127.0.0.1:PORT`` a starting ``powerbandit dashboard`` prints on its first line
    (its stderr in the failure message when the line does not name one)."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    assert match, line + (proc.stderr.read() if proc.stderr else "")
    return f"http://127.0.0.1:{match.group(1)}"
