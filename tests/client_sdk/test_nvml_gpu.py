"""NvmlGpu against an in-test fake of the pynvml functions it uses (the hardware edge only).

The fake mirrors pynvml's shapes: ``NVMLError`` with ``value`` and one subclass per error code
(same names as pynvml), integer milliwatts / millijoules, ``[current, pending]`` MIG mode, and UUID
strings. Everything above the fake is the real code.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the repo is not necessarily pip-installed
    sys.path.insert(0, str(REPO_ROOT))

from client_sdk.devices.restore_guard import RestoreGuard  # noqa: E402
from client_sdk.gpu import GpuUnavailableError  # noqa: E402
from client_sdk.nvml import GpuConfigError, NvmlGpu  # noqa: E402
from client_sdk.power_polling import PowerPoller  # noqa: E402

LOGGER = "powerbandit.sdk.nvml"

# ----------------------------------------------------------------------------------------- fake pynvml

_ERROR_NAMES = {  # code -> pynvml class-name suffix (pynvml's own numbering)
    1: "Uninitialized",
    2: "InvalidArgument",
    3: "NotSupported",
    4: "NoPermission",
    6: "NotFound",
    9: "DriverNotLoaded",
    12: "LibraryNotFound",
    13: "FunctionNotFound",
    15: "GpuIsLost",
    999: "Unknown",
}


class FakeDevice:
    """One fake GPU: limits in mW, energy in mJ, power in mW, as NVML reports them."""

    def __init__(
        self,
        name: str = "NVIDIA A100-SXM4-40GB",
        uuid: str = "GPU-00000000-0000-0000-0000-000000000000",
        min_mw: int = 100_000,
        max_mw: int = 400_000,
        limit_mw: int | None = None,
        energy_mj: int = 0,
        power_mw: int = 100_000,
        has_counter: bool = True,
        mig: int | None = 0,
        enforce_lag_reads: int = 0,
        enforced_cap_mw: int | None = None,
    ) -> None:
        self.name, self.uuid = name, uuid
        self.min_mw, self.max_mw = min_mw, max_mw
        self.limit_mw = max_mw if limit_mw is None else limit_mw
        self.energy_mj, self.power_mw = energy_mj, power_mw
        self.has_counter, self.mig = has_counter, mig
        self.set_calls: list[int] = []
        # The enforced limit as an H200 showed it: the first reads after a set still give the old limit
        # (``enforce_lag_reads`` of them); ``enforced_cap_mw`` is a lower limit set elsewhere.
        self.enforce_lag_reads, self.enforced_cap_mw = enforce_lag_reads, enforced_cap_mw
        self.enforced_mw, self.lag_left = self.limit_mw, 0
        self.enforced_reads = 0
        self.lost = False  # True: the GPU fell off the bus (every limit call raises GpuIsLost)

    def read_enforced_mw(self) -> int:
        self.enforced_reads += 1
        if self.lag_left > 0:
            self.lag_left -= 1
        else:
            self.enforced_mw = self.limit_mw
        return self.enforced_mw if self.enforced_cap_mw is None else min(self.enforced_mw, self.enforced_cap_mw)


def make_fake_nvml(devices: list[FakeDevice], init_error: str | None = None) -> types.ModuleType:
    """A module object with the pynvml functions and error classes NvmlGpu uses."""
    m = types.ModuleType("pynvml")
    m.__dict__["__file__"] = "<fake pynvml>"

    class NVMLError(Exception):
        _valClassMapping: dict[int, type] = {}

        def __new__(cls, value: int) -> NVMLError:
            if cls is NVMLError:
                cls = NVMLError._valClassMapping.get(value, cls)
            obj = Exception.__new__(cls)
            obj.value = value
            return obj

        def __str__(self) -> str:
            return _ERROR_NAMES.get(self.value, f"NVML Error with code {self.value}")

    m.NVMLError = NVMLError
    for code, suffix in _ERROR_NAMES.items():
        cls = type(f"NVMLError_{suffix}", (NVMLError,), {})
        NVMLError._valClassMapping[code] = cls
        setattr(m, cls.__name__, cls)
    m.NVML_DEVICE_MIG_DISABLE, m.NVML_DEVICE_MIG_ENABLE = 0, 1

    state: dict[str, Any] = {"init": 0, "shutdown": 0, "can_set": True, "set_not_supported": False}
    m.state = state
    m.devices = devices

    def err(name: str) -> Exception:
        return getattr(m, f"NVMLError_{name}")(next(k for k, v in _ERROR_NAMES.items() if v == name))

    def check() -> None:
        if state["init"] <= state["shutdown"]:
            raise err("Uninitialized")

    def nvmlInit() -> None:
        if init_error is not None:
            raise err(init_error)
        state["init"] += 1

    def nvmlShutdown() -> None:
        check()
        state["shutdown"] += 1

    def nvmlDeviceGetCount() -> int:
        check()
        return len(devices)

    def nvmlDeviceGetHandleByIndex(i: int) -> FakeDevice:
        check()
        if not 0 <= i < len(devices):
            raise err("InvalidArgument")
        return devices[i]

    def nvmlDeviceGetName(h: FakeDevice) -> bytes:
        return h.name.encode()  # old bindings return bytes: NvmlGpu must decode

    def nvmlDeviceGetUUID(h: FakeDevice) -> str:
        return h.uuid

    def nvmlDeviceGetMigMode(h: FakeDevice) -> list[int]:
        if h.mig is None:
            raise err("NotSupported")
        return [h.mig, h.mig]

    def nvmlDeviceGetPowerManagementLimitConstraints(h: FakeDevice) -> list[int]:
        return [h.min_mw, h.max_mw]

    def nvmlDeviceGetPowerManagementLimit(h: FakeDevice) -> int:
        if h.lost:
            raise err("GpuIsLost")
        return h.limit_mw

    def nvmlDeviceGetEnforcedPowerLimit(h: FakeDevice) -> int:
        if h.lost:
            raise err("GpuIsLost")
        return h.read_enforced_mw()

    def nvmlDeviceSetPowerManagementLimit(h: FakeDevice, mw: int) -> None:
        check()
        if h.lost:
            raise err("GpuIsLost")
        if state["set_not_supported"]:
            raise err("NotSupported")
        if not state["can_set"]:
            raise err("NoPermission")
        if not isinstance(mw, int) or not h.min_mw <= mw <= h.max_mw:
            raise err("InvalidArgument")
        h.set_calls.append(mw)
        h.limit_mw, h.lag_left = mw, h.enforce_lag_reads
        if state.get("after_set"):
            state["after_set"](h)
        print(f"fake-set {h.uuid} {mw}", flush=True)  # read by the subprocess test

    def nvmlDeviceGetTotalEnergyConsumption(h: FakeDevice) -> int:
        check()
        if not h.has_counter:
            raise err("NotSupported")
        return h.energy_mj

    def nvmlDeviceGetPowerUsage(h: FakeDevice) -> int:
        check()
        return h.power_mw

    def nvmlSystemGetDriverVersion() -> str:
        return "550.54.15"

    for fn in list(locals().values()):
        if isinstance(fn, types.FunctionType) and fn.__name__.startswith("nvml"):
            setattr(m, fn.__name__, fn)
    return m


def two_gpus(**kw: Any) -> list[FakeDevice]:
    return [
        FakeDevice(uuid="GPU-aaaa1111-0000-0000-0000-000000000000", energy_mj=1_000_000, **kw),
        FakeDevice(uuid="GPU-bbbb2222-0000-0000-0000-000000000000", energy_mj=5_000_000, **kw),
    ]


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch):
    """Install a fake pynvml (and a clean CUDA_VISIBLE_DEVICES); returns the fake module."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)

    def _install(devices: list[FakeDevice], init_error: str | None = None) -> types.ModuleType:
        fake = make_fake_nvml(devices, init_error)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        return fake

    return _install


