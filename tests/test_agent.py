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
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from client_sdk.devices.simulated import SimulatedBackend
from powerbandit.agent.client import AgentClient, AgentError

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


@pytest.fixture
def root() -> Iterator[Path]:
    """A short directory (Unix socket paths are limited to 107 bytes), world-traversable for `nobody`."""
    path = Path(tempfile.mkdtemp(prefix="pba-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent(root: Path) -> Iterator[Agent]:
    a = start_agent(root)
    yield a
    stop(a.proc)


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


def code_of(fn) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(AgentError) as info:
        fn()
    return info.value.code


# ------------------------------------------------------------------------------------------------ tests


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
