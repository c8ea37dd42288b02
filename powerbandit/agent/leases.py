"""Leases on GPU power limits, and the durable journal of original limits.

:class:`LeaseManager` is the agent's logic without gRPC: it validates a request, checks the caller
(allow-list, entitlement, one holder per GPU), writes each GPU's original limit to the
:class:`Journal` (``fsync``) before its first change, applies limits through a
:class:`~client_sdk.devices.access.DeviceBackend`, and restores originals when a lease is released,
lapses, or its holder exits, on shutdown, and at start-up (:meth:`LeaseManager.recover`) for what a
killed agent left behind. :class:`HolderWatchdog` notices holder exits within a fraction of a second
(pidfd, or ``/proc`` polling where pidfds are unavailable) and drives lease lapses.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import select
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client_sdk.devices.access import DeviceBackend, DeviceInfo
from client_sdk.devices.errors import (
    DeviceError,
    DeviceInvalidArgumentError,
    DeviceNoPermissionError,
)
from client_sdk.devices.selection import match_gpu
from powerbandit.agent import entitlement
from powerbandit.agent.entitlement import Caller
from powerbandit.agent.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)

__all__ = ["MAX_LEASE_S", "GpuRow", "HolderWatchdog", "Journal", "Lease", "LeaseManager"]

log = logging.getLogger("powerbandit.agent")

MAX_LEASE_S = 7 * 24 * 3600.0
_LEASE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAX_GPUS = 64
_ENDED_MEMORY = 4096  # how many ended lease ids ReleaseLease still recognises


class Journal:
    """``{gpu_uuid: {"index", "original_mw", "lease_id", "holder_pid"}}`` in a JSON file, fsynced.

    An entry exists from just before the agent first changes a GPU until its original limit is back.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._entries: dict[str, dict[str, Any]] = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RuntimeError(
                f"the agent's journal {self.path} is unreadable ({exc}); it holds the original power limits "
                "a previous agent changed: inspect it, restore those limits by hand "
                "(`nvidia-smi -i INDEX -pl WATTS`), then remove it"
            ) from exc
        return {str(k): dict(v) for k, v in data.get("originals", {}).items()}

    def entries(self) -> dict[str, dict[str, Any]]:
        """A copy of the entries."""
        return {k: dict(v) for k, v in self._entries.items()}

    def get(self, uuid: str) -> dict[str, Any] | None:
        """The entry of one GPU."""
        return self._entries.get(uuid)

    def put(self, uuid: str, entry: dict[str, Any]) -> None:
        """Add or replace an entry, durably."""
        self._entries[uuid] = dict(entry)
        self._write()

    def remove(self, uuid: str) -> None:
        """Drop an entry (its GPU has its original limit back), durably."""
        if self._entries.pop(uuid, None) is not None:
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"version": 1, "originals": self._entries}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@dataclass
class Lease:
    """One lease: GPUs (by index and uuid), the limit it set, its holder and expiry."""

    lease_id: str
    indices: tuple[int, ...]
    uuids: tuple[str, ...]
    power_limit_w: float
    holder_pid: int
    holder_uid: int
    holder_started: int | None
    expires_unix_s: float


@dataclass
class GpuRow:
    """One GPU for the status read."""

    info: DeviceInfo
    current_limit_mw: int
    original_limit_mw: int | None
    lease: Lease | None


@dataclass
class _Policy:
    min_w: float | None = None
    max_w: float | None = None
    allow_uids: frozenset[int] = field(default_factory=frozenset)
    allow_gids: frozenset[int] = field(default_factory=frozenset)
    entitlement_mode: str = "env-or-context"


