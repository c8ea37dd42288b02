"""``powerbandit run`` as a newcomer met it: the power limit, unusable reports, failed runs, exit, install hints.

Real wrapper and child processes, the replay GPU (300 W in force, 100/200/300 W candidates), a
real server (EmbeddedServer over SQLite) on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client_sdk.client import OptimizerClient
from optimizer_server.server import EmbeddedServer
from powerbandit.v1 import optimizer_pb2 as pb
from tests.helpers import REPO_ROOT, SPEC, _env, _runs, _wrapper

CHILD = """
import json, os, signal, subprocess, sys, time
from pathlib import Path
mode = sys.argv[1]
record = Path(os.environ["CHILD_RECORD"])
record.write_text(json.dumps({k: v for k, v in os.environ.items() if k.startswith("POWERBANDIT_")}))
if mode == "nan":
    print("powerbandit-metric: nan")
    print("powerbandit-epochs: 3")
elif mode == "negative-epochs":
    print("powerbandit-metric: 0.95")
    print("powerbandit-epochs: -3")
elif mode == "garbage-file":
    Path(os.environ["POWERBANDIT_METRIC_FILE"]).write_text("garbage")
elif mode == "corrected":
    print("powerbandit-metric: nan")
    print("powerbandit-metric: 0.95")
    print("powerbandit-epochs: 2")
elif mode == "crash":
    sys.exit(3)
elif mode == "grandchild":
    # a background process that inherits stdout and outlives the command
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stderr=subprocess.DEVNULL)
    Path(str(record) + ".grandchild").write_text(str(sleeper.pid))
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print("ready", flush=True)
    for _ in range(600):
        time.sleep(0.1)
"""


def _command(files: dict[str, Path], mode: str) -> list[str]:  # noqa: F811
    child = files["child"].with_name("newcomer_child.py")
    child.write_text(CHILD)
    return [sys.executable, str(child), mode]


def _run(server: EmbeddedServer, files: dict[str, Path], mode: str) -> subprocess.CompletedProcess[str]:  # noqa: F811
    return subprocess.run(_wrapper(server, files, *SPEC, command=_command(files, mode)), env=_env(files),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip


def test_a_run_asked_to_profile_runs_at_the_limit_in_force(server: EmbeddedServer, files: dict[str, Path]) -> None:  # noqa: F811
    """The first run of a batch size asks for a profile; the wrapper sees no steps, so the 300 W in force holds."""
    done = _run(server, files, "corrected")
    assert done.returncode == 0, done.stderr
    record = json.loads(files["record"].read_text())
    assert record["POWERBANDIT_POWER_LIMIT_W"] == "300"  # not the lowest candidate, 100 W
    assert "power limit 300 W" in done.stderr and "profiling" not in done.stderr
    (run,) = _runs(server)
    assert run.state == pb.RUN_STATE_COMPLETED and run.reached_target and run.power_limit_w == 300
    with OptimizerClient(server.address, timeout_s=10) as client:
        assert not client.get_job("team/wrapped").profiles  # nothing was profiled, so nothing is stored


@pytest.mark.parametrize(
    ("mode", "named"),
    [
        ("nan", "'powerbandit-metric: nan' (not a finite number)"),
        ("negative-epochs", "'powerbandit-epochs: -3' (a negative epoch count)"),
        ("garbage-file", "'garbage'"),
    ],
)
def test_an_unusable_report_fails_the_run_naming_it(
    server: EmbeddedServer, files: dict[str, Path], mode: str, named: str  # noqa: F811
) -> None:
    done = _run(server, files, mode)
    assert done.returncode == 0, done.stderr  # the command's own exit status
    (run,) = _runs(server)
    assert run.state == pb.RUN_STATE_FAILED and not run.reached_target, run
    assert "report was unusable" in run.reason and named in run.reason, run.reason
    assert "failed: unusable report from the command" in done.stderr and "target reached" not in done.stderr


def test_a_failed_run_keeps_the_power_limit_it_ran_at(server: EmbeddedServer, files: dict[str, Path]) -> None:  # noqa: F811
    done = _run(server, files, "crash")
    assert done.returncode == 3, done.stderr
    (run,) = _runs(server)
    assert run.state == pb.RUN_STATE_FAILED and run.power_limit_w == 300  # was stored as 0


def test_sigterm_exits_promptly_although_a_grandchild_holds_the_output(
    server: EmbeddedServer, files: dict[str, Path]  # noqa: F811
) -> None:
    wrapper = subprocess.Popen(_wrapper(server, files, *SPEC, command=_command(files, "grandchild")), env=_env(files),
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL)  # fmt: skip
    grandchild = Path(str(files["record"]) + ".grandchild")
    try:
        assert wrapper.stdout is not None
        assert wrapper.stdout.readline().strip() == "ready"
        signalled_at = time.monotonic()
        wrapper.send_signal(signal.SIGTERM)
        wrapper.wait(timeout=30)
        exit_s = time.monotonic() - signalled_at
        _, stderr = wrapper.communicate(timeout=10)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()
        if grandchild.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(grandchild.read_text()), signal.SIGKILL)
    assert wrapper.returncode == 128 + signal.SIGTERM, stderr
    assert exit_s < 6, f"took {exit_s:.1f} s"  # was ~10 s: the wrapper waited for the pipe's end
    assert "output is still open" in stderr
    (run,) = _runs(server)
    assert run.state == pb.RUN_STATE_FAILED and run.reason.startswith("interrupted by SIGTERM")


BLOCK = """
import importlib.abc, runpy, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize(
    ("blocked", "code", "hint"),
    [
        ("lightning,pytorch_lightning", "import client_sdk.lightning",
         "needs Lightning (the lightning or pytorch_lightning package), which is not installed: "
         "pip install 'powerbandit[lightning]'"),
        ("torch", "sys.argv = ['x', '--help']; runpy.run_path('examples/train_synthetic_classifier.py', "
         "run_name='__main__')", "error: this example needs PyTorch"),
    ],
)  # fmt: skip
def test_a_missing_extra_names_its_install_command(blocked: str, code: str, hint: str) -> None:
    done = subprocess.run([sys.executable, "-c", BLOCK + code, blocked], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
    assert done.returncode != 0 and hint in done.stderr, done.stderr
    if blocked == "torch":
        assert "pip install 'powerbandit[torch]'" in done.stderr and "Traceback" not in done.stderr
