"""Real GPUs through NVML: :class:`NvmlGpu`.

What it does, and how it degrades:

- **Which GPUs.** ``device_indices`` (NVML indices) when given; otherwise the GPUs the job sees through
  ``CUDA_VISIBLE_DEVICES`` (indices such as ``"0,2"`` or UUIDs such as ``"GPU-8a1b..."``, unique
  prefixes allowed, as CUDA does), or every GPU when it is unset. Like CUDA, an entry that matches no
  GPU ends the list (logged). MIG instances (``"MIG-..."`` entries, or a GPU with MIG mode enabled)
  are refused: NVML's power limits and energy counter belong to the whole GPU, not to one instance.
  GPUs of different models in one job are refused too (the optimizer learns per GPU model).
- **Energy.** The total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, Volta and newer)
  summed over the GPUs; where any GPU lacks it, or with ``energy_source="polling"``, a daemon thread
  integrates ``nvmlDeviceGetPowerUsage`` with the trapezoid rule (:mod:`client_sdk.power_polling`).
  The counter updates about every 100 ms, so windows much shorter than a second measure better by
  polling. Note that on Ampere and newer, NVML's power reading is itself a ~1 s average, so polling
  lags fast changes by up to a second; over windows of several seconds both agree closely.
- **Time.** ``now_s`` synchronises the CUDA devices this process uses through PyTorch (only when the
  training script has already imported torch and initialised CUDA: otherwise no GPU work of this
  process can be pending), then reads ``time.monotonic()``.
- **Power limits.** Setting a limit needs root or ``CAP_SYS_ADMIN``. Without it, one warning is logged
  (logger ``powerbandit.sdk.nvml``) and the run continues at the limit in force, which is what
  :meth:`NvmlGpu.set_power_limit` returns, so the run is reported truthfully. The limits in force
  before the first change are put back by :meth:`NvmlGpu.restore_power_limit`, :meth:`NvmlGpu.close`,
  at interpreter exit, and on SIGTERM/SIGINT (handlers installed only while a limit is changed, in
  the main thread, chaining to the previous handlers). A ``kill -9`` cannot be caught: restore by
  hand then (``sudo nvidia-smi -i <index> -pl <watts>``, or reboot, which resets the limit).
- **No GPU.** A missing ``pynvml`` module, NVIDIA driver or device raises
  :class:`~client_sdk.gpu.GpuUnavailableError` whose message names the ways out (a GPU machine with
  the driver, or a dry run with :class:`client_sdk.replay.ReplayGpu`).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType, ModuleType
from typing import Any, Literal

from client_sdk.gpu import Gpu, GpuInfo, GpuUnavailableError
from client_sdk.power_polling import PowerPoller

__all__ = ["EnergySource", "GpuConfigError", "NvmlGpu"]

_LOG = logging.getLogger("powerbandit.sdk.nvml")

EnergySource = Literal["auto", "counter", "polling"]
_ENERGY_SOURCES: tuple[str, ...] = ("auto", "counter", "polling")

_WAYS_OUT = (
    "Ways out: (1) run on a machine with an NVIDIA GPU and its driver installed (`nvidia-smi` must work "
    "there); or (2) do a dry run with the replay GPU, client_sdk.replay.ReplayGpu, which replays energy "
    "and time from a trace instead of measuring them."
)

_PERMISSION_HELP = (
    "Setting GPU power limits needs root or the CAP_SYS_ADMIN capability: run the training as root "
    "(e.g. `sudo -E python train.py`), or grant the capability to the container/process (e.g. "
    "`docker run --cap-add SYS_ADMIN ...`); enabling persistence mode (`sudo nvidia-smi -pm 1`) keeps "
    "a limit applied between processes."
)

# Tolerance when checking a requested limit against the allowed range: NVML works in milliwatts.
_RANGE_TOL_W = 5e-4


class GpuConfigError(GpuUnavailableError, ValueError):
    """GPUs exist, but not in a form this SDK can measure as asked.

    Raised for MIG (instances or MIG-enabled GPUs), GPUs of mixed models in one job, invalid
    ``device_indices``, or ``energy_source="counter"`` on GPUs without the energy counter. It is both a
    :class:`GpuUnavailableError` and a :class:`ValueError`, so either ``except`` catches it.
    """


@dataclass(frozen=True)
class _Device:
    index: int  # NVML index
    handle: Any
    name: str
    uuid: str
    min_limit_mw: int
    max_limit_mw: int


def _text(value: object) -> str:
    """NVML strings are ``bytes`` in old bindings and ``str`` in new ones."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _load_nvml() -> ModuleType:
    """Import ``pynvml`` and initialise NVML, or raise :class:`GpuUnavailableError` with the ways out."""
    try:
        import pynvml
    except ImportError as exc:
        raise GpuUnavailableError(
            "Cannot measure GPUs: the NVML Python bindings are not installed (module `pynvml`, package "
            "`nvidia-ml-py`; install with `pip install nvidia-ml-py`). " + _WAYS_OUT
        ) from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        if isinstance(exc, pynvml.NVMLError_LibraryNotFound):
            why = "the NVML library (libnvidia-ml.so / nvml.dll) was not found, so no NVIDIA driver is installed"
        elif isinstance(exc, pynvml.NVMLError_DriverNotLoaded):
            why = "the NVIDIA driver is installed but not loaded"
        else:
            why = f"NVML failed to initialise ({exc})"
        raise GpuUnavailableError(f"Cannot measure GPUs: {why}. " + _WAYS_OUT) from exc
    return pynvml


