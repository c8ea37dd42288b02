"""One device layer for the SDK and the node agent.

- :mod:`~client_sdk.devices.selection`: which GPUs a process sees (``CUDA_VISIBLE_DEVICES``,
  ``NVIDIA_VISIBLE_DEVICES``);
- :mod:`~client_sdk.devices.access`: the :class:`DeviceBackend` interface and NVML behind it, with one
  map of NVML errors to :mod:`~client_sdk.devices.errors`;
- :mod:`~client_sdk.devices.simulated`: the simulated device (state in a JSON file), same constraints;
- :mod:`~client_sdk.devices.restore_guard`: put limits back at exit and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import os

from client_sdk.devices.access import DeviceBackend, DeviceInfo, NvmlBackend
from client_sdk.devices.simulated import SimulatedBackend

__all__ = ["SIMULATED_GPUS_ENV", "DeviceBackend", "DeviceInfo", "NvmlBackend", "SimulatedBackend", "open_backend"]

#: Environment variable naming a simulated-GPU file; when set, :func:`open_backend` uses it instead of NVML.
SIMULATED_GPUS_ENV = "POWERBANDIT_SIMULATED_GPUS"


def open_backend() -> DeviceBackend:
    """The simulated device when ``POWERBANDIT_SIMULATED_GPUS`` names its file, else NVML."""
    path = os.environ.get(SIMULATED_GPUS_ENV)
    if path:
        return SimulatedBackend(path)
    return NvmlBackend()
