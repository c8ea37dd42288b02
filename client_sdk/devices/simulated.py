"""The simulated device: GPUs whose "hardware" state lives in a JSON file.

For dry runs, demos and tests of the node agent without a GPU. It implements
:class:`~client_sdk.devices.access.DeviceBackend` with the same constraints as NVML:

- a power limit must lie in the GPU's ``[min, max]`` range (else :class:`DeviceInvalidArgumentError`);
- only a privileged process may set one (default: effective uid 0, like NVML's root or
  CAP_SYS_ADMIN; ``privileged=False`` makes a backend behave as an unprivileged process would), else
  :class:`DeviceNoPermissionError`;
- a GPU with MIG mode enabled refuses power-limit changes (:class:`DeviceNotSupportedError`).

The file is the hardware: every read and write goes to it (under an ``flock``; writes are atomic
with ``fsync``), so an agent restarted after ``kill -9`` sees the limits a killed one left, and a
training process and the agent see one GPU. Power draw is modelled as 80 % of the limit, and the
energy counter integrates it over wall time. File format (version 1)::

    {"version": 1, "gpus": [{"uuid": "GPU-...", "name": "...", "min_limit_mw": 100000,
      "max_limit_mw": 300000, "default_limit_mw": 300000, "limit_mw": 300000, "mig": false,
      "compute_pids": [], "energy_mj": 0, "stamp_unix_s": 1700000000.0}]}
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid as uuid_module
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from client_sdk.devices.access import DeviceBackend, DeviceInfo
from client_sdk.devices.errors import (
    DeviceError,
    DeviceInvalidArgumentError,
    DeviceNoPermissionError,
    DeviceNotFoundError,
    DeviceNotSupportedError,
)

__all__ = ["DRAW_FRACTION", "SimulatedBackend", "create_state", "parse_range_w"]

#: Simulated power draw as a fraction of the power limit.
DRAW_FRACTION = 0.8
_VERSION = 1


def parse_range_w(text: str) -> tuple[int, int]:
    """``"100:300"`` -> ``(100, 300)`` watts; raises ``ValueError`` with a usable message."""
    try:
        lo_text, hi_text = text.split(":")
        lo, hi = int(lo_text), int(hi_text)
    except ValueError:
        raise ValueError(f"power range {text!r} must look like MIN:MAX in whole watts, e.g. 100:300") from None
    if not 0 < lo < hi:
        raise ValueError(f"power range {text!r} needs 0 < MIN < MAX")
    return lo, hi


def create_state(
    path: str | Path,
    count: int,
    *,
    model: str = "Simulated GPU",
    range_w: tuple[int, int] = (100, 300),
    mig_indices: tuple[int, ...] = (),
) -> None:
    """Write a fresh simulated-GPU file with ``count`` GPUs at their maximum (default) limit."""
    if count < 1:
        raise ValueError(f"the simulated device needs at least one GPU, got {count}")
    lo_mw, hi_mw = range_w[0] * 1000, range_w[1] * 1000
    now = time.time()
    gpus = [
        {
            "uuid": f"GPU-{uuid_module.uuid4()}",
            "name": model,
            "min_limit_mw": lo_mw,
            "max_limit_mw": hi_mw,
            "default_limit_mw": hi_mw,
            "limit_mw": hi_mw,
            "mig": i in mig_indices,
            "compute_pids": [],
            "energy_mj": 0,
            "stamp_unix_s": now,
        }
        for i in range(count)
    ]
    backend = SimulatedBackend(path, privileged=True)
    with backend._locked() as state:
        state.clear()
        state.update({"version": _VERSION, "gpus": gpus})


class SimulatedBackend(DeviceBackend):
    """GPUs simulated in the JSON file ``path`` (see the module docstring).

    ``privileged``: whether this process may set limits; ``None`` = when its effective uid is 0.
    """

    kind = "simulated"

    def __init__(self, path: str | Path, *, privileged: bool | None = None) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self.privileged = (os.geteuid() == 0) if privileged is None else privileged

    # ------------------------------------------------------------------ file
    def _read(self) -> dict[str, Any]:
        try:
            state = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"version": _VERSION, "gpus": []}
        except (OSError, ValueError) as exc:
            raise DeviceError(f"simulated GPU file {self.path} is unreadable: {exc}") from exc
        if state.get("version") != _VERSION:
            raise DeviceError(f"simulated GPU file {self.path} has version {state.get('version')!r}, want 1")
        return state

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The state under an exclusive lock; written back atomically (fsync) when the block ends."""
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self._read()
                yield state
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                with open(tmp, "w") as f:
                    json.dump(state, f, indent=1)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _gpu(self, state: dict[str, Any], index: int) -> dict[str, Any]:
        gpus = state["gpus"]
        if not 0 <= index < len(gpus):
            raise DeviceNotFoundError(f"no simulated GPU {index} ({len(gpus)} in {self.path})")
        return gpus[index]

    @staticmethod
    def _fold_energy(gpu: dict[str, Any], now: float) -> None:
        draw_mw = gpu["limit_mw"] * DRAW_FRACTION
        gpu["energy_mj"] = int(gpu["energy_mj"] + draw_mw * max(0.0, now - gpu["stamp_unix_s"]))
        gpu["stamp_unix_s"] = now

    # --------------------------------------------------------------- backend
    def count(self) -> int:
        return len(self._read()["gpus"])

    def uuid(self, index: int) -> str:
        return str(self._gpu(self._read(), index)["uuid"])

    def describe(self, index: int) -> DeviceInfo:
        g = self._gpu(self._read(), index)
        return DeviceInfo(
            index, g["uuid"], g["name"], bool(g["mig"]), g["min_limit_mw"], g["max_limit_mw"], g["default_limit_mw"]
        )

    def power_limit_mw(self, index: int) -> int:
        return int(self._gpu(self._read(), index)["limit_mw"])

    def set_power_limit_mw(self, index: int, limit_mw: int) -> None:
        if not self.privileged:
            raise DeviceNoPermissionError(
                "Insufficient Permissions (simulated: this process is not privileged to set power limits)"
            )
        with self._locked() as state:
            g = self._gpu(state, index)
            if g["mig"]:
                raise DeviceNotSupportedError("Not Supported (simulated: MIG mode is enabled on this GPU)")
            if not isinstance(limit_mw, int) or not g["min_limit_mw"] <= limit_mw <= g["max_limit_mw"]:
                raise DeviceInvalidArgumentError(
                    f"Invalid Argument (simulated: {limit_mw!r} mW outside "
                    f"[{g['min_limit_mw']}, {g['max_limit_mw']}] mW)"
                )
            self._fold_energy(g, time.time())
            g["limit_mw"] = limit_mw

    def total_energy_mj(self, index: int) -> int:
        g = self._gpu(self._read(), index)
        self._fold_energy(g, time.time())
        return int(g["energy_mj"])

    def power_usage_mw(self, index: int) -> int:
        return int(self._gpu(self._read(), index)["limit_mw"] * DRAW_FRACTION)

    def compute_pids(self, index: int) -> list[int]:
        return [int(p) for p in self._gpu(self._read(), index)["compute_pids"]]

    def set_compute_pids(self, index: int, pids: list[int]) -> None:
        """Simulate processes holding a compute context on GPU ``index`` (tests, demos)."""
        with self._locked() as state:
            self._gpu(state, index)["compute_pids"] = [int(p) for p in pids]

    def system_info(self) -> dict[str, str]:
        return {"driver_version": "simulated", "state_file": str(self.path)}
