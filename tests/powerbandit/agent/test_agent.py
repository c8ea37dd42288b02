"""The node agent as a real process on a real Unix socket; the simulated GPUs are the only fake.

Each test starts ``powerbandit agent serve --simulate-gpus ...`` in a short temporary directory,
drives it with real client processes (whose peer credentials, environment and death are real), and
reads the simulated "hardware" file to see what the GPUs really are at.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest

from client_sdk.devices.simulated import SimulatedBackend
from powerbandit.agent.client import AgentError
from tests.helpers import (
    HOLDER,
    NOBODY,
    REPO_ROOT,
    Agent,
    limits_w,
    start_agent,
    start_holder,
    stop,
    wait_for,
)


def test_holder_sigkilled_restores_within_2_s(agent: Agent) -> None:
    holder, line = start_holder(agent, ["0"], 150, env={"CUDA_VISIBLE_DEVICES": "0"})
    try:
        assert line.startswith("held"), line
        assert limits_w(agent.gpus_file) == [150.0, 300.0]
        journal = json.loads((agent.state_dir / "originals.json").read_text())["originals"]
        assert [e["original_mw"] for e in journal.values()] == [300_000]  # written before the change
        holder.kill()
        holder.wait(5)
        elapsed = wait_for(lambda: limits_w(agent.gpus_file) == [300.0, 300.0], 2.0)
        assert elapsed < 2.0
        client = agent.client()
        gpu0 = client.status().gpus[0]
        assert gpu0.lease_id == "" and gpu0.current_limit_w == 300.0 and gpu0.original_limit_w == 0
        client.close()
        assert json.loads((agent.state_dir / "originals.json").read_text())["originals"] == {}
    finally:
        stop(holder, signal.SIGKILL)


def test_lease_lapse_restores(agent: Agent) -> None:
    holder, line = start_holder(agent, ["1"], 120, lease_s=0.5, env={"CUDA_VISIBLE_DEVICES": "1"})
    try:
        assert line.startswith("held"), line
        assert limits_w(agent.gpus_file) == [300.0, 120.0]
        wait_for(lambda: limits_w(agent.gpus_file) == [300.0, 300.0], 3.0)
        assert holder.poll() is None  # the holder is alive: the lapse did it
        client = agent.client()
        lease_id = line.split()[1]
        with pytest.raises(AgentError, match="lapsed") as info:
            client.renew(lease_id, 10)
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        client.close()
    finally:
        stop(holder, signal.SIGKILL)


def test_agent_sigkilled_then_restarted_restores_at_start_up(root: Path) -> None:
    agent = start_agent(root)
    holder, line = start_holder(agent, ["0", "1"], 200, env={"CUDA_VISIBLE_DEVICES": "0,1"})
    try:
        assert line.startswith("held"), line
        stop(agent.proc, signal.SIGKILL)
        assert limits_w(agent.gpus_file) == [200.0, 200.0]  # the killed agent could not restore
        again = start_agent(root)
        try:
            assert limits_w(again.gpus_file) == [300.0, 300.0]  # restored before serving
            assert json.loads((again.state_dir / "originals.json").read_text())["originals"] == {}
        finally:
            out = stop(again.proc)
        assert "restored 2 GPU(s) a previous agent left changed" in out
    finally:
        stop(holder, signal.SIGKILL)
        stop(agent.proc, signal.SIGKILL)


def test_agent_sigterm_restores(root: Path) -> None:
    agent = start_agent(root)
    holder, line = start_holder(agent, ["1"], 180, env={"CUDA_VISIBLE_DEVICES": "1"})
    try:
        assert line.startswith("held"), line
        stop(agent.proc, signal.SIGTERM)
        assert agent.proc.returncode == 0
        assert limits_w(agent.gpus_file) == [300.0, 300.0]
        assert not os.path.exists(agent.socket)
    finally:
        stop(holder, signal.SIGKILL)


def test_second_caller_on_a_held_gpu_is_refused_naming_the_holder(agent: Agent) -> None:
    first, line = start_holder(agent, ["0"], 150, env={"CUDA_VISIBLE_DEVICES": "0"})
    try:
        holder_pid = line.split()[2]
        second, refused = start_holder(agent, ["0"], 250, env={"CUDA_VISIBLE_DEVICES": "0"})
        stop(second, signal.SIGKILL)
        assert refused.startswith("refused FAILED_PRECONDITION"), refused
        assert f"pid {holder_pid}" in refused
        assert limits_w(agent.gpus_file) == [150.0, 300.0]  # the first lease stands
    finally:
        stop(first, signal.SIGKILL)


def test_caller_not_entitled_is_denied(agent: Agent) -> None:
    for env in ({"CUDA_VISIBLE_DEVICES": "1"}, {}, {"NVIDIA_VISIBLE_DEVICES": "none"}):
        proc, line = start_holder(agent, ["0"], 150, env=env)
        stop(proc, signal.SIGKILL)
        assert line.startswith("refused PERMISSION_DENIED") and "not entitled to GPU(s) 0" in line, (env, line)
    # NVIDIA_VISIBLE_DEVICES by UUID, then CUDA_VISIBLE_DEVICES indexes within it (as in a container).
    uuid1 = agent.uuids()[1]
    proc, line = start_holder(agent, [uuid1], 150, env={"NVIDIA_VISIBLE_DEVICES": uuid1, "CUDA_VISIBLE_DEVICES": "0"})
    stop(proc, signal.SIGKILL)
    assert line.startswith("held"), line
    wait_for(lambda: limits_w(agent.gpus_file) == [300.0, 300.0], 2.0)  # the holder is gone


def test_compute_context_entitles_without_environment(agent: Agent) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # The holder's child holds a compute context on GPU 1 (simulated NVML process list).
        code = HOLDER.format(repo=str(REPO_ROOT), sock=agent.socket, gpus=["1"], watts="140", lease_s=60.0,
                             lease_id="")  # fmt: skip
        launcher = (
            "import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
            " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL);"
            "print(c.pid, flush=True); sys.stdin.readline(); exec(sys.argv[1])"
        )
        env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")}
        proc = subprocess.Popen([sys.executable, "-c", launcher, code], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
        assert proc.stdout is not None and proc.stdin is not None
        child_pid = int(proc.stdout.readline())
        SimulatedBackend(agent.gpus_file).set_compute_pids(1, [sleeper.pid, child_pid])
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line.startswith("held"), line
        assert limits_w(agent.gpus_file) == [300.0, 140.0]
        os.kill(child_pid, signal.SIGKILL)
        stop(proc, signal.SIGKILL)
        wait_for(lambda: limits_w(agent.gpus_file) == [300.0, 300.0], 2.0)
    finally:
        stop(sleeper, signal.SIGKILL)


def test_uid_allow_list_and_a_non_root_client(root: Path) -> None:
    agent = start_agent(root, "--allow-uid", str(NOBODY))
    try:
        proc, line = start_holder(agent, ["0"], 150, env={"CUDA_VISIBLE_DEVICES": "0"})  # root: not listed
        stop(proc, signal.SIGKILL)
        assert line.startswith("refused PERMISSION_DENIED") and "uid 0" in line and "--allow-uid" in line, line
        if shutil.which("setpriv") is None or os.geteuid() != 0:
            pytest.skip("dropping to nobody needs root and setpriv")
        # nobody cannot set a limit on the (simulated) GPU itself...
        probe = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-c",
             f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r})\n"
             "from client_sdk.devices.simulated import SimulatedBackend\n"
             "from client_sdk.devices.errors import DeviceNoPermissionError\n"
             f"b = SimulatedBackend({str(agent.gpus_file)!r})\n"
             "try:\n    b.set_power_limit_mw(0, 150000)\nexcept DeviceNoPermissionError:\n    print('no permission')"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert probe.stdout.strip() == "no permission", probe.stderr
        # ... but through the agent it can, on the GPU it is entitled to, and its death restores it.
        proc, line = start_holder(agent, ["0"], 150, env={"CUDA_VISIBLE_DEVICES": "0"}, as_nobody=True)
        try:
            assert line.startswith("held"), line
            client = agent.client()
            gpu0 = client.status().gpus[0]
            client.close()
            assert gpu0.holder_uid == NOBODY and gpu0.current_limit_w == 150.0
        finally:
            stop(proc, signal.SIGKILL)
        wait_for(lambda: limits_w(agent.gpus_file) == [300.0, 300.0], 2.0)
    finally:
        stop(agent.proc)


def test_bad_watts_invalid_argument_nothing_changed(agent: Agent) -> None:
    for watts in (float("nan"), -5.0, 0.0, 99.0, 301.0, float("inf")):
        proc, line = start_holder(agent, ["0"], watts, env={"CUDA_VISIBLE_DEVICES": "0"})
        stop(proc, signal.SIGKILL)
        assert line.startswith("refused INVALID_ARGUMENT") and "power_limit_w" in line, (watts, line)
        assert limits_w(agent.gpus_file) == [300.0, 300.0]
        assert not (agent.state_dir / "originals.json").exists()  # not even a journal entry


def test_bad_requests_name_what_is_wrong(agent: Agent) -> None:
    client = agent.client()
    try:
        cases = [
            (lambda: client.set_power_limit([], 150, 10), grpc.StatusCode.INVALID_ARGUMENT, "gpus is empty"),
            (lambda: client.set_power_limit(["7"], 150, 10), grpc.StatusCode.INVALID_ARGUMENT, "no GPU '7'"),
            (lambda: client.set_power_limit(["0", "0"], 150, 10), grpc.StatusCode.INVALID_ARGUMENT, "twice"),
            (lambda: client.set_power_limit(["0"], 150, 0), grpc.StatusCode.INVALID_ARGUMENT, "lease_s"),
            (lambda: client.set_power_limit(["0"], 150, 10, lease_id="a b"), grpc.StatusCode.INVALID_ARGUMENT,
             "lease_id"),
            (lambda: client.renew("nope", 10), grpc.StatusCode.NOT_FOUND, "no lease 'nope'"),
            (lambda: client.release("nope"), grpc.StatusCode.NOT_FOUND, "no lease 'nope'"),
        ]  # fmt: skip
        for fn, code, text in cases:
            with pytest.raises(AgentError, match=text) as info:
                fn()
            assert info.value.code == code
    finally:
        client.close()


def test_operator_bounds_refuse_and_mig_is_refused(root: Path) -> None:
    agent = start_agent(root, "--min-watts", "150", "--max-watts", "250", "--simulate-mig", "1")
    try:
        proc, line = start_holder(agent, ["0"], 280, env={"CUDA_VISIBLE_DEVICES": "0,1"})
        stop(proc, signal.SIGKILL)
        assert line.startswith("refused INVALID_ARGUMENT") and "operator bounds [150, 250]" in line, line
        proc, line = start_holder(agent, ["1"], 200, env={"CUDA_VISIBLE_DEVICES": "0,1"})
        stop(proc, signal.SIGKILL)
        assert line.startswith("refused FAILED_PRECONDITION") and "MIG mode enabled" in line, line
        assert limits_w(agent.gpus_file) == [300.0, 300.0]
        client = agent.client()
        status = client.status()
        client.close()
        assert (status.operator_min_w, status.operator_max_w) == (150.0, 250.0)
        assert [g.mig_enabled for g in status.gpus] == [False, True]
    finally:
        stop(agent.proc)


def test_idempotent_by_lease_id(agent: Agent) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from powerbandit.agent.client import AgentClient
        c = AgentClient({agent.socket!r})
        a = c.set_power_limit(["0"], 150, 30, lease_id="job-7").lease
        b = c.set_power_limit(["0"], 150, 30, lease_id="job-7").lease  # a retry: the same lease
        d = c.set_power_limit(["0"], 170, 30, lease_id="job-7").lease  # a change under the same lease
        n = sum(1 for g in c.status().gpus if g.lease_id)
        print(a.lease_id, b.lease_id, d.lease_id, d.power_limit_w, n, a.holder_pid == b.holder_pid)
        print(c.release("job-7").released, c.release("job-7").released)
        """
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="0")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert first == "job-7 job-7 job-7 170.0 1 True"
    assert second == "True False"  # released once; the second release is a no-op
    assert limits_w(agent.gpus_file) == [300.0, 300.0]