def _select_from_cuda_visible_devices(value: str, uuids: Sequence[str]) -> list[int]:
    """NVML indices named by ``CUDA_VISIBLE_DEVICES``, following CUDA's parsing rules.

    Entries are indices or (prefixes of) ``GPU-`` UUIDs; like CUDA, the first entry that matches no GPU
    (or repeats one) ends the list. ``MIG-`` entries raise :class:`GpuConfigError`.
    """
    selected: list[int] = []
    for raw in value.split(","):
        entry = raw.strip()
        if entry.upper().startswith("MIG-"):
            raise GpuConfigError(
                f"CUDA_VISIBLE_DEVICES={value!r} names a MIG instance ({entry!r}). powerbandit cannot measure or "
                "power-limit a MIG instance (NVML's energy counter and power limit belong to the whole GPU). "
                "Run on a whole GPU with MIG disabled, or do a dry run with client_sdk.replay.ReplayGpu."
            )
        match: int | None = None
        if entry.isdigit():
            if int(entry) < len(uuids):
                match = int(entry)
        elif entry:
            key = entry.lower() if entry.lower().startswith("gpu-") else "gpu-" + entry.lower()
            hits = [i for i, u in enumerate(uuids) if u.lower().startswith(key)]
            if len(hits) == 1:
                match = hits[0]
        if match is None or match in selected:
            _LOG.warning(
                "CUDA_VISIBLE_DEVICES=%r: entry %r matches no GPU here (or repeats one); like CUDA, the GPUs "
                "listed after it are ignored.",
                value,
                entry,
            )
            break
        selected.append(match)
    return selected


def _chain_signal(signum: int, previous: Any, frame: FrameType | None) -> None:
    """Hand a signal to the handler that was installed before ours."""
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    elif signum == signal.SIGINT:
        raise KeyboardInterrupt
    else:
        # Default action (terminate): re-deliver the signal with the default disposition.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


