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
- **Power limits.** Through the node agent (``powerbandit agent``, see ``docs/node-agent.md``) when
  ``POWERBANDIT_AGENT_SOCKET`` names its socket or the default socket ``/run/powerbandit/agent.sock``
  exists, or when NVML refuses with no-permission and the default socket has appeared: the limit is
  then held under a lease (renewed with the run's heartbeat, released at the end; the agent restores
  it even when this process is SIGKILLed). Otherwise directly through NVML, which needs root or
  ``CAP_SYS_ADMIN``. Without either, one warning is logged (logger ``powerbandit.sdk.nvml``) and the
  run continues at the limit in force, which is what :meth:`NvmlGpu.set_power_limit` returns, so the
  run is reported truthfully; :meth:`NvmlGpu.power_limit_control` says which way was used. The limits in force
  before the first change are put back by :meth:`NvmlGpu.restore_power_limit`, :meth:`NvmlGpu.close`,
  at interpreter exit, and on SIGTERM/SIGINT (handlers installed only while a limit is changed, in
  the main thread, chaining to the previous handlers). A ``kill -9`` cannot be caught: with the agent,
  it restores the limit within a second of the process's death; without it, restore by hand
  (``sudo nvidia-smi -i <index> -pl <watts>``, or reboot, which resets the limit). NVML's *enforced*
  limit follows a set up to ~100 ms later (an H200), so a set waits (at most ``ENFORCE_WAIT_S``) until
  every GPU enforces the new limit before it returns it: a profile measured right after the set is
  labelled with the limit it ran at. A GPU held lower by a limit set elsewhere is logged once, and
  the lower limit is what is returned and reported.
- **Device layer.** GPUs are reached through :mod:`client_sdk.devices` (NVML, or the simulated device
  when ``POWERBANDIT_SIMULATED_GPUS`` names its file); the node agent uses the same layer.
- **No GPU.** A missing ``pynvml`` module, NVIDIA driver or device raises
  :class:`~client_sdk.gpu.GpuUnavailableError` whose message names the ways out (a GPU machine with
  the driver, or a dry run with :class:`client_sdk.replay.ReplayGpu`).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from client_sdk.devices import open_backend
from client_sdk.devices.access import WAYS_OUT, DeviceBackend
from client_sdk.devices.errors import (
    DeviceError,
    DeviceNoPermissionError,
    DeviceNotSupportedError,
    GpuConfigError,
)
from client_sdk.devices.restore_guard import RestoreGuard
from client_sdk.devices.selection import select_from_cuda_visible_devices
from client_sdk.gpu import Gpu, GpuInfo, GpuUnavailableError
from client_sdk.power_polling import PowerPoller
from powerbandit.domain import DEFAULT_POWER_LIMIT_STEP_W, candidate_power_limits

if TYPE_CHECKING:
    from client_sdk.devices.agent_lease import AgentLease

__all__ = ["DEFAULT_AGENT_LEASE_S", "EnergySource", "GpuConfigError", "NvmlGpu"]

_LOG = logging.getLogger("powerbandit.sdk.nvml")

EnergySource = Literal["auto", "counter", "polling"]
_ENERGY_SOURCES: tuple[str, ...] = ("auto", "counter", "polling")

#: Lease the SDK asks the agent for; renewed with every heartbeat and every change.
DEFAULT_AGENT_LEASE_S = 600.0

_PERMISSION_HELP = (
    "Setting GPU power limits needs root or the CAP_SYS_ADMIN capability: run the training as root "
    "(e.g. `sudo -E python train.py`), or grant the capability to the container/process (e.g. "
    "`docker run --cap-add SYS_ADMIN ...`), or run the node agent (`powerbandit agent serve`, see "
    "docs/node-agent.md) and set POWERBANDIT_AGENT_SOCKET; enabling persistence mode (`sudo nvidia-smi "
    "-pm 1`) keeps a limit applied between processes."
)

# Tolerance when checking a requested limit against the allowed range: NVML works in milliwatts.
_RANGE_TOL_W = 5e-4

#: NVML's *enforced* limit follows a newly set limit up to ~100 ms later (an H200, measured with
#: benchmarks/gpu_check.py): how long a set or restore waits for it, and how often it looks.
ENFORCE_WAIT_S = 0.5
_ENFORCE_POLL_S = 0.005  # two NVML reads per GPU per look: a few ms late at most, on a ~100 ms wait