def test_cli_set_limit_hold_status_and_release(agent: Agent) -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="1", POWERBANDIT_AGENT_SOCKET=agent.socket)
    hold = subprocess.Popen(
        [sys.executable, "-m", "powerbandit", "agent", "set-limit", "--gpu", "1", "--watts", "175",
         "--lease-s", "0.6", "--hold"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert hold.stdout is not None
        line = hold.stdout.readline()
        assert "GPU 1: 175 W" in line and "held by this process" in line, line
        time.sleep(1.5)  # longer than the lease: --hold renews it
        assert limits_w(agent.gpus_file) == [300.0, 175.0]
        status = subprocess.run([sys.executable, "-m", "powerbandit", "agent", "status", "--json"],
                                cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30)  # fmt: skip
        gpus = json.loads(status.stdout)["gpus"]
        assert gpus[1]["currentLimitW"] == 175.0 and gpus[1]["holderPid"] == hold.pid
        assert gpus[1]["originalLimitW"] == 300.0
        text = subprocess.run([sys.executable, "-m", "powerbandit", "agent", "status"],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30)  # fmt: skip
        assert f"pid {hold.pid}" in text.stdout and "175 W" in text.stdout
        lease_id = line.split()[1].rstrip(":")
        rel = subprocess.run([sys.executable, "-m", "powerbandit", "agent", "release", lease_id],
                             cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30)  # fmt: skip
        assert rel.returncode == 0 and "released" in rel.stdout, rel.stderr
        assert limits_w(agent.gpus_file) == [300.0, 300.0]
    finally:
        stop(hold, signal.SIGINT)
    bad = subprocess.run([sys.executable, "-m", "powerbandit", "agent", "release", "nope"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert bad.returncode != 0 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_a_second_agent_is_refused_and_leaves_the_first_alone(agent: Agent, root: Path) -> None:
    holder, line = start_holder(agent, ["0"], 150, env={"CUDA_VISIBLE_DEVICES": "0"})
    try:
        assert line.startswith("held"), line
        for args in (
            ["--socket", agent.socket, "--state-dir", str(root / "other-state")],
            ["--socket", str(root / "other.sock"), "--state-dir", str(agent.state_dir)],
        ):
            second = subprocess.run(
                [sys.executable, "-m", "powerbandit", "agent", "serve", *args, "--simulate-gpus", "2",
                 "--simulate-state", str(agent.gpus_file)],
                cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert second.returncode == 1 and second.stderr.startswith("error: another agent"), second.stderr
            assert "Traceback" not in second.stderr
        assert limits_w(agent.gpus_file) == [150.0, 300.0]  # the first agent's lease was not "recovered"
    finally:
        stop(holder, signal.SIGKILL)
