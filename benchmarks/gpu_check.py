"""Check NvmlGpu on a real GPU: versions, energy counter vs power polling, and a power-limit round trip.

Run from the repository root::

    python benchmarks/gpu_check.py [--seconds 3] [--poll-interval 0.1] [--no-set]
    sudo python benchmarks/gpu_check.py --agent [--client-user nobody] [--gpu 0]
    python benchmarks/gpu_check.py --agent --simulate          # the same steps on simulated GPUs

``--agent`` checks the node agent instead: it starts ``powerbandit agent serve`` as root, then a
client process running as ``--client-user`` (default ``nobody``: no privilege) that sees the GPU
through ``CUDA_VISIBLE_DEVICES`` sets a limit through the agent; this process reads the limit back
through NVML, SIGKILLs the client and checks that the original limit is back within 2 s.

It measures a few seconds of matrix multiplications (PyTorch on CUDA when installed; otherwise the GPU
idles while the CPU waits) with the energy counter and with power polling at the same time, and prints
both energies and their difference, and how often the energy counter changes. It then sets one power
limit (the midpoint of the allowed range) through ``NvmlGpu``, reads it back and restores the original;
then sets a few limits raw through the device layer and prints how many milliseconds NVML takes to
read each back as the management limit and as the enforced limit (an H200 enforced a new limit
about 100 ms after the set), and restores the original. Exit status: 0 ok, 1 no GPU here, 2 a check failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from client_sdk.devices.access import DeviceBackend, NvmlBackend  # noqa: E402
from client_sdk.gpu import GpuUnavailableError  # noqa: E402
from client_sdk.nvml import GpuConfigError, NvmlGpu  # noqa: E402


def _matmul_workload() -> tuple[str, Callable[[float], int]]:
    """A description and a function that busies the job's GPU for some seconds (returning the
    iterations it ran). CUDA, cuBLAS and the operands are set up here, so the measured seconds hold
    only the products."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():

        def idle(seconds: float) -> int:
            time.sleep(seconds)
            return 0

        return "no PyTorch with CUDA: GPU idle (sleep)", idle
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    a @ b  # noqa: B018 - the first product loads cuBLAS
    torch.cuda.synchronize()

    def products(seconds: float) -> int:
        iterations = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(10):
                a @ b  # noqa: B018 - the work is the point
            torch.cuda.synchronize()
            iterations += 10
        return iterations

    return f"torch.matmul 8192x8192 bf16 on {torch.cuda.get_device_name()}", products


def _counter_update_ms(backend: DeviceBackend, index: int, seconds: float = 1.0) -> list[float]:
    """Milliseconds between changes of GPU ``index``'s energy counter, read every 0.2 ms for ``seconds``."""
    changes, last = [], backend.total_energy_mj(index)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        value = backend.total_energy_mj(index)
        if value != last:
            changes.append(time.perf_counter())
            last = value
        time.sleep(0.0002)
    return [1000 * (b - a) for a, b in zip(changes, changes[1:], strict=False)]


def _enforcement_lag_ms(backend: DeviceBackend, index: int, limits_w: list[float]) -> list[tuple[float, float, float]]:
    """For each limit: ms until NVML's management and enforced limits read it after a raw set.

    Sets GPU ``index`` through the device layer (no waiting in between), reading both every 0.1 ms
    for at most 2 s; ``inf`` where one never read the new limit. The limit in force before is set
    again at the end, whatever happens.
    """
    original_mw = backend.power_limit_mw(index)
    out = []
    try:
        for w in limits_w:
            want_mw = round(w * 1000)
            t0 = time.perf_counter()
            backend.set_power_limit_mw(index, want_mw)
            set_ms = 1000 * (time.perf_counter() - t0)
            managed_ms = enforced_ms = float("inf")
            while time.perf_counter() - t0 < 2.0 and enforced_ms == float("inf"):
                now_ms = 1000 * (time.perf_counter() - t0)
                if managed_ms == float("inf") and abs(backend.power_limit_mw(index) - want_mw) <= 1000:
                    managed_ms = now_ms
                if abs(backend.enforced_power_limit_mw(index) - want_mw) <= 1000:
                    enforced_ms = now_ms
                time.sleep(0.0001)
            out.append((set_ms, managed_ms, enforced_ms))
    finally:
        if backend.power_limit_mw(index) != original_mw:
            backend.set_power_limit_mw(index, original_mw)
    return out


