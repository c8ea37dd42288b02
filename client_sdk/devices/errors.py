"""The device layer's errors: one vocabulary for NVML and the simulated device.

Backends translate their native errors (NVML's ``NVMLError_*`` classes, the simulated device's own
checks) into these, in one place each, so the SDK and the node agent handle every backend alike.
"""

from __future__ import annotations

from client_sdk.gpu import GpuUnavailableError

__all__ = [
    "DeviceError",
    "DeviceInvalidArgumentError",
    "DeviceNoPermissionError",
    "DeviceNotFoundError",
    "DeviceNotSupportedError",
    "GpuConfigError",
    "GpuUnavailableError",
]


class DeviceError(RuntimeError):
    """A device call failed for a reason not covered by a subclass (NVML: ``Unknown`` and others)."""


class DeviceNoPermissionError(DeviceError):
    """The process may not do this (setting a power limit needs root or CAP_SYS_ADMIN)."""


class DeviceNotSupportedError(DeviceError):
    """The GPU or driver does not support this call (e.g. no energy counter before Volta)."""


class DeviceInvalidArgumentError(DeviceError, ValueError):
    """The device refused an argument (e.g. a power limit outside its range)."""


class DeviceNotFoundError(DeviceError):
    """No such GPU (bad index or UUID), or the GPU fell off the bus."""


class GpuConfigError(GpuUnavailableError, ValueError):
    """GPUs exist, but not in a form this SDK can measure as asked.

    Raised for MIG (instances or MIG-enabled GPUs), GPUs of mixed models in one job, invalid
    ``device_indices``, or ``energy_source="counter"`` on GPUs without the energy counter. It is both a
    :class:`GpuUnavailableError` and a :class:`ValueError`, so either ``except`` catches it.
    """