@pytest.fixture(autouse=True)
def _keep_signal_handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, h in before.items():
        signal.signal(s, h)


# ----------------------------------------------------------------------------------------------- tests


def test_info_and_energy_counter_summed_over_two_gpus(install) -> None:
    fake = install(two_gpus())
    with NvmlGpu(power_limit_step_w=70) as gpu:
        info = gpu.info()
        assert info.model == "NVIDIA A100-SXM4-40GB" and info.count == 2
        assert (info.min_power_limit_w, info.max_power_limit_w) == (100.0, 400.0)
        assert info.power_limits_w == (100.0, 120.0, 190.0, 260.0, 330.0, 400.0)  # both ends always in
        assert info.max_power_w == 800.0 and info.can_set_power_limit
        assert gpu.energy_source == "counter"
        assert gpu.energy_j() == pytest.approx(6000.0)  # (1e6 + 5e6) mJ
        fake.devices[0].energy_mj += 250_000
        fake.devices[1].energy_mj += 750
        assert gpu.energy_j() == pytest.approx(6250.75)
        assert gpu.system_info()["driver_version"] == "550.54.15"
    assert fake.state["shutdown"] == 1
    assert all(d.set_calls == [d.max_mw] for d in fake.devices[:1])  # the probe rewrote the same value


