"""Measure the node agent: holder death to restored limit, SetPowerLimit latency, agent memory.

    python benchmarks/agent_restore.py [--trials 20] [--calls 200] [--json]      # simulated GPUs
    sudo python benchmarks/agent_restore.py --nvml [--gpu 0] [--client-user nobody]  # a real GPU

It starts ``powerbandit agent serve`` (on ``--simulate-gpus 1`` by default, or NVML with ``--nvml``,
which needs root), then:

1. **restore after holder death**, ``--trials`` times: a client process (entitled to the GPU through
   ``CUDA_VISIBLE_DEVICES``; as ``--client-user`` when given, via ``setpriv``) takes a lease at a low
   limit; once the GPU reads that limit, the process is SIGKILLed and the GPU is read every
   millisecond (through the same device layer the agent uses) until the original limit is back.
   Reported: median and max seconds from the kill to the restored limit.
2. **SetPowerLimit latency**: ``--calls`` calls from one client alternating two limits under one
   lease (each call really changes the GPU); median and p99 milliseconds, measured at the client.
3. **agent memory**: VmRSS and VmHWM of the agent process after the above.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from client_sdk.devices.access import DeviceBackend  # noqa: E402

HOLDER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from powerbandit.agent.client import AgentClient
    client = AgentClient({sock!r})
    lease = client.set_power_limit([{gpu!r}], {watts!r}, 300.0).lease
    print(lease.lease_id, flush=True)
    time.sleep(300)
    """
)


def start_agent(workdir: Path, nvml: bool, extra: list[str]) -> tuple[subprocess.Popen[str], str, Path | None]:
    """Start the agent; returns the process, its socket and the simulated-GPU file (None with NVML)."""
    sock = str(workdir / "agent.sock")
    args = [sys.executable, "-m", "powerbandit", "agent", "serve", "--socket", sock, "--socket-mode", "0666",
            "--state-dir", str(workdir / "state"), *extra]  # fmt: skip
    gpus_file = None
    if not nvml:
        gpus_file = workdir / "gpus.json"
        args += ["--simulate-gpus", "1", "--simulate-range", "100:300", "--simulate-state", str(gpus_file)]
    proc = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    from powerbandit.agent.client import AgentClient, AgentError

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the agent exited: {proc.stderr.read() if proc.stderr else ''}")
        if os.path.exists(sock):
            client = AgentClient(sock)
            try:
                client.status()
                return proc, sock, gpus_file
            except AgentError:
                pass
            finally:
                client.close()
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the agent did not start within 30 s")


def open_device(gpus_file: Path | None) -> DeviceBackend:
    """The device layer the agent uses, opened by this process for reading."""
    from client_sdk.devices.access import NvmlBackend
    from client_sdk.devices.simulated import SimulatedBackend

    return NvmlBackend() if gpus_file is None else SimulatedBackend(gpus_file, privileged=False)


def wait_limit(device: DeviceBackend, index: int, want_mw: int, timeout_s: float) -> float:
    """Seconds until GPU ``index`` reads ``want_mw`` (polled every ms); ``inf`` on timeout."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if abs(device.power_limit_mw(index) - want_mw) <= 1000:
            return time.perf_counter() - t0
        time.sleep(0.001)
    return float("inf")


def holder_command(sock: str, gpu: str, watts: float, user: str | None) -> list[str]:
    """A client process that takes a lease and sleeps (as ``user`` when given)."""
    cmd = [sys.executable, "-c", HOLDER.format(repo=str(REPO_ROOT), sock=sock, gpu=gpu, watts=watts)]
    if user:
        if shutil.which("setpriv") is None:
            raise SystemExit("--client-user needs setpriv (util-linux)")
        import pwd

        pw = pwd.getpwnam(user)
        cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", *cmd]
    return cmd


def restore_trials(sock: str, device: DeviceBackend, index: int, watts: float, trials: int,
                   user: str | None) -> list[float]:  # fmt: skip
    """Seconds from SIGKILL of the holder to the original limit, per trial."""
    original_mw = device.power_limit_mw(index)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=device.uuid(index))
    out = []
    for _ in range(trials):
        proc = subprocess.Popen(holder_command(sock, device.uuid(index), watts, user), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert proc.stdout is not None
            if not proc.stdout.readline():
                raise SystemExit(f"the client could not take a lease: {proc.stderr.read() if proc.stderr else ''}")
            if wait_limit(device, index, round(watts * 1000), 5) == float("inf"):
                raise SystemExit(f"the GPU never read the {watts:g} W limit")
            proc.kill()  # SIGKILL: nothing in the client runs any more
            elapsed = wait_limit(device, index, original_mw, 10)
            out.append(elapsed)  # from the kill to the restored limit, s
        finally:
            proc.kill()
            proc.wait()
    return out


LATENCY = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, {repo!r})
    from powerbandit.agent.client import AgentClient
    client = AgentClient({sock!r})
    client.set_power_limit([{gpu!r}], {high_w!r}, 60, lease_id="bench")  # warm the channel and the lease
    out = []
    for i in range({calls!r}):
        t0 = time.perf_counter()
        client.set_power_limit([{gpu!r}], {low_w!r} if i % 2 == 0 else {high_w!r}, 60, lease_id="bench")
        out.append((time.perf_counter() - t0) * 1000)
    client.release("bench")
    print(json.dumps(out))
    """
)


