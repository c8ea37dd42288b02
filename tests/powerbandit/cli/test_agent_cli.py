"""``powerbandit agent`` as a newcomer meets it: exit statuses, messages, failed starts, leases and JSON.

Real agent processes on Unix sockets and real CLI processes (helpers from ``tests/helpers.py``);
the simulated GPUs are the only fake.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from powerbandit.agent.v1 import agent_pb2 as pb
from tests.helpers import REPO_ROOT, Agent, limits_w, start_agent, start_holder, stop, wait_for


def cli(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``powerbandit agent ARGS`` to completion."""
    return subprocess.run([sys.executable, "-m", "powerbandit", "agent", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout_s)  # fmt: skip


def agent_env(agent: Agent, **extra: str) -> dict[str, str]:
    """The environment of a caller of ``agent``, without GPU visibility unless ``extra`` sets it."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")}
    return {**env, "POWERBANDIT_AGENT_SOCKET": agent.socket, **extra}


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single ``error: ...`` line a failed command printed (and no traceback)."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_problems_exit_1_and_flag_mistakes_exit_2(agent: Agent, root: Path) -> None:
    env = agent_env(agent, CUDA_VISIBLE_DEVICES="0")
    unreachable = cli("status", "--socket", str(root / "nobody-here.sock"))
    assert unreachable.returncode == 1 and "not reachable" in one_error_line(unreachable)
    bogus = cli("release", "bogus", env=env)
    assert bogus.returncode == 1 and "(NOT_FOUND)" in one_error_line(bogus)
    holder, line = start_holder(agent, ["0"], 150, env={"CUDA_VISIBLE_DEVICES": "0"})
    try:
        assert line.startswith("held"), line
        busy = cli("set-limit", "--gpu", "0", "--watts", "200", "--lease-s", "60", env=env)
        assert busy.returncode == 1 and "(FAILED_PRECONDITION)" in one_error_line(busy)
    finally:
        stop(holder, signal.SIGKILL)
    # Flags it cannot take: 2, and the message names the flag's unit.
    zero_lease = cli("set-limit", "--gpu", "0", "--watts", "150", "--lease-s", "0", env=env)
    assert zero_lease.returncode == 2
    error = zero_lease.stderr.strip().splitlines()[-1]
    assert error.endswith("argument --lease-s: '0' must be a positive number of seconds (e.g. 60)"), error
    bad_watts = cli("set-limit", "--gpu", "0", "--watts", "lots", "--lease-s", "60", env=env)
    assert bad_watts.returncode == 2 and "'lots' is not a number of watts" in bad_watts.stderr
    bounds = cli("serve", "--socket", str(root / "b.sock"), "--state-dir", str(root / "b-state"),
                 "--simulate-gpus", "1", "--min-watts", "200", "--max-watts", "100")  # fmt: skip
    assert bounds.returncode == 2 and "above --max-watts" in one_error_line(bounds)
    mig = cli("serve", "--socket", str(root / "b.sock"), "--state-dir", str(root / "b-state"),
              "--simulate-gpus", "2", "--simulate-mig", "2")  # fmt: skip
    assert mig.returncode == 2 and "--simulate-mig 2 is not a GPU index" in one_error_line(mig)
    bad_range = cli("serve", "--socket", str(root / "b.sock"), "--state-dir", str(root / "b-state"),
                    "--simulate-gpus", "2", "--simulate-range", "300:100")  # fmt: skip
    assert bad_range.returncode == 2 and "--simulate-range" in one_error_line(bad_range)
    assert not (root / "b-state").exists() and not (root / "b.sock").exists()


def test_simulate_gpus_0_is_refused_and_failed_starts_leave_no_folders(agent: Agent, root: Path) -> None:
    fresh = root / "fresh"
    zero = cli("serve", "--socket", str(fresh / "a.sock"), "--state-dir", str(fresh / "state"), "--simulate-gpus", "0")
    assert zero.returncode == 2 and "--simulate-gpus" in zero.stderr and ">= 1" in zero.stderr, zero.stderr
    assert not fresh.exists()
    # The socket is the running agent's: the start fails after creating the state folder and the GPU file.
    busy = cli("serve", "--socket", agent.socket, "--state-dir", str(fresh / "deep" / "state"),
               "--simulate-gpus", "2")  # fmt: skip
    assert busy.returncode == 1 and "another agent is already listening" in one_error_line(busy)
    assert not fresh.exists()
    # A state folder that was there before a failed start stays, with what was in it.
    kept = root / "kept"
    kept.mkdir()
    (kept / "note").write_text("mine")
    again = cli("serve", "--socket", agent.socket, "--state-dir", str(kept), "--simulate-gpus", "2",
                "--simulate-state", str(root / "new" / "gpus.json"))  # fmt: skip
    assert again.returncode == 1, again.stderr
    assert (kept / "note").read_text() == "mine" and not (root / "new").exists()


def test_serve_without_nvml_says_what_the_agent_needs(root: Path) -> None:
    from client_sdk.devices.access import load_nvml
    from client_sdk.gpu import GpuUnavailableError

    try:
        load_nvml().nvmlShutdown()
    except GpuUnavailableError:
        pass
    else:
        pytest.skip("NVML works here: `serve` without --simulate-gpus would start a real agent")
    done = cli("serve", "--socket", str(root / "n" / "a.sock"), "--state-dir", str(root / "n" / "state"))
    line = one_error_line(done)
    assert done.returncode == 1
    assert "The agent cannot reach the GPUs" in line and "--simulate-gpus N" in line and "nvidia-smi" in line
    assert "ReplayGpu" not in line and "replay" not in line
    assert not (root / "n").exists()


def test_not_entitled_caller_is_told_how_to_become_entitled(agent: Agent) -> None:
    denied = cli("set-limit", "--gpu", "0", "--watts", "150", "--lease-s", "60", "--hold", env=agent_env(agent))
    line = one_error_line(denied)
    assert denied.returncode == 1 and "(PERMISSION_DENIED)" in line and "not entitled to GPU(s) 0" in line
    assert "CUDA_VISIBLE_DEVICES=0 powerbandit agent set-limit --gpu 0" in line, line
    assert "CUDA context" in line and "--entitlement env-or-context" in line, line
    assert limits_w(agent.gpus_file) == [300.0, 300.0]


def test_set_limit_without_hold_lives_as_long_as_the_calling_process(agent: Agent) -> None:
    helptext = cli("set-limit", "--help").stdout
    assert "ends when that process exits" in " ".join(helptext.split()), helptext
    # A calling shell that waits for a line on stdin, then exits: the lease lives exactly as long.
    script = (f"{sys.executable} -m powerbandit agent set-limit --gpu 1 --watts 160 --lease-s 60; "
              "echo rc=$?; read line")  # fmt: skip
    shell = subprocess.Popen(["sh", "-c", script], cwd=REPO_ROOT, env=agent_env(agent, CUDA_VISIBLE_DEVICES="1"),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        assert shell.stdout is not None and shell.stdin is not None
        said = shell.stdout.readline()
        assert shell.stdout.readline().strip() == "rc=0"
        assert f"held by the calling process, pid {shell.pid} (sh)" in said, said
        assert "ends as soon as that process exits" in said and "--hold" in said, said
        assert limits_w(agent.gpus_file) == [300.0, 160.0]  # the command exited; its shell still holds it
        shell.stdin.write("done\n")
        shell.stdin.flush()
        shell.wait(10)
        wait_for(lambda: limits_w(agent.gpus_file) == [300.0, 300.0], 2.0)
    finally:
        stop(shell, signal.SIGKILL)


def test_hold_exits_soon_with_a_message_when_the_agent_restarts(root: Path) -> None:
    first = start_agent(root)
    hold = subprocess.Popen(
        [sys.executable, "-m", "powerbandit", "agent", "set-limit", "--gpu", "0", "--watts", "150",
         "--lease-s", "60", "--hold"],
        cwd=REPO_ROOT, env=agent_env(first, CUDA_VISIBLE_DEVICES="0"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    second: Agent | None = None
    try:
        assert hold.stdout is not None
        assert "held by this process" in hold.stdout.readline()
        assert limits_w(first.gpus_file) == [150.0, 300.0]
        stop(first.proc, signal.SIGKILL)  # the limit stays until an agent starts again
        t0 = time.monotonic()
        second = start_agent(root)
        assert limits_w(second.gpus_file) == [300.0, 300.0]  # restored at start-up from the journal
        hold.wait(10)  # a renewal every lease_s / 3 would have taken 20 s
        took_s = time.monotonic() - t0
        out = hold.stdout.read()
        assert hold.returncode == 1 and took_s < 10, (took_s, out)
        assert "error: lease " in out and "is gone: the agent at" in out and "stopped or restarted" in out, out
        assert "Traceback" not in out
    finally:
        stop(hold, signal.SIGKILL)
        if second is not None:
            stop(second.proc)
        stop(first.proc)


def test_status_json_lists_every_gpu_field_in_the_same_order(agent: Agent) -> None:
    holder, line = start_holder(agent, ["1"], 150, env={"CUDA_VISIBLE_DEVICES": "1"})
    try:
        assert line.startswith("held"), line
        done = cli("status", "--json", env=agent_env(agent))
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
    finally:
        stop(holder, signal.SIGKILL)
    expected = [f.json_name for f in pb.GpuStatus.DESCRIPTOR.fields]
    assert [list(g) for g in status["gpus"]] == [expected, expected]
    assert list(status) == [f.json_name for f in pb.GetStatusResponse.DESCRIPTOR.fields]
    assert status["gpus"][1]["currentLimitW"] == 150.0 and status["gpus"][0]["leaseId"] == ""
