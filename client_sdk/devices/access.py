"""Device access: the :class:`DeviceBackend` interface and its NVML implementation.

A backend addresses GPUs by NVML index and speaks integer milliwatts and millijoules, as NVML does.
Every NVML call goes through :meth:`NvmlBackend._call`, which translates NVML's errors with ONE map
(:data:`NVML_ERROR_MAP`) into :mod:`client_sdk.devices.errors`. The simulated device
(:mod:`client_sdk.devices.simulated`) implements the same interface for dry runs and tests.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

from client_sdk.devices.errors import (
    DeviceError,
    DeviceInvalidArgumentError,
    DeviceNoPermissionError,
    DeviceNotFoundError,
    DeviceNotSupportedError,
    GpuUnavailableError,
)

__all__ = ["NVML_ERROR_MAP", "WAYS_OUT", "DeviceBackend", "DeviceInfo", "NvmlBackend", "load_nvml"]

T = TypeVar("T")

WAYS_OUT = (
    "Ways out: (1) run on a machine with an NVIDIA GPU and its driver installed (`nvidia-smi` must work "
    "there); or (2) do a dry run with the replay GPU, client_sdk.replay.ReplayGpu, which replays energy "
    "and time from a trace instead of measuring them."
)

#: NVML error class name suffix -> our exception class. Anything else becomes :class:`DeviceError`.
NVML_ERROR_MAP: dict[str, type[DeviceError]] = {
    "NoPermission": DeviceNoPermissionError,
    "NotSupported": DeviceNotSupportedError,
    "FunctionNotFound": DeviceNotSupportedError,
    "InvalidArgument": DeviceInvalidArgumentError,
    "NotFound": DeviceNotFoundError,
    "GpuIsLost": DeviceNotFoundError,
}


@dataclass(frozen=True)
class DeviceInfo:
    """What does not change about one GPU while a process runs. Limits in milliwatts.

    ``min_limit_mw``/``max_limit_mw`` are ``None`` when the GPU does not report its power-limit range
    (``limits_error`` then says why); ``default_limit_mw`` is ``None`` when unknown.
    """

    index: int
    uuid: str
    name: str
    mig_enabled: bool
    min_limit_mw: int | None
    max_limit_mw: int | None
    default_limit_mw: int | None = None
    limits_error: str = ""


class DeviceBackend(ABC):
    """GPUs addressed by NVML index. Methods raise :mod:`client_sdk.devices.errors` exceptions."""

    #: ``"nvml"`` or ``"simulated"``: how limits set through this backend reach the hardware.
    kind: str = ""

    @abstractmethod
    def count(self) -> int:
        """Number of GPUs."""

    @abstractmethod
    def uuid(self, index: int) -> str:
        """The GPU's UUID (``GPU-...``)."""

    @abstractmethod
    def describe(self, index: int) -> DeviceInfo:
        """Model, MIG mode and power-limit range of one GPU."""

    @abstractmethod
    def power_limit_mw(self, index: int) -> int:
        """The power-management limit set now."""

    def enforced_power_limit_mw(self, index: int) -> int:
        """The limit actually enforced (may be lower than the set one); the set one when unknown."""
        return self.power_limit_mw(index)

    @abstractmethod
    def set_power_limit_mw(self, index: int, limit_mw: int) -> None:
        """Set the power-management limit (needs privilege)."""

    @abstractmethod
    def total_energy_mj(self, index: int) -> int:
        """Energy counter since driver load (:class:`DeviceNotSupportedError` before Volta)."""

    @abstractmethod
    def power_usage_mw(self, index: int) -> int:
        """Power drawn now."""

    @abstractmethod
    def compute_pids(self, index: int) -> list[int]:
        """PIDs (host PID namespace) of the processes holding a compute context on the GPU."""

    def system_info(self) -> dict[str, str]:
        """Driver and library versions, where known."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional
        """Release the backend (NVML: ``nvmlShutdown``)."""

    def uuids(self) -> list[str]:
        """UUIDs of all GPUs, in index order."""
        return [self.uuid(i) for i in range(self.count())]


def _text(value: object) -> str:
    """NVML strings are ``bytes`` in old bindings and ``str`` in new ones."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def load_nvml(*, lead: str = "Cannot measure GPUs", ways_out: str = WAYS_OUT) -> ModuleType:
    """Import ``pynvml`` and initialise NVML, or raise :class:`GpuUnavailableError` with the ways out.

    ``lead`` opens the message and ``ways_out`` ends it (the node agent names its own ways out).
    """
    try:
        import pynvml
    except ImportError as exc:
        raise GpuUnavailableError(
            f"{lead}: the NVML Python bindings are not installed (module `pynvml`, package "
            "`nvidia-ml-py`; install with `pip install nvidia-ml-py`). " + ways_out
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
        raise GpuUnavailableError(f"{lead}: {why}. " + ways_out) from exc
    return pynvml


class NvmlBackend(DeviceBackend):
    """Real GPUs through NVML (``pynvml``). Initialises NVML on creation; :meth:`close` shuts it down."""

    kind = "nvml"

    def __init__(self, *, lead: str = "Cannot measure GPUs", ways_out: str = WAYS_OUT) -> None:
        self._nvml = load_nvml(lead=lead, ways_out=ways_out)
        self._handles: dict[int, Any] = {}
        self._closed = False

    def _translate(self, exc: Exception) -> DeviceError:
        name = type(exc).__name__.removeprefix("NVMLError_")
        return NVML_ERROR_MAP.get(name, DeviceError)(str(exc))

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except self._nvml.NVMLError as exc:
            raise self._translate(exc) from exc

    def _handle(self, index: int) -> Any:
        handle = self._handles.get(index)
        if handle is None:
            handle = self._handles[index] = self._call(self._nvml.nvmlDeviceGetHandleByIndex, index)
        return handle

    def count(self) -> int:
        return int(self._call(self._nvml.nvmlDeviceGetCount))

    def uuid(self, index: int) -> str:
        return _text(self._call(self._nvml.nvmlDeviceGetUUID, self._handle(index)))

    def describe(self, index: int) -> DeviceInfo:
        nvml, h = self._nvml, self._handle(index)
        name = _text(self._call(nvml.nvmlDeviceGetName, h))
        try:
            current_mig, _pending = self._call(nvml.nvmlDeviceGetMigMode, h)
            mig = current_mig == nvml.NVML_DEVICE_MIG_ENABLE
        except DeviceError:  # NotSupported / FunctionNotFound: no MIG on this GPU or driver
            mig = False
        min_mw: int | None = None
        max_mw: int | None = None
        why = ""
        try:
            lo, hi = self._call(nvml.nvmlDeviceGetPowerManagementLimitConstraints, h)
            min_mw, max_mw = int(lo), int(hi)
        except DeviceError as exc:
            why = str(exc)
        default_fn = getattr(nvml, "nvmlDeviceGetPowerManagementDefaultLimit", None)
        default_mw: int | None = None
        if default_fn is not None:
            try:
                default_mw = int(self._call(default_fn, h))
            except DeviceError:
                default_mw = None
        return DeviceInfo(index, self.uuid(index), name, mig, min_mw, max_mw, default_mw, why)

    def power_limit_mw(self, index: int) -> int:
        return int(self._call(self._nvml.nvmlDeviceGetPowerManagementLimit, self._handle(index)))

    def enforced_power_limit_mw(self, index: int) -> int:
        try:
            return int(self._call(self._nvml.nvmlDeviceGetEnforcedPowerLimit, self._handle(index)))
        except DeviceError:
            return self.power_limit_mw(index)

    def set_power_limit_mw(self, index: int, limit_mw: int) -> None:
        self._call(self._nvml.nvmlDeviceSetPowerManagementLimit, self._handle(index), int(limit_mw))

    def total_energy_mj(self, index: int) -> int:
        return int(self._call(self._nvml.nvmlDeviceGetTotalEnergyConsumption, self._handle(index)))

    def power_usage_mw(self, index: int) -> int:
        return int(self._call(self._nvml.nvmlDeviceGetPowerUsage, self._handle(index)))

    def compute_pids(self, index: int) -> list[int]:
        fn = getattr(self._nvml, "nvmlDeviceGetComputeRunningProcesses", None)
        if fn is None:
            return []
        return [int(p.pid) for p in self._call(fn, self._handle(index))]

    def system_info(self) -> dict[str, str]:
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
                value = self._call(fn)
            except DeviceError:
                continue
            if key == "cuda_driver_version" and isinstance(value, int):
                value = f"{value // 1000}.{value % 1000 // 10}"
            out[key] = _text(value)
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(self._nvml.NVMLError):  # nothing useful to do on failure
            self._nvml.nvmlShutdown()