class NvmlGpu(Gpu):
    """The job's GPUs, measured and power-limited through NVML.

    Args:
        device_indices: NVML indices of the job's GPUs; ``None`` = those named by
            ``CUDA_VISIBLE_DEVICES`` (all GPUs when unset). Note that CUDA numbers GPUs fastest first
            unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; on machines with identical GPUs both orders agree,
            otherwise prefer UUIDs in ``CUDA_VISIBLE_DEVICES``.
        power_limits_w: candidate per-GPU power limits to profile (each within the allowed range);
            ``None`` = from the maximum down to the minimum in steps of ``power_limit_step_w``, always
            including both ends. Reported ascending, without duplicates.
        power_limit_step_w: step of the default candidate list, watts (> 0).
        poll_interval_s: power-polling period, seconds (> 0), when polling is used.
        energy_source: ``"auto"`` (the energy counter where every GPU has one, else polling),
            ``"counter"`` (the counter or :class:`GpuConfigError`), or ``"polling"``.

    Raises:
        GpuUnavailableError: no ``pynvml``, no driver, or no GPU visible; the message names the ways out.
        GpuConfigError: MIG, mixed GPU models, bad ``device_indices``, or an unavailable counter when
            ``energy_source="counter"``.
        ValueError: bad arguments (candidate limit outside the allowed range, non-positive step...).
    """

    def __init__(
        self,
        device_indices: Sequence[int] | None = None,
        power_limits_w: Sequence[float] | None = None,
        power_limit_step_w: float = 25.0,
        poll_interval_s: float = 0.1,
        energy_source: EnergySource = "auto",
    ) -> None:
        if not power_limit_step_w > 0:
            raise ValueError(f"power_limit_step_w must be > 0, got {power_limit_step_w!r}")
        if not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s!r}")
        if energy_source not in _ENERGY_SOURCES:
            raise ValueError(f"energy_source must be one of {_ENERGY_SOURCES}, got {energy_source!r}")

        self._closed = True  # until NVML is initialised; close() is then a no-op
        self._nvml = _load_nvml()
        self._closed = False
        self._lock = threading.RLock()
        self._poller: PowerPoller | None = None
        self._originals_mw: dict[int, int] = {}  # position in self._devices -> limit before our change
        self._can_set: bool | None = None
        self._warned_cannot_set = False
        self._previous_handlers: dict[int, Any] = {}
        self._atexit_callback: Callable[[], None] | None = None
        try:
            self._devices = self._open_devices(device_indices)
            self._min_limit_w = max(d.min_limit_mw for d in self._devices) / 1000.0
            self._max_limit_w = min(d.max_limit_mw for d in self._devices) / 1000.0
            self._candidates_w = self._candidate_limits(power_limits_w, power_limit_step_w)
            self._energy_source = self._choose_energy_source(energy_source)
        except BaseException:
            self._shutdown_nvml()
            raise
        self._poll_interval_s = float(poll_interval_s)
        _LOG.info(
            "NVML: %d x %s (NVML indices %s), power limit %.0f-%.0f W, energy from %s",
            len(self._devices),
            self._devices[0].name,
            [d.index for d in self._devices],
            self._min_limit_w,
            self._max_limit_w,
            self._energy_source,
        )

    # ------------------------------------------------------------------ setup

    def _open_devices(self, device_indices: Sequence[int] | None) -> list[_Device]:
        nvml = self._nvml
        count = int(nvml.nvmlDeviceGetCount())
        if count == 0:
            raise GpuUnavailableError("Cannot measure GPUs: NVML works but sees no GPU. " + _WAYS_OUT)
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles]

        if device_indices is not None:
            indices = [int(i) for i in device_indices]
            bad = [i for i in indices if not 0 <= i < count]
            if not indices or bad or len(set(indices)) != len(indices):
                raise GpuConfigError(
                    f"device_indices={list(device_indices)!r} must be distinct NVML indices in [0, {count}) "
                    f"on this machine ({count} GPU(s))."
                )
        else:
            cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
            if cvd is None:
                indices = list(range(count))
            else:
                indices = _select_from_cuda_visible_devices(cvd, uuids)
                if not indices:
                    raise GpuUnavailableError(
                        f"Cannot measure GPUs: CUDA_VISIBLE_DEVICES={cvd!r} hides every GPU of this machine. "
                        "Unset it or name GPUs by index or UUID (see `nvidia-smi -L`). " + _WAYS_OUT
                    )
                order = os.environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
                if order != "PCI_BUS_ID" and any(e.strip().isdigit() for e in cvd.split(",")):
                    models = {_text(nvml.nvmlDeviceGetName(h)) for h in handles}
                    if len(models) > 1:
                        _LOG.warning(
                            "CUDA_VISIBLE_DEVICES uses indices on a machine with different GPU models while "
                            "CUDA_DEVICE_ORDER=%s: CUDA's and NVML's numbering may differ. Set "
                            "CUDA_DEVICE_ORDER=PCI_BUS_ID or use GPU UUIDs.",
                            order,
                        )

        devices = [self._open_device(i, handles[i], uuids[i]) for i in indices]
        models = sorted({d.name for d in devices})
        if len(models) > 1:
            raise GpuConfigError(
                f"The job's GPUs are of different models ({', '.join(models)}); powerbandit learns per GPU "
                "model. Restrict the job to one model with CUDA_VISIBLE_DEVICES or device_indices."
            )
        return devices

    def _open_device(self, index: int, handle: Any, uuid: str) -> _Device:
        nvml = self._nvml
        name = _text(nvml.nvmlDeviceGetName(handle))
        try:
            current_mig, _pending = nvml.nvmlDeviceGetMigMode(handle)
        except nvml.NVMLError:  # NotSupported / FunctionNotFound: no MIG on this GPU or driver
            current_mig = None
        if current_mig is not None and current_mig == nvml.NVML_DEVICE_MIG_ENABLE:
            raise GpuConfigError(
                f"GPU {index} ({name}, {uuid}) has MIG mode enabled. powerbandit cannot measure or power-limit "
                "MIG instances (NVML's energy counter and power limit belong to the whole GPU). Disable MIG "
                f"(`sudo nvidia-smi -i {index} -mig 0`), use another GPU, or do a dry run with "
                "client_sdk.replay.ReplayGpu."
            )
        try:
            min_mw, max_mw = nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
        except nvml.NVMLError as exc:
            raise GpuConfigError(
                f"GPU {index} ({name}) does not report its power-limit range ({exc}); powerbandit needs it. "
                "Use a GPU with power management (data-centre GPUs, Volta or newer), or do a dry run with "
                "client_sdk.replay.ReplayGpu."
            ) from exc
        return _Device(index, handle, name, uuid, int(min_mw), int(max_mw))

    def _candidate_limits(self, power_limits_w: Sequence[float] | None, step_w: float) -> tuple[float, ...]:
        lo, hi = self._min_limit_w, self._max_limit_w
        if lo > hi:
            raise GpuConfigError(
                f"The job's GPUs have no common power-limit range (min {lo} W > max {hi} W)."
            )
        if power_limits_w is not None:
            values = [float(w) for w in power_limits_w]
            if not values:
                raise ValueError("power_limits_w must not be empty")
            outside = [w for w in values if not lo - _RANGE_TOL_W <= w <= hi + _RANGE_TOL_W]
            if outside:
                raise ValueError(
                    f"power_limits_w {outside} outside this GPU's allowed range [{lo:g}, {hi:g}] W"
                )
            return tuple(sorted({min(max(w, lo), hi) for w in values}))
        values = []
        w = hi
        while w > lo + _RANGE_TOL_W:
            values.append(w)
            w = hi - len(values) * step_w
        values.append(lo)
        return tuple(sorted(set(values)))

    def _choose_energy_source(self, requested: str) -> str:
        if requested == "polling":
            return "polling"
        nvml = self._nvml
        missing = []
        for d in self._devices:
            try:
                nvml.nvmlDeviceGetTotalEnergyConsumption(d.handle)
            except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound):
                missing.append(d.index)
        if not missing:
            return "counter"
        if requested == "counter":
            raise GpuConfigError(
                f"GPU(s) {missing} ({self._devices[0].name}) have no total-energy counter (it needs Volta or "
                "newer); use energy_source='auto' or 'polling'."
            )
        _LOG.info("GPU(s) %s have no total-energy counter; measuring energy by polling power.", missing)
        return "polling"

    # --------------------------------------------------------------- queries

    @property
    def energy_source(self) -> str:
        """``"counter"`` or ``"polling"``: how :meth:`energy_j` measures."""
        return self._energy_source

    @property
    def device_indices(self) -> tuple[int, ...]:
        """NVML indices of the job's GPUs."""
        return tuple(d.index for d in self._devices)

    @property
    def device_uuids(self) -> tuple[str, ...]:
        """UUIDs of the job's GPUs."""
        return tuple(d.uuid for d in self._devices)

    def system_info(self) -> dict[str, str]:
        """Driver, NVML and CUDA-driver versions (for logs and the GPU check); missing ones are omitted."""
        self._check_open()
        nvml = self._nvml
        out: dict[str, str] = {}
        for key, fn_name in (
            ("driver_version", "nvmlSystemGetDriverVersion"),
            ("nvml_version", "nvmlSystemGetNVMLVersion"),
            ("cuda_driver_version", "nvmlSystemGetCudaDriverVersion"),
        ):
            fn = getattr(nvml, fn_name, None)
            if fn is None:
                continue
            try:
                value = fn()
            except nvml.NVMLError:
                continue
            if key == "cuda_driver_version" and isinstance(value, int):
                value = f"{value // 1000}.{value % 1000 // 10}"
            out[key] = _text(value)
        return out

    def info(self) -> GpuInfo:
        """Model, count, power-limit range and candidates of the job's GPUs.

        The first call probes whether limits can be set by setting the current limit again (a no-op
        that needs the same privilege); without permission it logs the one warning.
        """
        self._check_open()
        if self._can_set is None:
            self._probe_can_set()
        return GpuInfo(
            model=self._devices[0].name,
            count=len(self._devices),
            min_power_limit_w=self._min_limit_w,
            max_power_limit_w=self._max_limit_w,
            power_limits_w=self._candidates_w,
            can_set_power_limit=bool(self._can_set),
        )

    def energy_j(self) -> float:
        """Energy in joules summed over the job's GPUs (arbitrary origin; use differences)."""
        self._check_open()
        if self._energy_source == "counter":
            nvml = self._nvml
            return (
                sum(int(nvml.nvmlDeviceGetTotalEnergyConsumption(d.handle)) for d in self._devices) / 1000.0
            )
        if self._poller is None:
            with self._lock:
                if self._poller is None:
                    self._poller = PowerPoller(
                        self._read_power_w, self._poll_interval_s, thread_name="powerbandit-nvml-power-poller"
                    )
        return self._poller.energy_j()

    def _read_power_w(self) -> float:
        nvml = self._nvml
        return sum(int(nvml.nvmlDeviceGetPowerUsage(d.handle)) for d in self._devices) / 1000.0

    def now_s(self) -> float:
        """``time.monotonic()`` after synchronising this process's CUDA devices (PyTorch, when in use)."""
        self._sync_cuda()
        return time.monotonic()

    @staticmethod
    def _sync_cuda() -> None:
        # Only when the script already uses torch with CUDA: importing torch here would cost seconds and
        # could not find pending work. Synchronise the current device and every device on which this
        # process holds memory; never touch other devices (that would create a CUDA context there).
        torch = sys.modules.get("torch")
        cuda = getattr(torch, "cuda", None)
        if cuda is None or not cuda.is_initialized():
            return
        current = cuda.current_device()
        devices = {current}
        for i in range(cuda.device_count()):
            if i != current and cuda.memory_reserved(i) > 0:
                devices.add(i)
        for i in sorted(devices):
            cuda.synchronize(i)

    def power_limit_w(self) -> float:
        """The per-GPU power limit in force (the enforced limit; the mean if the GPUs differ)."""
        self._check_open()
        return sum(self._limit_in_force_mw(d) for d in self._devices) / len(self._devices) / 1000.0

    def _limit_in_force_mw(self, d: _Device) -> int:
        nvml = self._nvml
        try:
            return int(nvml.nvmlDeviceGetEnforcedPowerLimit(d.handle))
        except nvml.NVMLError:
            return int(nvml.nvmlDeviceGetPowerManagementLimit(d.handle))

    # ---------------------------------------------------------- power limits

    def set_power_limit(self, power_limit_w: float) -> float:
        """Apply ``power_limit_w`` (W, per GPU) on every GPU of the job; return the limit in force after.

        Raises ``ValueError`` outside ``[min_power_limit_w, max_power_limit_w]``. Without permission
        (or on GPUs that cannot set limits) it logs one warning and returns the unchanged limit.
        """
        self._check_open()
        w = float(power_limit_w)
        if not self._min_limit_w - _RANGE_TOL_W <= w <= self._max_limit_w + _RANGE_TOL_W:
            raise ValueError(
                f"power limit {w:g} W outside the allowed range [{self._min_limit_w:g}, {self._max_limit_w:g}] W"
            )
        nvml = self._nvml
        with self._lock:
            if self._can_set is False:
                return self.power_limit_w()
            for pos, d in enumerate(self._devices):
                if pos not in self._originals_mw:
                    self._originals_mw[pos] = int(nvml.nvmlDeviceGetPowerManagementLimit(d.handle))
            self._arm_restore()
            for d in self._devices:
                if not self._originals_mw:
                    # A signal handler restored the limits meanwhile and handed the signal on to a handler
                    # that let the program continue: don't leave later GPUs changed and untracked.
                    return self.power_limit_w()
                target_mw = min(max(round(w * 1000), d.min_limit_mw), d.max_limit_mw)
                try:
                    nvml.nvmlDeviceSetPowerManagementLimit(d.handle, target_mw)
                except (nvml.NVMLError_NoPermission, nvml.NVMLError_NotSupported) as exc:
                    self._cannot_set(exc)
                    self._restore_locked()  # undo any GPU already changed in this call
                    return self.power_limit_w()
                readback_mw = int(nvml.nvmlDeviceGetPowerManagementLimit(d.handle))
                if abs(readback_mw - target_mw) > 1000:
                    _LOG.warning(
                        "GPU %d: asked for a %.1f W power limit, NVML reports %.1f W.",
                        d.index,
                        target_mw / 1000,
                        readback_mw / 1000,
                    )
            self._can_set = True
            return self.power_limit_w()

    def restore_power_limit(self) -> None:
        """Put back the limits in force before this object first changed them (idempotent)."""
        if self._closed:
            return
        with self._lock:
            self._restore_locked()

    def _restore_locked(self) -> None:
        nvml = self._nvml
        for pos, original_mw in sorted(self._originals_mw.items()):
            d = self._devices[pos]
            try:
                if int(nvml.nvmlDeviceGetPowerManagementLimit(d.handle)) != original_mw:
                    nvml.nvmlDeviceSetPowerManagementLimit(d.handle, original_mw)
            except nvml.NVMLError as exc:
                _LOG.warning(
                    "Could not restore GPU %d's power limit to %.1f W (%s); restore it by hand: "
                    "`sudo nvidia-smi -i %d -pl %.0f`.",
                    d.index,
                    original_mw / 1000,
                    exc,
                    d.index,
                    original_mw / 1000,
                )
        self._originals_mw.clear()
        self._disarm_restore()

    def _probe_can_set(self) -> None:
        nvml = self._nvml
        d = self._devices[0]
        with self._lock:
            if self._can_set is not None:
                return
            try:
                current_mw = int(nvml.nvmlDeviceGetPowerManagementLimit(d.handle))
                nvml.nvmlDeviceSetPowerManagementLimit(d.handle, current_mw)
            except (nvml.NVMLError_NoPermission, nvml.NVMLError_NotSupported) as exc:
                self._cannot_set(exc)
            else:
                self._can_set = True

    def _cannot_set(self, exc: Exception) -> None:
        self._can_set = False
        if self._warned_cannot_set:
            return
        self._warned_cannot_set = True
        if isinstance(exc, self._nvml.NVMLError_NoPermission):
            why = f"this process may not set GPU power limits ({exc}). {_PERMISSION_HELP}"
        else:
            why = f"these GPUs ({self._devices[0].name}) do not support setting power limits ({exc})."
        _LOG.warning(
            "powerbandit cannot change the power limit: %s The run continues at the power limit in force "
            "(%.0f W per GPU) and is reported with that limit.",
            why,
            self.power_limit_w(),
        )

    # ------------------------------------------- restore on exit and signals

    def _arm_restore(self) -> None:
        """Install atexit and SIGTERM/SIGINT restore hooks (once per change; main thread only for signals)."""
        if self._atexit_callback is None:
            # A strong reference on purpose: while a limit is changed, this object must live to restore it.
            self._atexit_callback = self._restore_at_exit
            atexit.register(self._atexit_callback)
        if self._previous_handlers or threading.current_thread() is not threading.main_thread():
            if not self._previous_handlers:
                _LOG.debug(
                    "Not in the main thread: no signal handlers; the limit is restored at exit/close()."
                )
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                previous = signal.getsignal(signum)
                if previous == signal.SIG_IGN:
                    continue  # the process ignores it: it cannot end the run
                signal.signal(signum, self._on_signal)
            except (ValueError, OSError):  # not the main interpreter, or an unusual platform
                continue
            self._previous_handlers[signum] = previous

    def _disarm_restore(self) -> None:
        if self._atexit_callback is not None:
            atexit.unregister(self._atexit_callback)
            self._atexit_callback = None
        if not self._previous_handlers or threading.current_thread() is not threading.main_thread():
            return  # our handlers stay; they restore (a no-op now) and chain
        for signum, previous in list(self._previous_handlers.items()):
            try:
                if signal.getsignal(signum) == self._on_signal:
                    signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                continue
        self._previous_handlers.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        _LOG.info("Signal %d: restoring the GPU power limit before handing the signal on.", signum)
        try:
            self.restore_power_limit()
        finally:
            _chain_signal(signum, previous, frame)

    def _restore_at_exit(self) -> None:
        self._atexit_callback = None  # atexit is running it now
        try:
            self.restore_power_limit()
        except Exception:  # pragma: no cover - never let exit fail on this
            _LOG.exception("Restoring the GPU power limit at exit failed")

    # ----------------------------------------------------------------- close

    def close(self) -> None:
        """Restore the power limit, stop the power-polling thread and shut NVML down (idempotent)."""
        if self._closed:
            return
        try:
            self.restore_power_limit()
        finally:
            if self._poller is not None:
                self._poller.stop()
            self._shutdown_nvml()

    def _shutdown_nvml(self) -> None:
        self._closed = True
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:  # pragma: no cover - nothing useful to do
            _LOG.debug("nvmlShutdown failed", exc_info=True)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("NvmlGpu is closed")