class LeaseManager:
    """The agent's rules over a device backend (see the module docstring). Thread-safe.

    ``min_w``/``max_w``: operator bounds; requests outside them are **refused** (INVALID_ARGUMENT
    naming the bounds), never clamped, so a caller never gets a limit it did not ask for.
    ``allow_uids``/``allow_gids``: when either is non-empty, only callers with such a uid, or such a
    primary or supplementary gid, may change limits (root included: list 0 to allow it).
    """

    def __init__(
        self,
        backend: DeviceBackend,
        journal: Journal,
        *,
        min_w: float | None = None,
        max_w: float | None = None,
        allow_uids: Sequence[int] = (),
        allow_gids: Sequence[int] = (),
        entitlement_mode: str = "env-or-context",
        clock: Callable[[], float] = time.time,
        on_new_holder: Callable[[int], None] | None = None,
    ) -> None:
        if entitlement_mode not in entitlement.ENTITLEMENT_MODES:
            raise ValueError(f"entitlement mode must be one of {entitlement.ENTITLEMENT_MODES}")
        self.backend = backend
        self.journal = journal
        self.policy = _Policy(min_w, max_w, frozenset(allow_uids), frozenset(allow_gids), entitlement_mode)
        self._clock = clock
        self._on_new_holder = on_new_holder
        self._lock = threading.RLock()
        self._leases: dict[str, Lease] = {}
        self._ended: OrderedDict[str, str] = OrderedDict()  # lease id -> why it ended
        self._infos = [backend.describe(i) for i in range(backend.count())]

    # ------------------------------------------------------------ start-up
    def recover(self) -> list[str]:
        """Restore every GPU the journal lists (left changed by an agent that was killed); their uuids."""
        restored = []
        with self._lock:
            for uuid in self.journal.entries():
                if self._restore_gpu(uuid, "left behind by a previous agent"):
                    restored.append(uuid)
        return restored

    # -------------------------------------------------------------- checks
    def _resolve(self, gpus: Sequence[str]) -> tuple[int, ...]:
        if not gpus:
            raise InvalidArgumentError("gpus is empty: name at least one GPU by UUID or index")
        if len(gpus) > _MAX_GPUS:
            raise InvalidArgumentError(f"at most {_MAX_GPUS} GPUs per request, got {len(gpus)}")
        uuids = [i.uuid for i in self._infos]
        out: list[int] = []
        for name in gpus:
            index = match_gpu(name, uuids)
            if index is None:
                listing = ", ".join(f"{i.index}={i.uuid}" for i in self._infos)
                raise InvalidArgumentError(f"no GPU {name!r} on this node (GPUs: {listing})")
            if index in out:
                raise InvalidArgumentError(f"GPU {name!r} is named twice")
            out.append(index)
        return tuple(out)

    def _check_watts(self, indices: Sequence[int], watts: float) -> None:
        if not math.isfinite(watts) or watts <= 0:
            raise InvalidArgumentError(f"power_limit_w must be a positive number of watts, got {watts!r}")
        for i in indices:
            info = self._infos[i]
            if info.min_limit_mw is None or info.max_limit_mw is None:
                raise FailedPreconditionError(
                    f"GPU {i} ({info.name}) does not report its power-limit range ({info.limits_error})"
                )
            lo, hi = info.min_limit_mw / 1000, info.max_limit_mw / 1000
            if not lo <= watts <= hi:
                raise InvalidArgumentError(
                    f"power_limit_w {watts:g} W is outside GPU {i}'s range [{lo:g}, {hi:g}] W"
                )
        p = self.policy
        if (p.min_w is not None and watts < p.min_w) or (p.max_w is not None and watts > p.max_w):
            raise InvalidArgumentError(
                f"power_limit_w {watts:g} W is outside this node's operator bounds "
                f"[{p.min_w or 0:g}, {p.max_w if p.max_w is not None else math.inf:g}] W (requests outside "
                "them are refused, not clamped)"
            )

    @staticmethod
    def _check_lease_s(lease_s: float) -> None:
        if not math.isfinite(lease_s) or not 0 < lease_s <= MAX_LEASE_S:
            raise InvalidArgumentError(f"lease_s must be in (0, {MAX_LEASE_S:g}] seconds, got {lease_s!r}")

    def _check_allowed(self, caller: Caller) -> None:
        p = self.policy
        if not p.allow_uids and not p.allow_gids:
            return
        if caller.uid in p.allow_uids:
            return
        groups = entitlement.process_groups(caller.pid) | {caller.gid}
        if groups & p.allow_gids:
            return
        raise PermissionDeniedError(
            f"uid {caller.uid} (gid {caller.gid}) is not allowed to change power limits on this node; "
            "ask the operator to add it to --allow-uid or one of its groups to --allow-gid"
        )

    def _check_entitled(self, caller: Caller, indices: Sequence[int]) -> None:
        uuids = [i.uuid for i in self._infos]
        entitled = entitlement.entitled_gpus(
            caller.pid, uuids, self.backend.compute_pids, self.policy.entitlement_mode
        )
        missing = [i for i in indices if i not in entitled]
        if missing:
            how = {
                "env-or-context": "it neither sees them through NVIDIA_VISIBLE_DEVICES/CUDA_VISIBLE_DEVICES "
                "nor holds a compute context on them",
                "env": "it does not see them through NVIDIA_VISIBLE_DEVICES/CUDA_VISIBLE_DEVICES",
                "context": "it holds no compute context on them (this agent accepts only compute contexts "
                "as evidence; start CUDA before setting the limit)",
            }[self.policy.entitlement_mode]
            gpus = ", ".join(map(str, missing))
            env_way = (
                f"start it with CUDA_VISIBLE_DEVICES (or NVIDIA_VISIBLE_DEVICES) naming the GPU by index or "
                f"UUID, e.g. `CUDA_VISIBLE_DEVICES={missing[0]} powerbandit agent set-limit --gpu {missing[0]} ...`"
            )
            context_way = "set the limit from a process that (or a child of which) holds a CUDA context on the GPU"
            ways = {
                "env-or-context": f"{env_way}, or {context_way}",
                "env": env_way,
                "context": context_way,
            }[self.policy.entitlement_mode]
            raise PermissionDeniedError(
                f"process {caller.pid} is not entitled to GPU(s) {gpus}: {how}. To entitle a process, {ways} "
                f"(this agent runs with --entitlement {self.policy.entitlement_mode})"
            )

    def _holder_of(self, caller: Caller, parent: bool) -> tuple[int, int, int | None]:
        if not parent:
            return caller.pid, caller.uid, entitlement.start_time(caller.pid)
        ppid = entitlement.parent_pid(caller.pid)
        if ppid is None or ppid <= 1:
            raise FailedPreconditionError(f"process {caller.pid} has no parent that could hold a lease")
        if entitlement.process_uid(ppid) != caller.uid:
            raise PermissionDeniedError(
                f"the parent of process {caller.pid} (pid {ppid}) runs as another user; it cannot hold the lease"
            )
        return ppid, caller.uid, entitlement.start_time(ppid)

    @staticmethod
    def _may_manage(caller: Caller, lease: Lease) -> bool:
        return caller.pid == lease.holder_pid or caller.uid == lease.holder_uid or caller.uid == 0

    # ----------------------------------------------------------------- API
    def set_limit(
        self,
        caller: Caller,
        gpus: Sequence[str],
        watts: float,
        lease_s: float,
        *,
        lease_id: str = "",
        parent_holds: bool = False,
        validate_only: bool = False,
    ) -> tuple[Lease, list[tuple[int, str, int]]]:
        """Apply ``watts`` on ``gpus`` under a lease; returns it and ``(index, uuid, limit_mw)`` applied."""
        if lease_id and not _LEASE_ID.match(lease_id):
            raise InvalidArgumentError("lease_id must be 1-64 characters of A-Z a-z 0-9 . _ -")
        indices = self._resolve(gpus)
        self._check_watts(indices, watts)
        self._check_lease_s(lease_s)
        self._check_allowed(caller)
        self._check_entitled(caller, indices)
        for i in indices:
            if self._infos[i].mig_enabled:
                raise FailedPreconditionError(
                    f"GPU {i} ({self._infos[i].uuid}) has MIG mode enabled: its power limit belongs to the whole "
                    "GPU, shared by every MIG instance, so the agent refuses to change it"
                )
        holder_pid, holder_uid, started = self._holder_of(caller, parent_holds)
        with self._lock:
            existing = self._leases.get(lease_id) if lease_id else None
            if existing is not None:
                if existing.holder_pid != holder_pid:
                    raise PermissionDeniedError(
                        f"lease {lease_id} is held by pid {existing.holder_pid}, not by pid {holder_pid}"
                    )
                if set(existing.indices) != set(indices):
                    raise FailedPreconditionError(
                        f"lease {lease_id} covers GPUs {list(existing.uuids)}; a lease's GPUs cannot change "
                        "(release it and take a new one)"
                    )
            for i in indices:
                other = self._lease_on(i)
                if other is not None and other is not existing:
                    raise FailedPreconditionError(
                        f"GPU {i} ({self._infos[i].uuid}) is held by lease {other.lease_id} of pid "
                        f"{other.holder_pid} (uid {other.holder_uid}) until it releases it, exits, or the "
                        f"lease lapses in {max(0.0, other.expires_unix_s - self._clock()):.0f} s"
                    )
            lease = existing or Lease(
                lease_id or f"lease-{secrets.token_hex(8)}",
                indices,
                tuple(self._infos[i].uuid for i in indices),
                watts,
                holder_pid,
                holder_uid,
                started,
                0.0,
            )
            if validate_only:
                return lease, []
            applied = self._apply(lease, indices, watts, is_new=existing is None)
            lease.power_limit_w = watts
            lease.expires_unix_s = self._clock() + lease_s
            if existing is None:
                self._leases[lease.lease_id] = lease
                self._ended.pop(lease.lease_id, None)
                log.info(
                    "lease %s: pid %d uid %d set %g W on GPU(s) %s for %g s",
                    lease.lease_id, holder_pid, holder_uid, watts, list(indices), lease_s,
                )  # fmt: skip
                if self._on_new_holder is not None:
                    self._on_new_holder(holder_pid)
            return lease, applied

    def _apply(self, lease: Lease, indices: Sequence[int], watts: float, *, is_new: bool) -> list[tuple[int, str, int]]:
        target_mw = round(watts * 1000)
        done: list[int] = []
        try:
            for i in indices:
                uuid = self._infos[i].uuid
                if self.journal.get(uuid) is None:
                    original = self.backend.power_limit_mw(i)
                    self.journal.put(
                        uuid,
                        {"index": i, "original_mw": original, "lease_id": lease.lease_id, "holder_pid": lease.holder_pid},
                    )
                self.backend.set_power_limit_mw(i, target_mw)
                done.append(i)
        except DeviceError as exc:
            for i in indices:
                if is_new and self._lease_on(i) is None:
                    self._restore_gpu(self._infos[i].uuid, "the request failed")
                elif not is_new and i in done:
                    try:
                        self.backend.set_power_limit_mw(i, round(lease.power_limit_w * 1000))
                    except DeviceError:
                        log.exception("could not put GPU %d back to lease %s's limit", i, lease.lease_id)
            if isinstance(exc, DeviceNoPermissionError):
                raise FailedPreconditionError(
                    f"the agent itself may not set power limits ({exc}): run it as root or with CAP_SYS_ADMIN"
                ) from exc
            if isinstance(exc, DeviceInvalidArgumentError):
                raise InvalidArgumentError(f"the GPU refused {watts:g} W ({exc})") from exc
            raise FailedPreconditionError(f"the GPU refused the change ({exc})") from exc
        return [(i, self._infos[i].uuid, self.backend.enforced_power_limit_mw(i)) for i in indices]

    def _lease_on(self, index: int) -> Lease | None:
        for lease in self._leases.values():
            if index in lease.indices:
                return lease
        return None

    def _get_managed(self, caller: Caller, lease_id: str) -> Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            why = self._ended.get(lease_id)
            if why:
                raise NotFoundError(f"lease {lease_id} has ended ({why})")
            raise NotFoundError(f"no lease {lease_id!r} on this agent")
        if not self._may_manage(caller, lease):
            raise PermissionDeniedError(
                f"lease {lease_id} belongs to pid {lease.holder_pid} (uid {lease.holder_uid}); "
                f"uid {caller.uid} may not change it"
            )
        return lease

    def renew(self, caller: Caller, lease_id: str, lease_s: float) -> Lease:
        """Extend a lease to ``lease_s`` from now."""
        self._check_lease_s(lease_s)
        self._check_allowed(caller)
        with self._lock:
            lease = self._get_managed(caller, lease_id)
            lease.expires_unix_s = self._clock() + lease_s
            return lease

    def release(self, caller: Caller, lease_id: str) -> bool:
        """End a lease, restoring its GPUs; False when it had already ended (idempotent)."""
        self._check_allowed(caller)
        with self._lock:
            if lease_id in self._ended and lease_id not in self._leases:
                return False
            lease = self._get_managed(caller, lease_id)
            self._end(lease, f"released by pid {caller.pid}")
            return True

    def status(self) -> list[GpuRow]:
        """Every GPU with its current limit, original (when changed) and lease."""
        with self._lock:
            rows = []
            for info in self._infos:
                entry = self.journal.get(info.uuid)
                rows.append(
                    GpuRow(
                        info,
                        self.backend.power_limit_mw(info.index),
                        entry["original_mw"] if entry else None,
                        self._lease_on(info.index),
                    )
                )
            return rows

    # ------------------------------------------------------- lease endings
    def _end(self, lease: Lease, why: str) -> None:
        self._leases.pop(lease.lease_id, None)
        self._ended[lease.lease_id] = why
        while len(self._ended) > _ENDED_MEMORY:
            self._ended.popitem(last=False)
        for uuid in lease.uuids:
            self._restore_gpu(uuid, f"lease {lease.lease_id} {why}")

    def _restore_gpu(self, uuid: str, why: str) -> bool:
        entry = self.journal.get(uuid)
        if entry is None:
            return False
        index = next((i.index for i in self._infos if i.uuid == uuid), None)
        if index is None:
            log.error("GPU %s (original limit %d mW) is not on this node any more; dropping it", uuid, entry["original_mw"])
            self.journal.remove(uuid)
            return False
        try:
            self.backend.set_power_limit_mw(index, int(entry["original_mw"]))
        except DeviceError as exc:
            log.error(
                "could not restore GPU %d to %.1f W (%s); it stays in the journal and is retried at start-up; "
                "restore by hand: `nvidia-smi -i %d -pl %.0f`",
                index, entry["original_mw"] / 1000, exc, index, entry["original_mw"] / 1000,
            )  # fmt: skip
            return False
        self.journal.remove(uuid)
        log.info("GPU %d restored to %.1f W (%s)", index, entry["original_mw"] / 1000, why)
        return True

    def holders(self) -> dict[int, int | None]:
        """pid -> start time of every lease holder."""
        with self._lock:
            return {lease.holder_pid: lease.holder_started for lease in self._leases.values()}

    def holder_exited(self, pid: int) -> None:
        """End every lease held by ``pid`` (it exited)."""
        with self._lock:
            for lease in [lease for lease in self._leases.values() if lease.holder_pid == pid]:
                self._end(lease, f"ended: holder pid {pid} exited")

    def expire(self) -> None:
        """End every lapsed lease."""
        now = self._clock()
        with self._lock:
            for lease in [lease for lease in self._leases.values() if lease.expires_unix_s <= now]:
                self._end(lease, "lapsed: not renewed in time")

    def next_expiry_unix_s(self) -> float | None:
        """When the next lease lapses."""
        with self._lock:
            return min((lease.expires_unix_s for lease in self._leases.values()), default=None)

    def restore_all(self, why: str) -> None:
        """End every lease (agent shutdown)."""
        with self._lock:
            for lease in list(self._leases.values()):
                self._end(lease, why)
            for uuid in self.journal.entries():
                self._restore_gpu(uuid, why)


