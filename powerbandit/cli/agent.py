"""``powerbandit agent``: ``serve``, ``status``, ``set-limit`` and ``release``."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from powerbandit.agent.client import AGENT_SOCKET_ENV, DEFAULT_SOCKET
from powerbandit.cli.argtypes import positive_int

if TYPE_CHECKING:
    from powerbandit.agent.client import AgentClient

__all__ = ["EXIT_PROBLEM", "EXIT_USAGE", "add_arguments", "run"]

#: Exit status when the command ran into a problem (agent unreachable, a refusal, no NVML), as the README says.
EXIT_PROBLEM = 1
#: Exit status for a flag the command cannot take (argparse uses it too).
EXIT_USAGE = 2

#: What the agent needs when NVML cannot be loaded (it measures nothing itself, so the SDK's replay GPU is no way out).
AGENT_WAYS_OUT = (
    "The agent needs NVML: an NVIDIA GPU with its driver loaded (`nvidia-smi` must work) and the `nvidia-ml-py` "
    "package. For a dry run without a GPU, start it with `--simulate-gpus N` (N >= 1)."
)


def _socket_default() -> str:
    return os.environ.get(AGENT_SOCKET_ENV) or DEFAULT_SOCKET


def _octal(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal file mode such as 0660") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a file mode (0000-0777)")
    return mode


def _positive(text: str, unit: str, example: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of {unit} (e.g. {example})") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of {unit} (e.g. {example})")
    return value


def _watts(text: str) -> float:
    """A power limit, W (> 0)."""
    return _positive(text, "watts", "150")


def _seconds(text: str) -> float:
    """A lease length, s (> 0)."""
    return _positive(text, "seconds", "60")


def add_arguments(sub: argparse._SubParsersAction) -> None:
    """Register ``powerbandit agent ...``."""
    p = sub.add_parser(
        "agent",
        help="the node agent: power limits for unprivileged training processes",
        description="The node agent (docs/node-agent.md): applies GPU power limits for unprivileged processes "
        "under leases, and always restores the original limits.",
    )
    a = p.add_subparsers(dest="agent_command", required=True)

    s = a.add_parser(
        "serve",
        help="run the agent (as root)",
        description="Run the node agent as root: it listens on a Unix socket, sets power limits for the "
        "processes entitled to a GPU under leases, journals each GPU's original limit before the first "
        "change, and restores it when a lease ends, lapses or its holder dies, on SIGTERM, and at start-up "
        "after a crash. --simulate-gpus N runs it on simulated GPUs (a dry run without a GPU).",
    )
    s.add_argument("--socket", default=_socket_default(), help=f"public Unix socket [{AGENT_SOCKET_ENV}, {DEFAULT_SOCKET}]")
    s.add_argument("--socket-mode", type=_octal, default=0o660, help="socket file mode, octal [0660]")
    s.add_argument("--socket-group", default=None, help="socket group (name or gid): the training users' group")
    s.add_argument("--state-dir", default="/var/lib/powerbandit-agent",
                   help="journal of original limits and the private socket [/var/lib/powerbandit-agent]")  # fmt: skip
    s.add_argument("--min-watts", type=_watts, default=None, help="operator lower bound; requests below are refused")
    s.add_argument("--max-watts", type=_watts, default=None, help="operator upper bound; requests above are refused")
    s.add_argument("--allow-uid", type=int, action="append", default=[], help="allowed caller uid (repeatable)")
    s.add_argument("--allow-gid", type=int, action="append", default=[], help="allowed caller gid (repeatable)")
    s.add_argument("--entitlement", choices=["env-or-context", "context", "env"], default="env-or-context",
                   help="evidence that a caller may change a GPU [env-or-context]; see docs/node-agent.md")  # fmt: skip
    s.add_argument("--simulate-gpus", type=positive_int, default=None, metavar="N",
                   help="use N >= 1 simulated GPUs instead of NVML (a dry run without a GPU)")  # fmt: skip
    s.add_argument("--simulate-model", default="Simulated GPU", help="model name of the simulated GPUs")
    s.add_argument("--simulate-range", default="100:300", help="power-limit range of the simulated GPUs, W [100:300]")
    s.add_argument("--simulate-state", default=None,
                   help="simulated GPUs' state file (kept across restarts) [STATE_DIR/simulated-gpus.json]")  # fmt: skip
    s.add_argument("--simulate-mig", type=int, action="append", default=[], help="simulated GPU index with MIG on")

    st = a.add_parser(
        "status",
        help="show every GPU's limits and lease",
        description="Show each GPU the agent manages: its power-limit range, the limit in force, the "
        "original limit it will restore, and the lease holding it (if any). Any user who can open the "
        "agent's socket may ask.",
    )
    st.add_argument("--socket", default=_socket_default(), help=f"agent socket [{AGENT_SOCKET_ENV}]")
    st.add_argument("--json", action="store_true", help="print JSON")

    sl = a.add_parser(
        "set-limit",
        help="set a power limit under a lease",
        description="Set a power limit under a lease. Without --hold the lease belongs to the process that ran "
        "this command (its parent, e.g. your interactive shell) and ends when that process exits: inside "
        "`$(... | ...)` or a script that exits, it ends at once. With --hold this command holds it until "
        "interrupted. See docs/node-agent.md.",
    )
    sl.add_argument("--socket", default=_socket_default(), help=f"agent socket [{AGENT_SOCKET_ENV}]")
    sl.add_argument("--gpu", action="append", required=True, help="GPU UUID or index (repeatable)")
    sl.add_argument("--watts", type=_watts, required=True, help="per-GPU power limit, W")
    sl.add_argument("--lease-s", type=_seconds, required=True, help="lease length, s")
    sl.add_argument("--lease-id", default="", help="lease id for idempotent retries")
    sl.add_argument("--hold", action="store_true",
                    help="hold the lease in this process, renewing it, until interrupted (default: the lease "
                    "lives only as long as the calling process, e.g. your shell)")  # fmt: skip

    r = a.add_parser(
        "release",
        help="end a lease (the original limits come back)",
        description="End a lease by its id (as `set-limit` printed it): the GPUs get their original power "
        "limits back. Only the holder's process or user, or root, may release it.",
    )
    r.add_argument("--socket", default=_socket_default(), help=f"agent socket [{AGENT_SOCKET_ENV}]")
    r.add_argument("lease", help="lease id")


def _error(message: str, status: int = EXIT_PROBLEM) -> int:
    """Print one ``error: ...`` line; returns ``status`` (:data:`EXIT_PROBLEM` unless it is a usage error)."""
    print(f"error: {message}", file=sys.stderr)
    return status


def run(args: argparse.Namespace) -> int:
    """Run one ``powerbandit agent`` subcommand; returns the exit status."""
    from powerbandit.agent.client import AgentError

    try:
        if args.agent_command == "serve":
            return _serve(args)
        if args.agent_command == "status":
            return _status(args)
        if args.agent_command == "set-limit":
            return _set_limit(args)
        return _release(args)
    except AgentError as exc:
        return _error(f"{exc} ({exc.code.name})")
    except (OSError, ValueError, RuntimeError) as exc:
        return _error(str(exc))


def _new_paths(paths: list[str]) -> list[Path]:
    """For each path, its topmost ancestor (or itself) that does not exist yet: what a start would create."""
    created: list[Path] = []
    for path in paths:
        top: Path | None = None
        for candidate in (Path(os.path.abspath(path)), *Path(os.path.abspath(path)).parents):
            if candidate.exists() or candidate.is_symlink():
                break
            top = candidate
        if top is not None and top not in created:
            created.append(top)
    return created


def _remove_new(paths: list[Path]) -> None:
    """Remove what a failed start created (``paths`` did not exist before it)."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


