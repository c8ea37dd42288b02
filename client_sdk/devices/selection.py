"""Which GPUs a process sees: ``CUDA_VISIBLE_DEVICES`` and ``NVIDIA_VISIBLE_DEVICES`` parsing.

Pure functions over a list of GPU UUIDs (in NVML order), shared by the SDK (which GPUs does this
job use) and the node agent (which GPUs may a caller change, read from its ``/proc/PID/environ``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from client_sdk.devices.errors import GpuConfigError

__all__ = ["MIG_MESSAGE", "match_gpu", "nvidia_visible_devices", "select_from_cuda_visible_devices"]

_LOG = logging.getLogger("powerbandit.sdk.nvml")

MIG_MESSAGE = (
    "powerbandit cannot measure or power-limit a MIG instance (NVML's energy counter and power limit "
    "belong to the whole GPU)."
)


def match_gpu(entry: str, uuids: Sequence[str]) -> int | None:
    """Position in ``uuids`` named by one entry: an index, or a unique (prefix of a) ``GPU-`` UUID."""
    entry = entry.strip()
    if entry.isdigit():
        return int(entry) if int(entry) < len(uuids) else None
    if not entry:
        return None
    key = entry.lower() if entry.lower().startswith("gpu-") else "gpu-" + entry.lower()
    hits = [i for i, u in enumerate(uuids) if u.lower().startswith(key)]
    return hits[0] if len(hits) == 1 else None


def select_from_cuda_visible_devices(value: str, uuids: Sequence[str], *, log: bool = True) -> list[int]:
    """Positions in ``uuids`` named by ``CUDA_VISIBLE_DEVICES``, following CUDA's parsing rules.

    Entries are indices or (prefixes of) ``GPU-`` UUIDs; like CUDA, the first entry that matches no GPU
    (or repeats one) ends the list. ``MIG-`` entries raise :class:`GpuConfigError`.
    """
    selected: list[int] = []
    for raw in value.split(","):
        entry = raw.strip()
        if entry.upper().startswith("MIG-"):
            raise GpuConfigError(
                f"CUDA_VISIBLE_DEVICES={value!r} names a MIG instance ({entry!r}). {MIG_MESSAGE} "
                "Run on a whole GPU with MIG disabled, or do a dry run with client_sdk.replay.ReplayGpu."
            )
        match = match_gpu(entry, uuids)
        if match is None or match in selected:
            if log:
                _LOG.warning(
                    "CUDA_VISIBLE_DEVICES=%r: entry %r matches no GPU here (or repeats one); like CUDA, the "
                    "GPUs listed after it are ignored.",
                    value,
                    entry,
                )
            break
        selected.append(match)
    return selected


def nvidia_visible_devices(value: str, uuids: Sequence[str]) -> list[int]:
    """Positions in ``uuids`` named by ``NVIDIA_VISIBLE_DEVICES`` (the NVIDIA container runtime's variable).

    ``all`` = every GPU; ``none``, ``void`` or empty = none; otherwise comma-separated host indices or
    UUIDs. Entries that match no GPU (and ``MIG-`` entries) are skipped: the runtime gives such a
    container no whole GPU.
    """
    text = value.strip().lower()
    if text == "all":
        return list(range(len(uuids)))
    if text in ("", "none", "void"):
        return []
    selected: list[int] = []
    for raw in value.split(","):
        if raw.strip().upper().startswith("MIG-"):
            continue
        match = match_gpu(raw, uuids)
        if match is not None and match not in selected:
            selected.append(match)
    return selected