@dataclass(frozen=True)
class _Device:
    index: int  # NVML index
    name: str
    uuid: str
    min_limit_mw: int
    max_limit_mw: int


class NvmlGpu(Gpu):
    """The job's GPUs, measured and power-limited through NVML (directly or through the node agent).

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
        backend: the device backend; ``None`` = :func:`client_sdk.devices.open_backend` (NVML, or the
            simulated device named by ``POWERBANDIT_SIMULATED_GPUS``).
        agent_socket: the node agent's socket; ``None`` = ``POWERBANDIT_AGENT_SOCKET``, else the default
            socket when it exists; ``""`` = never use the agent.
        agent_lease_s: lease asked of the agent, seconds (renewed with every heartbeat).

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
        power_limit_step_w: float = DEFAULT_POWER_LIMIT_STEP_W,
        poll_interval_s: float = 0.1,
        energy_source: EnergySource = "auto",
        *,
        backend: DeviceBackend | None = None,
        agent_socket: str | None = None,
        agent_lease_s: float = DEFAULT_AGENT_LEASE_S,
    ) -> None:
        if not power_limit_step_w > 0:
            raise ValueError(f"power_limit_step_w must be > 0, got {power_limit_step_w!r}")
        if not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s!r}")
        if energy_source not in _ENERGY_SOURCES:
            raise ValueError(f"energy_source must be one of {_ENERGY_SOURCES}, got {energy_source!r}")
        if not agent_lease_s > 0:
            raise ValueError(f"agent_lease_s must be > 0, got {agent_lease_s!r}")

        self._closed = True  # until the backend is open; close() is then a no-op
        self._backend = backend if backend is not None else open_backend()
        self._closed = False
        self._lock = threading.RLock()
        self._poller: PowerPoller | None = None
        self._originals_mw: dict[int, int] = {}  # position in self._devices -> limit before our change
        self._can_set: bool | None = None
        self._warned_cannot_set = False
        self._warned_unenforced: set[tuple[int, int]] = set()
        self._guard = RestoreGuard(self.restore_power_limit)
        self._agent_lease_s = float(agent_lease_s)
        self._agent: AgentLease | None = None
        self._agent_explicit = bool(agent_socket)
        self._agent_disabled = agent_socket == ""
        try:
            self._devices = self._open_devices(device_indices)
            self._min_limit_w = max(d.min_limit_mw for d in self._devices) / 1000.0
            self._max_limit_w = min(d.max_limit_mw for d in self._devices) / 1000.0
            socket_path = self._agent_socket(agent_socket)
            if socket_path:
                self._connect_agent(socket_path)
            self._candidates_w = self._candidate_limits(power_limits_w, power_limit_step_w)
            self._energy_source = self._choose_energy_source(energy_source)
        except BaseException:
            self._shutdown_backend()
            raise
        self._poll_interval_s = float(poll_interval_s)
        _LOG.info(
            "%s: %d x %s (NVML indices %s), power limit %.0f-%.0f W, energy from %s, limits set %s",
            self._backend.kind.upper(),
            len(self._devices),
            self._devices[0].name,
            [d.index for d in self._devices],
            self._min_limit_w,
            self._max_limit_w,
            self._energy_source,
            f"through the agent at {self._agent.socket_path}" if self._agent else "directly",
        )

    # ------------------------------------------------------------------ setup

    def _open_devices(self, device_indices: Sequence[int] | None) -> list[_Device]:
        backend = self._backend
        count = backend.count()
        if count == 0:
            raise GpuUnavailableError("Cannot measure GPUs: NVML works but sees no GPU. " + WAYS_OUT)
        uuids = backend.uuids()

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
                indices = select_from_cuda_visible_devices(cvd, uuids)
                if not indices:
                    raise GpuUnavailableError(
                        f"Cannot measure GPUs: CUDA_VISIBLE_DEVICES={cvd!r} hides every GPU of this machine. "
                        "Unset it or name GPUs by index or UUID (see `nvidia-smi -L`). " + WAYS_OUT
                    )
                order = os.environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
                if order != "PCI_BUS_ID" and any(e.strip().isdigit() for e in cvd.split(",")):
                    models = {backend.describe(i).name for i in range(count)}
                    if len(models) > 1:
                        _LOG.warning(
                            "CUDA_VISIBLE_DEVICES uses indices on a machine with different GPU models while "
                            "CUDA_DEVICE_ORDER=%s: CUDA's and NVML's numbering may differ. Set "
                            "CUDA_DEVICE_ORDER=PCI_BUS_ID or use GPU UUIDs.",
                            order,
                        )

        devices = [self._open_device(i) for i in indices]
        models = sorted({d.name for d in devices})
        if len(models) > 1:
            raise GpuConfigError(
                f"The job's GPUs are of different models ({', '.join(models)}); powerbandit learns per GPU "
                "model. Restrict the job to one model with CUDA_VISIBLE_DEVICES or device_indices."
            )
        return devices

    def _open_device(self, index: int) -> _Device:
        info = self._backend.describe(index)
        name, uuid_ = info.name, info.uuid
        if info.mig_enabled:
            raise GpuConfigError(
                f"GPU {index} ({name}, {uuid_}) has MIG mode enabled. powerbandit cannot measure or power-limit "
                "MIG instances (NVML's energy counter and power limit belong to the whole GPU). Disable MIG "
                f"(`sudo nvidia-smi -i {index} -mig 0`), use another GPU, or do a dry run with "
                "client_sdk.replay.ReplayGpu."
            )
        if info.min_limit_mw is None or info.max_limit_mw is None:
            raise GpuConfigError(
                f"GPU {index} ({name}) does not report its power-limit range ({info.limits_error}); powerbandit "
                "needs it. Use a GPU with power management (data-centre GPUs, Volta or newer), or do a dry run "
                "with client_sdk.replay.ReplayGpu."
            )
        return _Device(index, name, uuid_, info.min_limit_mw, info.max_limit_mw)

    def _agent_socket(self, agent_socket: str | None) -> str | None:
        if agent_socket is not None:
            return agent_socket or None
        from powerbandit.agent.client import agent_socket_from_env

        return agent_socket_from_env()

    def _connect_agent(self, socket_path: str) -> None:
        """Use the agent at ``socket_path``; the allowed range narrows to the operator's bounds."""
        from client_sdk.devices.agent_lease import AgentError, AgentLease

        try:
            lease = AgentLease(socket_path, [d.uuid for d in self._devices], self._agent_lease_s)
        except AgentError as exc:
            if self._agent_explicit or os.environ.get("POWERBANDIT_AGENT_SOCKET"):
                _LOG.warning("The powerbandit agent is not usable (%s); setting power limits directly.", exc)
            return
        if lease.operator_min_w is not None:
            self._min_limit_w = max(self._min_limit_w, lease.operator_min_w)
        if lease.operator_max_w is not None:
            self._max_limit_w = min(self._max_limit_w, lease.operator_max_w)
        self._agent = lease

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
        return candidate_power_limits(lo, hi, step_w, tolerance_w=_RANGE_TOL_W)

    def _choose_energy_source(self, requested: str) -> str:
        if requested == "polling":
            return "polling"
        missing = []
        for d in self._devices:
            try:
                self._backend.total_energy_mj(d.index)
            except DeviceNotSupportedError:
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

    @property
    def agent_lease_id(self) -> str:
        """The agent lease this object holds now (``""`` when none)."""
        return self._agent.lease_id if self._agent is not None else ""

    def power_limit_control(self) -> str:
        """How limits are applied: ``"agent"``, ``"nvml"``, ``"simulated"`` (direct) or ``"none"``."""
        if self._agent is not None:
            return "agent" if self._can_set is not False else "none"
        if self._can_set is None and not self._closed:
            self._probe_can_set()
        return self._backend.kind if self._can_set else "none"

    def system_info(self) -> dict[str, str]:
        """Driver, NVML and CUDA-driver versions (for logs and the GPU check); missing ones are omitted."""
        self._check_open()
        return self._backend.system_info()

    def info(self) -> GpuInfo:
        """Model, count, power-limit range and candidates of the job's GPUs.

        The first call probes whether limits can be set (directly: by setting the current limit again,
        a no-op that needs the same privilege; through the agent: a validate-only request); without
        permission it logs the one warning.
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
        if self._agent is not None:
            with self._lock:
                self._agent.renew_if_due()  # keeps the lease of a run without heartbeats
        if self._energy_source == "counter":
            return sum(self._backend.total_energy_mj(d.index) for d in self._devices) / 1000.0
        if self._poller is None:
            with self._lock:
                if self._poller is None:
                    self._poller = PowerPoller(
                        self._read_power_w, self._poll_interval_s, thread_name="powerbandit-nvml-power-poller"
                    )
        return self._poller.energy_j()

    def _read_power_w(self) -> float:
        return sum(self._backend.power_usage_mw(d.index) for d in self._devices) / 1000.0

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
        total_mw = sum(self._backend.enforced_power_limit_mw(d.index) for d in self._devices)
        return total_mw / len(self._devices) / 1000.0

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
        with self._lock:
            if self._can_set is False:
                return self.power_limit_w()
            if self._agent is not None:
                return self._set_through_agent(w)
            return self._set_directly(w)

    def _set_directly(self, w: float) -> float:
        backend = self._backend
        for pos, d in enumerate(self._devices):
            if pos not in self._originals_mw:
                self._originals_mw[pos] = backend.power_limit_mw(d.index)
        self._guard.arm()
        for d in self._devices:
            if not self._originals_mw:
                # A signal handler restored the limits meanwhile and handed the signal on to a handler
                # that let the program continue: don't leave later GPUs changed and untracked.
                return self.power_limit_w()
            target_mw = min(max(round(w * 1000), d.min_limit_mw), d.max_limit_mw)
            try:
                backend.set_power_limit_mw(d.index, target_mw)
            except (DeviceNoPermissionError, DeviceNotSupportedError) as exc:
                self._restore_locked()  # undo any GPU already changed in this call
                if isinstance(exc, DeviceNoPermissionError) and self._switch_to_agent():
                    return self._set_through_agent(w)
                self._cannot_set(exc)
                return self.power_limit_w()
            readback_mw = backend.power_limit_mw(d.index)
            if abs(readback_mw - target_mw) > 1000:
                _LOG.warning(
                    "GPU %d: asked for a %.1f W power limit, NVML reports %.1f W.",
                    d.index,
                    target_mw / 1000,
                    readback_mw / 1000,
                )
        self._can_set = True
        return self._wait_enforced()

    def _switch_to_agent(self) -> bool:
        """After NVML said no-permission: use the agent if its default socket exists now."""
        if self._agent_disabled:
            return False
        socket_path = self._agent_socket(None)
        if not socket_path:
            return False
        self._connect_agent(socket_path)
        if self._agent is None:
            return False
        _LOG.info("No permission to set power limits directly; using the powerbandit agent at %s.", socket_path)
        self._can_set = None
        # The operator's bounds may narrow the range: keep only candidates inside it.
        lo, hi = self._min_limit_w - _RANGE_TOL_W, self._max_limit_w + _RANGE_TOL_W
        inside = tuple(w for w in self._candidates_w if lo <= w <= hi)
        self._candidates_w = inside or (self._max_limit_w,)
        return True

    def _set_through_agent(self, w: float) -> float:
        from client_sdk.devices.agent_lease import AgentError

        assert self._agent is not None
        try:
            self._agent.apply(w)
        except AgentError as exc:
            self._cannot_set(exc)
            return self.power_limit_w()
        self._can_set = True
        return self._wait_enforced()

    def _wait_enforced(self, *, warn: bool = True) -> float:
        """The limit in force once every GPU enforces the limit NVML holds as set (at most ``ENFORCE_WAIT_S``).

        NVML takes a new limit at once but enforces it up to ~100 ms later (an H200); a caller that
        labels a measurement with the returned limit must not get the previous one. A GPU still
        enforcing another limit after the wait (a lower limit set elsewhere holds it) is logged once
        per limit (``warn``), and the enforced limit is returned.
        """
        backend = self._backend
        deadline = time.monotonic() + ENFORCE_WAIT_S
        pending = [d.index for d in self._devices]
        while True:
            lagging: dict[int, tuple[int, int]] = {}
            for index in pending:  # a GPU that enforces its limit is not read again
                set_mw, enforced_mw = backend.power_limit_mw(index), backend.enforced_power_limit_mw(index)
                if abs(enforced_mw - set_mw) > 1000:
                    lagging[index] = (set_mw, enforced_mw)
            pending = list(lagging)
            if not lagging or time.monotonic() >= deadline:
                break
            time.sleep(_ENFORCE_POLL_S)
        for index, (set_mw, enforced_mw) in lagging.items():
            if warn and (index, set_mw) not in self._warned_unenforced:
                self._warned_unenforced.add((index, set_mw))
                _LOG.warning(
                    "GPU %d: power limit set to %.1f W, but NVML still enforces %.1f W after %g s "
                    "(a lower limit set elsewhere holds it); runs are reported at the enforced limit.",
                    index, set_mw / 1000, enforced_mw / 1000, ENFORCE_WAIT_S,
                )  # fmt: skip
        return self.power_limit_w()

    def renew_power_limit_lease(self) -> None:
        """Renew the agent lease (called with the run's heartbeat); re-apply it if the agent lost it."""
        with self._lock:
            if not self._closed and self._agent is not None:
                self._agent.renew()

    def restore_power_limit(self) -> None:
        """Put back the limits in force before this object first changed them (idempotent)."""
        if self._closed:
            return
        with self._lock:
            self._restore_locked()
            try:
                self._wait_enforced(warn=False)  # a read of the limit in force right after gives the original
            except DeviceError as exc:  # restoring never raises; the restore itself logged any failure
                _LOG.debug("could not read the enforced limits after restoring them: %s", exc)

    def _restore_locked(self) -> None:
        if self._agent is not None:
            self._agent.release()
        backend = self._backend
        for pos, original_mw in sorted(self._originals_mw.items()):
            d = self._devices[pos]
            try:
                if backend.power_limit_mw(d.index) != original_mw:
                    backend.set_power_limit_mw(d.index, original_mw)
            except DeviceError as exc:
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
        self._guard.disarm()

    def _probe_can_set(self) -> None:
        d = self._devices[0]
        with self._lock:
            if self._can_set is not None:
                return
            if self._agent is not None:
                self._probe_agent()
                return
            try:
                current_mw = self._backend.power_limit_mw(d.index)
                self._backend.set_power_limit_mw(d.index, current_mw)
            except (DeviceNoPermissionError, DeviceNotSupportedError) as exc:
                if isinstance(exc, DeviceNoPermissionError) and self._switch_to_agent():
                    self._probe_agent()
                    return
                self._cannot_set(exc)
            else:
                self._can_set = True

    def _probe_agent(self) -> None:
        from client_sdk.devices.agent_lease import AgentError

        assert self._agent is not None
        try:
            self._agent.validate(self._max_limit_w)
        except AgentError as exc:
            self._cannot_set(exc)
        else:
            self._can_set = True

    def _cannot_set(self, exc: Exception) -> None:
        self._can_set = False
        if self._warned_cannot_set:
            return
        self._warned_cannot_set = True
        if isinstance(exc, DeviceNoPermissionError):
            why = f"this process may not set GPU power limits ({exc}). {_PERMISSION_HELP}"
        elif isinstance(exc, DeviceError):
            why = f"these GPUs ({self._devices[0].name}) do not support setting power limits ({exc})."
        else:
            why = f"the powerbandit agent refused: {exc}."
        _LOG.warning(
            "powerbandit cannot change the power limit: %s The run continues at the power limit in force "
            "(%.0f W per GPU) and is reported with that limit.",
            why,
            self.power_limit_w(),
        )

    # Kept for callers that look for the installed handler (tests, debugging).
    @property
    def restore_guard(self) -> RestoreGuard:
        """The exit/signal guard that restores directly-set limits."""
        return self._guard

    # ----------------------------------------------------------------- close

    def close(self) -> None:
        """Restore the power limit, stop the power-polling thread and release the device (idempotent)."""
        if self._closed:
            return
        try:
            with self._lock:
                self._restore_locked()  # nothing reads the limit after: no wait for its enforcement
        finally:
            if self._poller is not None:
                self._poller.stop()
            if self._agent is not None:
                self._agent.close()
            self._shutdown_backend()

    def _shutdown_backend(self) -> None:
        self._closed = True
        self._backend.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("NvmlGpu is closed")