def _serve(args: argparse.Namespace) -> int:
    from client_sdk.devices.access import NvmlBackend
    from client_sdk.devices.simulated import SimulatedBackend, create_state, parse_range_w
    from client_sdk.gpu import GpuUnavailableError
    from powerbandit.agent.daemon import AgentConfig, serve_forever

    if args.min_watts is not None and args.max_watts is not None and args.min_watts > args.max_watts:
        return _error(f"--min-watts {args.min_watts:g} is above --max-watts {args.max_watts:g}", EXIT_USAGE)
    config = AgentConfig(
        socket_path=args.socket,
        socket_mode=args.socket_mode,
        socket_group=args.socket_group,
        state_dir=args.state_dir,
        min_w=args.min_watts,
        max_w=args.max_watts,
        allow_uids=args.allow_uid,
        allow_gids=args.allow_gid,
        entitlement_mode=args.entitlement,
    )
    state = None
    if args.simulate_gpus is not None:
        try:
            range_w = parse_range_w(args.simulate_range)
        except ValueError as exc:
            return _error(f"--simulate-range: {exc}", EXIT_USAGE)
        bad_mig = [i for i in args.simulate_mig if not 0 <= i < args.simulate_gpus]
        if bad_mig:
            return _error(f"--simulate-mig {bad_mig[0]} is not a GPU index of --simulate-gpus "
                          f"{args.simulate_gpus} (0 to {args.simulate_gpus - 1})", EXIT_USAGE)  # fmt: skip
        state = args.simulate_state or os.path.join(args.state_dir, "simulated-gpus.json")
    # Everything checked: from here on a failed start removes the folders and files it created.
    created = _new_paths([args.state_dir, os.path.dirname(os.path.abspath(args.socket))] + ([state] if state else []))
    ready = threading.Event()
    try:
        if state is not None:
            if not os.path.exists(state):
                os.makedirs(os.path.dirname(os.path.abspath(state)), exist_ok=True)
                create_state(state, args.simulate_gpus, model=args.simulate_model, range_w=range_w,
                             mig_indices=tuple(args.simulate_mig))  # fmt: skip
            backend = SimulatedBackend(state, privileged=True)
        else:
            try:
                backend = NvmlBackend(lead="The agent cannot reach the GPUs", ways_out=AGENT_WAYS_OUT)
            except GpuUnavailableError as exc:
                return _error(str(exc))
        serve_forever(config, backend, on_ready=ready.set)
    finally:
        if not ready.is_set():
            _remove_new(created)
    return 0