def set_latency(sock: str, gpu: str, low_w: float, high_w: float, calls: int) -> list[float]:
    """Client-side milliseconds per SetPowerLimit (one lease, alternating limits), from an entitled process."""
    code = LATENCY.format(repo=str(REPO_ROOT), sock=sock, gpu=gpu, low_w=low_w, high_w=high_w, calls=calls)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"the latency client failed: {done.stderr}")
    return [float(v) for v in json.loads(done.stdout)]


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid``, KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def main(argv: list[str] | None = None) -> int:
    """Run the measurements; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="holder-death trials [20]")
    parser.add_argument("--calls", type=int, default=200, help="SetPowerLimit calls for the latency [200]")
    parser.add_argument("--nvml", action="store_true", help="a real GPU through NVML (run as root)")
    parser.add_argument("--gpu", type=int, default=0, help="NVML index of the GPU to use [0]")
    parser.add_argument("--client-user", default=None, help="run the client processes as this user (setpriv)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.calls < 1:
        print("error: --trials and --calls must be >= 1", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="pba-bench-", dir="/tmp"))
    workdir.chmod(0o755)
    agent, sock, gpus_file = start_agent(workdir, args.nvml, [])
    try:
        device = open_device(gpus_file)
        info = device.describe(args.gpu)
        if info.min_limit_mw is None or info.max_limit_mw is None:
            raise SystemExit(f"GPU {args.gpu} does not report its power-limit range")
        low_w = round((info.min_limit_mw + (info.max_limit_mw - info.min_limit_mw) * 0.25) / 1000)
        high_w = round((info.min_limit_mw + (info.max_limit_mw - info.min_limit_mw) * 0.75) / 1000)
        restore_s = restore_trials(sock, device, args.gpu, low_w, args.trials, args.client_user)
        latency_ms = set_latency(sock, info.uuid, low_w, high_w, args.calls)
        mem = memory_kib(agent.pid)
        result = {
            "device": f"{info.name} ({'NVML' if args.nvml else 'simulated'})",
            "trials": args.trials,
            "restore_s": {"median": statistics.median(restore_s), "max": max(restore_s)},
            "set_power_limit_ms": {"median": statistics.median(latency_ms), "p99": percentile(latency_ms, 0.99),
                                   "calls": args.calls},  # fmt: skip
            "agent_memory_kib": mem,
        }
        device.close()
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        r, lat = result["restore_s"], result["set_power_limit_ms"]
        print(f"device: {result['device']}")
        print(f"holder SIGKILL -> original limit back: median {r['median'] * 1000:.0f} ms, max {r['max'] * 1000:.0f} ms "
              f"({args.trials} trials)")  # fmt: skip
        print(f"SetPowerLimit latency: median {lat['median']:.2f} ms, p99 {lat['p99']:.2f} ms ({args.calls} calls)")
        print(f"agent memory: RSS {mem.get('VmRSS', 0) / 1024:.1f} MiB (peak {mem.get('VmHWM', 0) / 1024:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