def test_given_power_limits_validated_and_sorted(install) -> None:
    install(two_gpus())
    with NvmlGpu(power_limits_w=[300, 150, 300.0, 400]) as gpu:
        assert gpu.info().power_limits_w == (150.0, 300.0, 400.0)
    with pytest.raises(ValueError, match="outside"):
        NvmlGpu(power_limits_w=[50, 200])


def test_missing_counter_falls_back_to_polling_integrating_power(install) -> None:
    fake = install(two_gpus(power_mw=150_000))
    fake.devices[1].has_counter = False
    with NvmlGpu(poll_interval_s=0.005) as gpu:
        assert gpu.energy_source == "polling"
        e0, t0 = gpu.energy_j(), time.monotonic()
        time.sleep(0.08)
        t_switch = time.monotonic()
        fake.devices[0].power_mw = fake.devices[1].power_mw = 50_000  # 300 W -> 100 W total
        time.sleep(0.08)
        e1, t1 = gpu.energy_j(), time.monotonic()
        poller = gpu._poller
        assert poller is not None and poller.running and poller.samples > 5
        # The background samples bracket the switch closely, so the integral follows the step:
        # the error is at most 200 W times the gap between the two samples around the switch.
        expected = 300 * (t_switch - t0) + 100 * (t1 - t_switch)
        assert e1 - e0 == pytest.approx(expected, abs=200 * 0.04)
    assert not poller.running


def test_counter_forced_on_gpu_without_it_is_refused(install) -> None:
    install([FakeDevice(has_counter=False)])
    with pytest.raises(GpuConfigError, match="energy counter"):
        NvmlGpu(energy_source="counter")


def test_forced_polling_on_gpu_with_counter(install) -> None:
    install(two_gpus())
    with NvmlGpu(energy_source="polling", poll_interval_s=0.01) as gpu:
        assert gpu.energy_source == "polling"
        assert gpu.energy_j() == pytest.approx(0.0, abs=5.0)  # origin at the first reading (200 W)


def test_power_poller_trapezoid_is_exact_for_a_linear_ramp() -> None:
    clock = {"t": 0.0}
    poller = PowerPoller(lambda: 100.0 + 10.0 * clock["t"], interval_s=3600, clock=lambda: clock["t"])
    try:
        assert poller.energy_j() == 0.0
        for _ in range(10):
            clock["t"] += 0.5
            poller.sample()
        # integral of 100 + 10 t over [0, 5] = 500 + 125
        assert poller.energy_j() == pytest.approx(625.0)
    finally:
        poller.stop()


def test_power_poller_holds_last_reading_on_failure(caplog: pytest.LogCaptureFixture) -> None:
    clock = {"t": 0.0}
    readings: list[float | Exception] = [100.0, RuntimeError("boom"), RuntimeError("boom"), 100.0]

    def read() -> float:
        r = readings.pop(0)
        if isinstance(r, Exception):
            raise r
        return r

    poller = PowerPoller(read, interval_s=3600, clock=lambda: clock["t"])
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            poller.start()
            for _ in range(3):
                clock["t"] += 1.0
                poller.sample()
        assert poller.energy_j() == pytest.approx(300.0)
        assert sum("holding the last reading" in r.getMessage() for r in caplog.records) == 1
    finally:
        poller.stop()


def test_set_readback_and_restore(install) -> None:
    fake = install(two_gpus(limit_mw=350_000))
    gpu = NvmlGpu()
    assert gpu.power_limit_w() == 350.0
    assert gpu.set_power_limit(200) == 200.0
    assert [d.limit_mw for d in fake.devices] == [200_000, 200_000]
    assert gpu.set_power_limit(250.4) == pytest.approx(250.4)
    assert fake.devices[0].limit_mw == 250_400
    with pytest.raises(ValueError, match="outside"):
        gpu.set_power_limit(401)
    with pytest.raises(ValueError, match="outside"):
        gpu.set_power_limit(99)
    gpu.restore_power_limit()
    assert [d.limit_mw for d in fake.devices] == [350_000, 350_000]  # the originals, not the max
    gpu.restore_power_limit()  # idempotent
    assert fake.devices[0].set_calls == [200_000, 250_400, 350_000]
    gpu.set_power_limit(100)
    gpu.close()
    assert [d.limit_mw for d in fake.devices] == [350_000, 350_000]
    gpu.close()  # idempotent
    assert fake.state["shutdown"] == 1
    with pytest.raises(RuntimeError, match="closed"):
        gpu.energy_j()