def _in_field_order(descriptor: Any, as_dict: dict[str, Any]) -> dict[str, Any]:
    """``as_dict`` (``MessageToDict`` of a message of ``descriptor``) with its keys in the .proto's field order.

    ``MessageToDict`` puts set fields first and defaults after, so two GPUs would list theirs differently.
    """
    ordered: dict[str, Any] = {}
    for fd in descriptor.fields:
        if fd.json_name not in as_dict:
            continue
        value = as_dict[fd.json_name]
        sub = fd.message_type
        if sub is not None and not sub.GetOptions().map_entry:
            if isinstance(value, list):
                value = [_in_field_order(sub, v) if isinstance(v, dict) else v for v in value]
            elif isinstance(value, dict):
                value = _in_field_order(sub, value)
        ordered[fd.json_name] = value
    return ordered


def _status(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from powerbandit.agent.client import AgentClient

    client = AgentClient(args.socket)
    try:
        status = client.status()
    finally:
        client.close()
    if args.json:
        as_dict = json_format.MessageToDict(status, always_print_fields_with_no_presence=True)
        print(json.dumps(_in_field_order(status.DESCRIPTOR, as_dict), indent=2))
        return 0
    bounds = ""
    if status.operator_min_w or status.operator_max_w:
        bounds = f", operator bounds {status.operator_min_w or 0:g}-{status.operator_max_w or math.inf:g} W"
    print(f"agent at {args.socket} ({status.backend}{bounds})")
    now = time.time()
    for g in status.gpus:
        held = "free"
        if g.lease_id:
            held = (f"lease {g.lease_id} pid {g.holder_pid} uid {g.holder_uid}, "
                    f"{max(0.0, g.expires_unix_s - now):.0f} s left, original {g.original_limit_w:g} W")  # fmt: skip
        mig = " MIG" if g.mig_enabled else ""
        print(f"  {g.index} {g.uuid} {g.model}{mig}: {g.current_limit_w:g} W "
              f"(range {g.min_limit_w:g}-{g.max_limit_w:g} W) {held}")  # fmt: skip
    return 0


def _process_name(pid: int) -> str:
    """The command name of ``pid`` (``/proc/PID/comm``), or ``""``."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _set_limit(args: argparse.Namespace) -> int:
    from powerbandit.agent.client import AgentClient
    from powerbandit.agent.v1 import agent_pb2 as pb

    client = AgentClient(args.socket)
    try:
        scope = pb.HOLDER_SCOPE_UNSPECIFIED if args.hold else pb.HOLDER_SCOPE_PARENT
        answer = client.set_power_limit(args.gpu, args.watts, args.lease_s, lease_id=args.lease_id, holder_scope=scope)
        lease = answer.lease
        applied = ", ".join(f"GPU {a.index}: {a.power_limit_w:g} W" for a in answer.applied)
        if args.hold:
            print(f"lease {lease.lease_id}: {applied}; held by this process (pid {os.getpid()}), renewed every "
                  f"{_renew_every_s(args.lease_s):g} s until interrupted", flush=True)  # fmt: skip
            return _hold(client, lease.lease_id, args.lease_s)
        name = _process_name(lease.holder_pid)
        holder = f"pid {lease.holder_pid}" + (f" ({name})" if name else "")
        print(f"lease {lease.lease_id}: {applied}; held by the calling process, {holder}, for at most "
              f"{args.lease_s:g} s: it ends as soon as that process exits (use --hold to keep it in a process "
              "of its own)", flush=True)  # fmt: skip
        return 0
    finally:
        client.close()


def _renew_every_s(lease_s: float) -> float:
    """How often ``--hold`` renews: a third of the lease, at most every 0.05 s."""
    return max(0.05, lease_s / 3)


def _hold(client: AgentClient, lease_id: str, lease_s: float) -> int:
    """Renew ``lease_id`` until SIGTERM/SIGINT, then release it; notice at once when the agent goes away.

    The connection to the agent stays open between renewals; when it drops (the agent stopped or
    restarted) the loop renews at once instead of waiting up to ``lease_s / 3``, so a lease that no
    longer exists ends this process within moments, with a message saying why.
    """
    import grpc

    from powerbandit.agent.client import AgentError

    stop = threading.Event()
    wake = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()
        wake.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    client.watch_connection(lambda state: None if state == grpc.ChannelConnectivity.READY else wake.set())
    while not stop.is_set():
        wake.wait(_renew_every_s(lease_s))
        wake.clear()
        if stop.is_set():
            break
        try:
            client.renew(lease_id, lease_s)
        except AgentError as exc:
            if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
                return _error(f"lease {lease_id} is gone: the agent at {client.socket_path} stopped or restarted "
                              f"(it restores the original limits itself); {exc} ({exc.code.name})")  # fmt: skip
            raise
    client.release(lease_id)
    print(f"lease {lease_id} released", flush=True)
    return 0


def _release(args: argparse.Namespace) -> int:
    from powerbandit.agent.client import AgentClient

    client = AgentClient(args.socket)
    try:
        released = client.release(args.lease).released
    finally:
        client.close()
    print(f"lease {args.lease} " + ("released" if released else "had already ended"))
    return 0