def _pct(a: float, b: float) -> str:
    return f"{100.0 * (a - b) / b:+.2f} %" if b else "n/a"


def _agent_check(args: argparse.Namespace) -> int:
    """Agent as root, a non-root client: set, read back, kill the client, see the limit restored."""
    import os
    import shutil
    import signal
    import subprocess
    import tempfile

    from benchmarks.agent_restore import holder_command, open_device, start_agent, wait_limit

    if os.geteuid() != 0:
        print("error: --agent starts the agent, which must run as root (sudo)", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="pba-check-", dir="/tmp"))
    workdir.chmod(0o755)
    ok = True
    try:
        agent, sock, gpus_file = start_agent(workdir, not args.simulate, [])
    except SystemExit as exc:
        print(f"No agent to check: {exc}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
        return 1
    try:
        device = open_device(gpus_file)
        info = device.describe(args.gpu)
        if info.min_limit_mw is None or info.max_limit_mw is None:
            print(f"GPU {args.gpu} does not report its power-limit range: {info.limits_error}", file=sys.stderr)
            return 1
        print(f"== agent on {info.name} ({info.uuid}), {'simulated' if args.simulate else 'NVML'}")
        original_mw = device.power_limit_mw(args.gpu)
        target_w = float(round((info.min_limit_mw + info.max_limit_mw) / 2000))
        print(f"{'in force':>20}: {original_mw / 1000:g} W (range {info.min_limit_mw / 1000:g}-{info.max_limit_mw / 1000:g} W)")
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=info.uuid)
        client = subprocess.Popen(holder_command(sock, info.uuid, target_w, args.client_user), env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert client.stdout is not None
            lease = client.stdout.readline().strip()
            if not lease:
                print(f"the client could not take a lease: {client.stderr.read() if client.stderr else ''}")
                return 2
            print(f"{'client':>20}: pid {client.pid} as {args.client_user}, lease {lease}, asked {target_w:g} W")
            took = wait_limit(device, args.gpu, round(target_w * 1000), 5)
            print(f"{'read back':>20}: {device.power_limit_mw(args.gpu) / 1000:g} W after {took * 1000:.0f} ms")
            ok &= took != float("inf")
            client.send_signal(signal.SIGKILL)
            restored = wait_limit(device, args.gpu, original_mw, 2)
            print(f"{'client SIGKILLed':>20}: original {original_mw / 1000:g} W back after {restored * 1000:.0f} ms")
            ok &= restored != float("inf")
        finally:
            client.kill()
            client.wait()
        device.close()
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    print("== OK" if ok else "== FAILED: the agent did not apply or did not restore the limit")
    return 0 if ok else 2


def main(argv: list[str] | None = None) -> int:
    """Run the checks; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the measured work, s")
    parser.add_argument("--poll-interval", type=float, default=0.1, help="power polling period, s")
    parser.add_argument("--tail", type=float, default=2.0, help="idle seconds measured after the work, s")
    parser.add_argument("--no-set", action="store_true", help="skip the power-limit round trip")
    parser.add_argument("--agent", action="store_true", help="check the node agent (see the module docstring)")
    parser.add_argument("--simulate", action="store_true", help="with --agent: simulated GPUs instead of NVML")
    parser.add_argument("--client-user", default="nobody", help="with --agent: the unprivileged client's user")
    parser.add_argument("--gpu", type=int, default=0, help="with --agent: NVML index of the GPU [0]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.agent:
        return _agent_check(args)

    try:
        polled = NvmlGpu(energy_source="polling", poll_interval_s=args.poll_interval)
    except GpuUnavailableError as exc:  # includes GpuConfigError (MIG, mixed models...)
        print(f"No GPU to check here: {exc}", file=sys.stderr)
        return 1
    ok = True
    with polled:
        try:
            counted: NvmlGpu | None = NvmlGpu(energy_source="counter")
        except GpuConfigError as exc:
            print(f"energy counter: unavailable ({exc}); polling only")
            counted = None
        raw = NvmlBackend()  # the device layer itself, for what NvmlGpu does not show
        try:
            info = polled.info()
            print("== GPU")
            for key, value in polled.system_info().items():
                print(f"{key:>20}: {value}")
            print(f"{'model':>20}: {info.model} x {info.count} (NVML indices {list(polled.device_indices)})")
            print(f"{'uuids':>20}: {', '.join(polled.device_uuids)}")

            print(f"== energy: counter vs polling every {args.poll_interval:g} s")
            what, workload = _matmul_workload()  # set up before the measured window
            polled.energy_j()  # start the polling thread
            time.sleep(max(0.5, 3 * args.poll_interval))
            t0 = polled.now_s()
            p0 = polled.energy_j()
            c0 = counted.energy_j() if counted else None
            iterations = workload(args.seconds)
            t1 = polled.now_s()
            p1 = polled.energy_j()
            c1 = counted.energy_j() if counted else None
            time.sleep(args.tail)
            t2 = polled.now_s()
            p2 = polled.energy_j()
            c2 = counted.energy_j() if counted else None
            print(f"{'workload':>20}: {what}, {iterations} matmuls in {t1 - t0:.3f} s")
            for label, dt, ep, ec in (
                ("work", t1 - t0, p1 - p0, None if c0 is None or c1 is None else c1 - c0),
                (
                    f"work + {args.tail:g} s idle",
                    t2 - t0,
                    p2 - p0,
                    None if c0 is None or c2 is None else c2 - c0,
                ),
            ):
                line = f"{label:>20}: polling {ep:9.1f} J ({ep / dt:6.1f} W)"
                if ec is not None:
                    line += f" | counter {ec:9.1f} J ({ec / dt:6.1f} W) | polling vs counter {_pct(ep, ec)}"
                print(line)
            print("  (NVML's power reading is a ~1 s average on Ampere and newer, so polling lags on")
            print("   short windows; the idle tail lets it catch up.)")
            gaps = sorted(_counter_update_ms(raw, polled.device_indices[0])) if counted is not None else []
            if gaps:
                print(f"{'counter updates':>20}: every {gaps[len(gaps) // 2]:.1f} ms (median; {gaps[0]:.1f}-{gaps[-1]:.1f} ms, idle)")

            print("== power limit")
            print(f"{'allowed range':>20}: {info.min_power_limit_w:g} - {info.max_power_limit_w:g} W per GPU")
            print(f"{'candidates':>20}: {', '.join(f'{w:g}' for w in info.power_limits_w)}")
            print(f"{'can set':>20}: {info.can_set_power_limit}")
            before = polled.power_limit_w()
            print(f"{'in force':>20}: {before:g} W")
            if args.no_set:
                print("(skipped setting a limit: --no-set)")
            elif not info.can_set_power_limit:
                print("(cannot set limits here: see the warning above; run as root to check setting)")
            else:
                target = float(round((info.min_power_limit_w + info.max_power_limit_w) / 2))
                t0 = time.perf_counter()
                applied = polled.set_power_limit(target)
                took_ms = 1000 * (time.perf_counter() - t0)
                print(f"{'set':>20}: asked {target:g} W -> in force {applied:g} W after {took_ms:.1f} ms")
                ok &= abs(applied - target) < 1.0
                polled.restore_power_limit()
                after = polled.power_limit_w()
                print(f"{'restored':>20}: {after:g} W (was {before:g} W)")
                ok &= abs(after - before) < 1.0
                index = polled.device_indices[0]
                steps = [info.min_power_limit_w, target, info.max_power_limit_w, target]
                print(f"== raw set on GPU {index}: ms until NVML reads the new limit (management / enforced)")
                for w, (set_ms, managed_ms, enforced_ms) in zip(steps, _enforcement_lag_ms(raw, index, steps), strict=True):
                    print(f"{w:>18g} W: set call {set_ms:6.2f} ms, management {managed_ms:7.2f} ms, enforced {enforced_ms:7.2f} ms")
                print(f"{'restored':>20}: {raw.power_limit_mw(index) / 1000:g} W")
        finally:
            raw.close()
            if counted is not None:
                counted.close()
    print("== OK" if ok else "== FAILED: a limit was not applied or not restored as asked")
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