def test_a_set_waits_until_the_gpu_enforces_the_new_limit(install) -> None:
    fake = install(two_gpus(enforce_lag_reads=3))  # enforced lags the set, as on an H200
    gpu = NvmlGpu()
    assert gpu.set_power_limit(200) == 200.0  # not the 400 W still read right after the set
    assert all(d.enforced_reads >= 4 for d in fake.devices)
    assert gpu.set_power_limit(300) == 300.0
    gpu.close()


def test_a_limit_held_lower_elsewhere_is_reported_and_warned_once(
    install, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import client_sdk.nvml as nvml_module

    monkeypatch.setattr(nvml_module, "ENFORCE_WAIT_S", 0.05)
    install([FakeDevice(enforced_cap_mw=250_000)])
    with caplog.at_level(logging.WARNING, logger="powerbandit.sdk.nvml"), NvmlGpu() as gpu:
        assert gpu.set_power_limit(300) == 250.0  # the truth: what the GPU enforces
        assert gpu.set_power_limit(200) == 200.0
        assert gpu.set_power_limit(300) == 250.0
    warnings = [r.getMessage() for r in caplog.records if "still enforces" in r.getMessage()]
    assert warnings == [
        "GPU 0: power limit set to 300.0 W, but NVML still enforces 250.0 W after 0.05 s "
        "(a lower limit set elsewhere holds it); runs are reported at the enforced limit."
    ]


def test_restoring_on_a_lost_gpu_logs_and_does_not_raise(install, caplog: pytest.LogCaptureFixture) -> None:
    fake = install([FakeDevice()])
    gpu = NvmlGpu()
    assert gpu.set_power_limit(200) == 200.0
    fake.devices[0].lost = True
    with caplog.at_level(logging.WARNING, logger="powerbandit.sdk.nvml"):
        gpu.restore_power_limit()  # neither the restore nor the wait for its enforcement raises
    assert "restore it by hand" in caplog.text
    fake.devices[0].lost = False
    gpu.close()


def test_gpu_check_script_runs_on_the_fake_and_leaves_the_limit_as_it_found_it(
    install, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks.gpu_check import main

    fake = install([FakeDevice(limit_mw=350_000, enforce_lag_reads=3)])
    assert main(["--seconds", "0.05", "--tail", "0", "--poll-interval", "0.02"]) == 0
    out = capsys.readouterr().out
    assert "asked 250 W -> in force 250 W" in out  # the enforced limit, not the one before the set
    assert "== raw set on GPU 0" in out and out.rstrip().endswith("== OK")
    assert fake.devices[0].limit_mw == 350_000  # the raw sets were undone too


def test_no_permission_warns_once_and_reports_the_truth(install, caplog: pytest.LogCaptureFixture) -> None:
    fake = install(two_gpus(limit_mw=300_000))
    fake.state["can_set"] = False
    with caplog.at_level(logging.WARNING, logger=LOGGER), NvmlGpu() as gpu:
        assert gpu.set_power_limit(150) == 300.0
        assert gpu.set_power_limit(200) == 300.0
        assert gpu.info().can_set_power_limit is False
        assert gpu.power_limit_w() == 300.0
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "CAP_SYS_ADMIN" in text and "root" in text and "continues at the power limit in force" in text
    assert [d.limit_mw for d in fake.devices] == [300_000, 300_000]
    assert signal.getsignal(signal.SIGTERM) is not None and not callable_is_ours(signal.SIGTERM)


def test_no_permission_found_by_the_info_probe(install, caplog: pytest.LogCaptureFixture) -> None:
    fake = install(two_gpus())
    fake.state["can_set"] = False
    with caplog.at_level(logging.WARNING, logger=LOGGER), NvmlGpu() as gpu:
        assert gpu.info().can_set_power_limit is False
        assert gpu.set_power_limit(200) == 400.0
    assert len([r for r in caplog.records if r.name == LOGGER]) == 1


def test_setting_not_supported_degrades_like_no_permission(install, caplog: pytest.LogCaptureFixture) -> None:
    fake = install(two_gpus())
    fake.state["set_not_supported"] = True
    with caplog.at_level(logging.WARNING, logger=LOGGER), NvmlGpu() as gpu:
        assert gpu.set_power_limit(200) == 400.0
    assert "do not support setting power limits" in caplog.records[-1].getMessage()


def callable_is_ours(signum: int) -> bool:
    h = signal.getsignal(signum)
    return getattr(h, "__func__", None) is RestoreGuard.on_signal


def test_signal_handlers_restore_then_chain(install) -> None:
    fake = install(two_gpus(limit_mw=300_000))
    seen: list[int] = []
    signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    previous_int = signal.getsignal(signal.SIGINT)
    with NvmlGpu() as gpu:
        gpu.set_power_limit(150)
        assert callable_is_ours(signal.SIGTERM) and callable_is_ours(signal.SIGINT)
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        assert seen == [signal.SIGTERM]
        assert [d.limit_mw for d in fake.devices] == [300_000, 300_000]
        assert not callable_is_ours(signal.SIGTERM)  # uninstalled once restored
        assert signal.getsignal(signal.SIGINT) == previous_int

        signal.signal(signal.SIGINT, signal.default_int_handler)
        gpu.set_power_limit(120)
        with pytest.raises(KeyboardInterrupt):
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        assert [d.limit_mw for d in fake.devices] == [300_000, 300_000]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_signal_during_set_leaves_no_gpu_changed(install) -> None:
    fake = install(two_gpus(limit_mw=300_000))
    signal.signal(signal.SIGTERM, lambda s, f: None)  # a graceful-shutdown handler: the program goes on

    def deliver_sigterm(h: FakeDevice) -> None:
        fake.state["after_set"] = None
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)

    fake.state["after_set"] = deliver_sigterm
    with NvmlGpu() as gpu:
        assert gpu.set_power_limit(150) == 300.0
        assert [d.limit_mw for d in fake.devices] == [300_000, 300_000]
        assert gpu.set_power_limit(150) == 150.0  # and a later change is tracked again
        assert callable_is_ours(signal.SIGTERM)
    assert [d.limit_mw for d in fake.devices] == [300_000, 300_000]


def test_sigterm_with_default_action_restores_then_dies(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        sys.path[:0] = [{str(REPO_ROOT)!r}, {str(Path(__file__).parent)!r}]
        from test_nvml_gpu import FakeDevice, make_fake_nvml
        sys.modules["pynvml"] = make_fake_nvml([FakeDevice(uuid="GPU-x", limit_mw=300000)])
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        from client_sdk.nvml import NvmlGpu
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        gpu = NvmlGpu()
        gpu.set_power_limit(150)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        print("survived", flush=True)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    sets = [line for line in proc.stdout.splitlines() if line.startswith("fake-set")]
    assert sets == ["fake-set GPU-x 150000", "fake-set GPU-x 300000"], proc.stdout + proc.stderr


def test_atexit_restores(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = [{str(REPO_ROOT)!r}, {str(Path(__file__).parent)!r}]
        from test_nvml_gpu import FakeDevice, make_fake_nvml
        sys.modules["pynvml"] = make_fake_nvml([FakeDevice(uuid="GPU-x", limit_mw=300000)])
        from client_sdk.nvml import NvmlGpu
        gpu = NvmlGpu(device_indices=[0])
        gpu.set_power_limit(150)
        print("exiting", flush=True)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "fake-set GPU-x 300000"


def test_set_from_a_worker_thread_installs_no_signal_handler(install) -> None:
    fake = install(two_gpus(limit_mw=300_000))
    with NvmlGpu() as gpu:
        result: list[float] = []
        t = threading.Thread(target=lambda: result.append(gpu.set_power_limit(200)))
        t.start()
        t.join()
        assert result == [200.0] and not callable_is_ours(signal.SIGTERM)
    assert [d.limit_mw for d in fake.devices] == [300_000, 300_000]


def four_gpus() -> list[FakeDevice]:
    return [FakeDevice(uuid=f"GPU-{i}{i}{i}{i}abcd-0000-0000-0000-00000000000{i}") for i in range(4)]


def test_cuda_visible_devices_indices(install, monkeypatch: pytest.MonkeyPatch) -> None:
    install(four_gpus())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    with NvmlGpu() as gpu:
        assert gpu.device_indices == (2, 0) and gpu.info().count == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,7,3")  # like CUDA: an invalid entry ends the list
    with NvmlGpu() as gpu:
        assert gpu.device_indices == (1,)
    with NvmlGpu(device_indices=[3]) as gpu:  # explicit indices win over the environment
        assert gpu.device_indices == (3,)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(GpuUnavailableError, match="hides every GPU"):
        NvmlGpu()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    with pytest.raises(GpuUnavailableError, match="hides every GPU"):
        NvmlGpu()


def test_cuda_visible_devices_uuids(install, monkeypatch: pytest.MonkeyPatch) -> None:
    install(four_gpus())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-3333abcd-0000-0000-0000-000000000003,GPU-1111")
    with NvmlGpu() as gpu:
        assert gpu.device_indices == (3, 1)
        assert gpu.device_uuids[0] == "GPU-3333abcd-0000-0000-0000-000000000003"


def test_mig_refused(install, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install(four_gpus())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-4a5b6c7d-0000-0000-0000-000000000000")
    with pytest.raises(GpuConfigError, match="MIG") as exc_info:
        NvmlGpu()
    assert isinstance(exc_info.value, ValueError)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    fake.devices[2].mig = fake.NVML_DEVICE_MIG_ENABLE
    with pytest.raises(GpuConfigError, match="MIG mode enabled"):
        NvmlGpu()
    assert fake.state["init"] == fake.state["shutdown"]  # NVML shut down again after refusing
    with NvmlGpu(device_indices=[0, 1]) as gpu:  # the other GPUs are fine
        assert gpu.info().count == 2
    fake.devices[0].mig = None  # GPUs without MIG support answer NotSupported
    with NvmlGpu(device_indices=[0]) as gpu:
        assert gpu.info().count == 1


def test_mixed_models_and_bad_indices_refused(install) -> None:
    devices = two_gpus()
    devices[1].name = "NVIDIA V100-SXM2-32GB"
    install(devices)
    with pytest.raises(GpuConfigError, match="different models"):
        NvmlGpu()
    with pytest.raises(GpuConfigError, match="distinct NVML indices"):
        NvmlGpu(device_indices=[0, 0])
    with pytest.raises(GpuConfigError, match="distinct NVML indices"):
        NvmlGpu(device_indices=[5])


@pytest.mark.parametrize("error", ["LibraryNotFound", "DriverNotLoaded"])
def test_missing_nvml_or_driver_names_the_ways_out(install, error: str) -> None:
    install([], init_error=error)
    with pytest.raises(GpuUnavailableError) as exc_info:
        NvmlGpu()
    text = str(exc_info.value)
    assert "client_sdk.replay.ReplayGpu" in text and "driver" in text


def test_no_devices_and_no_bindings(install, monkeypatch: pytest.MonkeyPatch) -> None:
    install([])
    with pytest.raises(GpuUnavailableError, match="ReplayGpu"):
        NvmlGpu()
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    with pytest.raises(GpuUnavailableError, match="nvidia-ml-py") as exc_info:
        NvmlGpu()
    assert "ReplayGpu" in str(exc_info.value)


def test_now_s_synchronises_torch_cuda_when_in_use(install, monkeypatch: pytest.MonkeyPatch) -> None:
    install(two_gpus())
    calls: list[int] = []
    cuda = types.SimpleNamespace(
        is_initialized=lambda: True,
        current_device=lambda: 0,
        device_count=lambda: 3,
        memory_reserved=lambda i: 1 << 20 if i == 2 else 0,
        synchronize=calls.append,
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    with NvmlGpu() as gpu:
        t0 = gpu.now_s()
        assert calls == [0, 2]  # the current device and the one holding this process's memory
        cuda.is_initialized = lambda: False
        assert gpu.now_s() >= t0 and calls == [0, 2]


@pytest.mark.skipif(
    os.environ.get("POWERBANDIT_REAL_GPU") != "1", reason="set POWERBANDIT_REAL_GPU=1 on a GPU box"
)
def test_real_gpu_smoke() -> None:  # pragma: no cover - hardware
    sys.modules.pop("pynvml", None)
    with NvmlGpu() as gpu:
        info = gpu.info()
        assert info.count >= 1 and info.min_power_limit_w <= info.max_power_limit_w
        e0 = gpu.energy_j()
        time.sleep(0.3)
        assert gpu.energy_j() >= e0
        before = gpu.power_limit_w()
        if info.can_set_power_limit:  # root: the enforced limit is what a set returns, then restored
            target = float(round((info.min_power_limit_w + info.max_power_limit_w) / 2))
            assert gpu.set_power_limit(target) == pytest.approx(target, abs=1.0)
            assert gpu.set_power_limit(info.min_power_limit_w) == pytest.approx(info.min_power_limit_w, abs=1.0)
    with NvmlGpu() as gpu:
        assert gpu.power_limit_w() == pytest.approx(before, abs=1.0)
