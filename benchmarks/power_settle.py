"""On a real GPU under load: how power settles after a limit change, and what short windows misread.

    sudo python benchmarks/power_settle.py [--limits 200,450,700,450,200] [--seconds 3] [--json OUT]

For each limit in turn it sets the limit through :class:`~client_sdk.nvml.NvmlGpu` (which returns
once NVML enforces it), keeps the GPU busy with bf16 matrix products (PyTorch on CUDA, queued ahead
so the GPU never waits for this process), and reads NVML's total-energy counter every 0.5 ms for
``--seconds``, keeping the time of every change. Between two changes the counter's increase is the
energy of one update period, so the series gives the power per period exactly (up to the 0.5 ms
polling). From it the script prints, per limit:

- the power of the first three periods after the set, against the steady power of the rest
  (how long the GPU takes to settle at the new limit);
- the error of a window of 0.25, 0.5, 1 and 2 s (up to one update period longer) read the way the
  SDK's profile reads it (two plain counter reads at arbitrary times), against the true energy of
  that window (start times every 13 ms along the series): the spread (sd, %) that the counter's
  update period alone adds.

Needs root (to set limits), PyTorch with CUDA and an NVIDIA GPU with the energy counter (Volta or
newer). Exit status 0 on success, 1 without a GPU. The original limit is restored.
"""

from __future__ import annotations

import argparse
import bisect
import json
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

WINDOWS_S = (0.25, 0.5, 1.0, 2.0)


def record(backend, index: int, seconds: float, work) -> list[tuple[float, int]]:  # noqa: ANN001
    """``(time s, counter mJ)`` at every change of the counter over ``seconds``, the GPU kept busy."""
    t0 = time.perf_counter()
    series = [(0.0, backend.total_energy_mj(index))]
    while (now := time.perf_counter() - t0) < seconds:
        work()
        value = backend.total_energy_mj(index)
        if value != series[-1][1]:
            series.append((now, value))
        time.sleep(0.0005)
    return series


def true_energy_mj(series: list[tuple[float, int]], times: list[float], t: float) -> float:
    """Energy at time ``t``, the counter's steps joined by straight lines (each period at its power);
    ``times`` are the series' times."""
    i = bisect.bisect_right(times, t)
    if i <= 0:
        return float(series[0][1])
    if i >= len(series):
        return float(series[-1][1])
    (ta, ea), (tb, eb) = series[i - 1], series[i]
    return ea + (eb - ea) * (t - ta) / (tb - ta)


def read_mj(series: list[tuple[float, int]], times: list[float], t: float) -> int:
    """What a plain read of the counter at ``t`` returns: the value of the last change before it."""
    return series[max(0, bisect.bisect_right(times, t) - 1)][1]


def analyse(series: list[tuple[float, int]], settle_s: float) -> dict[str, object]:
    """Per-period powers after the set, steady power, and window errors (see the module docstring)."""
    periods = [
        ((t1 - t0) * 1000, (e1 - e0) / (t1 - t0) / 1000)
        for (t0, e0), (t1, e1) in zip(series[1:], series[2:], strict=False)
    ]  # (period ms, W), from the first change on (its start is known)
    steady = [w for (t, _), (_, w) in zip(series[1:], periods, strict=False) if t >= settle_s]
    out: dict[str, object] = {
        "first_periods_w": [round(w, 1) for _, w in periods[:3]],
        "steady_w": round(statistics.fmean(steady), 1) if steady else None,
        "steady_sd_w": round(statistics.pstdev(steady), 1) if len(steady) > 1 else None,
        "period_ms": round(statistics.median(ms for ms, _ in periods), 1) if periods else None,
    }
    start, end = series[1][0], series[-1][0]
    times = [t for t, _ in series]
    for window in WINDOWS_S:
        errors = []
        t = max(start, settle_s)
        while t + window + 0.1 <= end:
            for extra_s in (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09):  # lengths over a period
                length = window + extra_s
                truth = true_energy_mj(series, times, t + length) - true_energy_mj(series, times, t)
                naive = read_mj(series, times, t + length) - read_mj(series, times, t)
                if truth > 0:
                    errors.append(100.0 * (naive - truth) / truth)
            t += 0.013  # start times spread over the counter's period
        out[f"window_{window:g}s_error_sd_pct"] = round(statistics.pstdev(errors), 2) if len(errors) > 1 else None
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the sweep; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limits", default="", help="limits to visit in W, comma-separated [min,mid,max,mid,min]")
    parser.add_argument("--seconds", type=float, default=3.0, help="recorded per limit [3]")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds after a set not counted as steady [0.5]")
    parser.add_argument("--json", default="", help="write the series and results here")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("needs PyTorch with CUDA", file=sys.stderr)
        return 1
    from client_sdk.devices.access import NvmlBackend
    from client_sdk.gpu import GpuUnavailableError
    from client_sdk.nvml import NvmlGpu

    if not torch.cuda.is_available():
        print("No CUDA GPU here", file=sys.stderr)
        return 1
    try:
        gpu = NvmlGpu(device_indices=[0])
    except GpuUnavailableError as exc:
        print(f"No GPU to check here: {exc}", file=sys.stderr)
        return 1
    info = gpu.info()
    lo, hi = info.min_power_limit_w, info.max_power_limit_w
    mid = float(round((lo + hi) / 2))
    limits = [float(w) for w in args.limits.split(",")] if args.limits else [lo, mid, hi, mid, lo]
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    done = torch.cuda.Event()
    done.record()

    def work() -> None:
        nonlocal done
        if done.query():  # the queue ran dry: refill it (about 30 ms of products)
            for _ in range(24):
                a @ b  # noqa: B018 - the work is the point
            done = torch.cuda.Event()
            done.record()

    for _ in range(48):  # warm up cuBLAS and the clocks
        a @ b  # noqa: B018
    torch.cuda.synchronize()
    backend = NvmlBackend()
    results = []
    print(f"== {info.model}, limits {', '.join(f'{w:g}' for w in limits)} W, {args.seconds:g} s each, bf16 8192^3 products")
    try:
        for limit in limits:
            t_set = time.perf_counter()
            in_force = gpu.set_power_limit(limit)
            set_ms = 1000 * (time.perf_counter() - t_set)
            series = record(backend, 0, args.seconds, work)
            result = {"limit_w": limit, "in_force_w": in_force, "set_ms": round(set_ms, 1), **analyse(series, args.settle)}
            results.append({**result, "series": series})
            errs = " ".join(f"{w:g}s {result[f'window_{w:g}s_error_sd_pct']}" for w in WINDOWS_S)
            print(
                f"{limit:6g} W (set {set_ms:5.1f} ms): first periods {result['first_periods_w']} W, "
                f"steady {result['steady_w']} W (sd {result['steady_sd_w']}), period {result['period_ms']} ms; "
                f"window error sd %: {errs}"
            )
    finally:
        torch.cuda.synchronize()
        gpu.close()
        backend.close()
    if args.json:
        Path(args.json).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
