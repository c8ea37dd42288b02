"""Who the caller is and which GPUs it may change, from the kernel's view of its process.

The caller's pid/uid/gid come from the socket's peer credentials (``SO_PEERCRED``), never from the
request. Its GPUs come from two kinds of evidence:

- **compute contexts** (unforgeable): GPUs on which the caller or one of its descendants holds a CUDA
  context, as NVML reports (host PID namespace);
- **environment** (only as strong as what enforces it): the GPUs its process sees through
  ``NVIDIA_VISIBLE_DEVICES`` (set by the NVIDIA container runtime, backed by the container's device
  cgroup) and ``CUDA_VISIBLE_DEVICES`` (set by Slurm's GRES plugin, backed by its device cgroup),
  read from ``/proc/PID/environ``. On a bare host a user can set these variables freely; run the
  agent with ``--entitlement context`` there.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from client_sdk.devices.errors import GpuConfigError
from client_sdk.devices.selection import nvidia_visible_devices, select_from_cuda_visible_devices

__all__ = [
    "ENTITLEMENT_MODES",
    "Caller",
    "entitled_gpus",
    "is_alive",
    "parent_pid",
    "peer_credentials",
    "process_groups",
    "process_uid",
    "read_environ",
    "start_time",
]

ENTITLEMENT_MODES = ("env-or-context", "context", "env")
PROC = Path("/proc")


@dataclass(frozen=True)
class Caller:
    """A connected process as the kernel identifies it (agent's PID namespace)."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> Caller:
    """``SO_PEERCRED`` of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Caller(pid, uid, gid)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return [text[: text.index(" ")], "comm", *text[text.rindex(")") + 2 :].split()]


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a pid apart from a reused one)."""
    fields = _stat_fields(pid)
    return int(fields[21]) if fields else None


def parent_pid(pid: int) -> int | None:
    """The parent's pid, or ``None`` when the process is gone."""
    fields = _stat_fields(pid)
    return int(fields[3]) if fields else None


def is_alive(pid: int, started: int | None) -> bool:
    """Whether ``pid`` still runs (not a zombie) and is the process that started at ``started``."""
    fields = _stat_fields(pid)
    if fields is None or fields[2] in ("Z", "X"):
        return False
    return started is None or int(fields[21]) == started


def _status_field(pid: int, name: str) -> list[int]:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(name + ":"):
                return [int(v) for v in line.split()[1:]]
    except OSError:
        pass
    return []


def process_uid(pid: int) -> int | None:
    """The real uid of ``pid``."""
    values = _status_field(pid, "Uid")
    return values[0] if values else None


def process_groups(pid: int) -> set[int]:
    """The real gid and supplementary groups of ``pid``."""
    return set(_status_field(pid, "Gid")[:1]) | set(_status_field(pid, "Groups"))


def read_environ(pid: int) -> dict[str, str]:
    """The initial environment of ``pid`` (``/proc/PID/environ``; readable by root or the same user)."""
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            ppid = parent_pid(int(entry.name))
            if ppid is not None:
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def env_gpus(env: dict[str, str], uuids: Sequence[str]) -> tuple[set[int], str]:
    """GPU indices the environment makes visible, and which variable said so ("" = none set)."""
    nvd = env.get("NVIDIA_VISIBLE_DEVICES")
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if nvd is None and cvd is None:
        return set(), ""
    base = list(range(len(uuids))) if nvd is None else nvidia_visible_devices(nvd, uuids)
    if cvd is None:
        return set(base), "NVIDIA_VISIBLE_DEVICES"
    try:
        positions = select_from_cuda_visible_devices(cvd, [uuids[i] for i in base], log=False)
    except GpuConfigError:  # MIG entries: no whole GPU
        return set(), "CUDA_VISIBLE_DEVICES"
    return {base[p] for p in positions}, "CUDA_VISIBLE_DEVICES"


def entitled_gpus(
    pid: int,
    uuids: Sequence[str],
    compute_pids: Callable[[int], list[int]],
    mode: str = "env-or-context",
) -> dict[int, str]:
    """GPU index -> the evidence that entitles process ``pid`` to it (see the module docstring)."""
    out: dict[int, str] = {}
    if mode in ("env-or-context", "env"):
        gpus, variable = env_gpus(read_environ(pid), uuids)
        out.update({i: variable for i in gpus})
    if mode in ("env-or-context", "context"):
        tree = None
        for index in range(len(uuids)):
            if index in out:
                continue
            try:
                holders = compute_pids(index)
            except Exception:  # a GPU that cannot list its processes grants nothing
                continue
            if not holders:
                continue
            if tree is None:
                tree = _descendants(pid)
            if tree.intersection(holders):
                out[index] = "compute context"
    return out


def pidfd_open(pid: int) -> int | None:
    """A pidfd for ``pid`` (Linux 5.3+), or ``None`` where unavailable (the caller polls /proc)."""
    fn = getattr(os, "pidfd_open", None)
    if fn is None:
        return None
    try:
        return int(fn(pid))
    except OSError:
        return None