class HolderWatchdog:
    """A thread that ends leases when their holder exits (pidfd) or they lapse.

    With pidfds, a holder's exit wakes the thread at once; without them (old kernels, or a pid that
    could not be opened), ``/proc`` is polled every ``poll_s``. Lapses are checked at least as often.
    """

    def __init__(self, manager: LeaseManager, poll_s: float = 0.2) -> None:
        self.manager = manager
        self.poll_s = poll_s
        self._pidfds: dict[int, int] = {}
        self._wake_r, self._wake_w = os.pipe()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="powerbandit-agent-watchdog", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def wake(self, _pid: int = 0) -> None:
        """Re-read the holders now (a new lease was created)."""
        os.write(self._wake_w, b"x")

    def stop(self) -> None:
        """Stop the thread and close its descriptors."""
        self._stop.set()
        self.wake()
        self._thread.join(5)
        for fd in self._pidfds.values():
            os.close(fd)
        self._pidfds.clear()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _sync(self) -> dict[int, int | None]:
        holders = self.manager.holders()
        for pid in list(self._pidfds):
            if pid not in holders:
                os.close(self._pidfds.pop(pid))
        for pid, started in holders.items():
            if pid not in self._pidfds and entitlement.is_alive(pid, started):
                fd = entitlement.pidfd_open(pid)
                if fd is not None:
                    self._pidfds[pid] = fd
        return holders

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                holders = self._sync()
                for pid, started in holders.items():  # exited before its pidfd was opened, or no pidfd
                    if not entitlement.is_alive(pid, started):
                        self.manager.holder_exited(pid)
                self.manager.expire()
                timeout_s = self.poll_s
                if len(self._pidfds) == len(holders):
                    nxt = self.manager.next_expiry_unix_s()
                    timeout_s = 5.0 if nxt is None else min(5.0, max(0.0, nxt - time.time()) + 0.01)
                poller = select.poll()
                poller.register(self._wake_r, select.POLLIN)
                by_fd = {fd: pid for pid, fd in self._pidfds.items()}
                for fd in by_fd:
                    poller.register(fd, select.POLLIN)
                for fd, _events in poller.poll(timeout_s * 1000):
                    if fd == self._wake_r:
                        os.read(self._wake_r, 4096)
                    elif fd in by_fd:
                        self.manager.holder_exited(by_fd[fd])
            except Exception:  # keep watching: a failure here must not leave GPUs capped
                log.exception("watchdog iteration failed")
                self._stop.wait(self.poll_s)
