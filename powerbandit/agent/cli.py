"""``powerbandit agent``: ``serve``, ``status``, ``set-limit`` and ``release``."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time

from powerbandit.agent.client import AGENT_SOCKET_ENV, DEFAULT_SOCKET

__all__ = ["add_arguments", "run"]


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


def _watts(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of watts") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of watts")
    return value


def add_arguments(sub: argparse._SubParsersAction) -> None:
    """Register ``powerbandit agent ...``."""
    p = sub.add_parser(
        "agent",
        help="the node agent: power limits for unprivileged training processes",
        description="The node agent (docs/node-agent.md): applies GPU power limits for unprivileged processes "
        "under leases, and always restores the original limits.",
    )
    a = p.add_subparsers(dest="agent_command", required=True)

    s = a.add_parser("serve", help="run the agent (as root)")
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
    s.add_argument("--simulate-gpus", type=int, default=0, help="use N simulated GPUs instead of NVML")
    s.add_argument("--simulate-model", default="Simulated GPU", help="model name of the simulated GPUs")
    s.add_argument("--simulate-range", default="100:300", help="power-limit range of the simulated GPUs, W [100:300]")
    s.add_argument("--simulate-state", default=None,
                   help="simulated GPUs' state file (kept across restarts) [STATE_DIR/simulated-gpus.json]")  # fmt: skip
    s.add_argument("--simulate-mig", type=int, action="append", default=[], help="simulated GPU index with MIG on")

    st = a.add_parser("status", help="show every GPU's limits and lease")
    st.add_argument("--socket", default=_socket_default(), help=f"agent socket [{AGENT_SOCKET_ENV}]")
    st.add_argument("--json", action="store_true", help="print JSON")

    sl = a.add_parser("set-limit", help="set a power limit under a lease")
    sl.add_argument("--socket", default=_socket_default(), help=f"agent socket [{AGENT_SOCKET_ENV}]")
    sl.add_argument("--gpu", action="append", required=True, help="GPU UUID or index (repeatable)")
    sl.add_argument("--watts", type=_watts, required=True, help="per-GPU power limit, W")
    sl.add_argument("--lease-s", type=_watts, required=True, help="lease length, s")
    sl.add_argument("--lease-id", default="", help="lease id for idempotent retries")
    sl.add_argument("--hold", action="store_true",
                    help="keep the lease, renewing it, until interrupted (default: the calling shell holds it)")  # fmt: skip

    r = a.add_parser("release", help="end a lease (the original limits come back)")
    r.add_argument("--socket", default=_socket_default(), help=f"agent socket [{AGENT_SOCKET_ENV}]")
    r.add_argument("lease", help="lease id")


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


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


def _serve(args: argparse.Namespace) -> int:
    from client_sdk.devices.access import NvmlBackend
    from client_sdk.devices.simulated import SimulatedBackend, create_state, parse_range_w
    from powerbandit.agent.daemon import AgentConfig, serve_forever

    if args.min_watts is not None and args.max_watts is not None and args.min_watts > args.max_watts:
        return _error(f"--min-watts {args.min_watts:g} is above --max-watts {args.max_watts:g}")
    if args.simulate_gpus < 0:
        return _error("--simulate-gpus must be >= 0")
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
    if args.simulate_gpus:
        state = args.simulate_state or os.path.join(args.state_dir, "simulated-gpus.json")
        if not os.path.exists(state):
            os.makedirs(os.path.dirname(os.path.abspath(state)), exist_ok=True)
            create_state(state, args.simulate_gpus, model=args.simulate_model,
                         range_w=parse_range_w(args.simulate_range), mig_indices=tuple(args.simulate_mig))  # fmt: skip
        backend = SimulatedBackend(state, privileged=True)
    else:
        from client_sdk.gpu import GpuUnavailableError

        try:
            backend = NvmlBackend()
        except GpuUnavailableError as exc:
            return _error(f"{exc} (or try --simulate-gpus N)")
    serve_forever(config, backend)
    return 0


def _status(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from powerbandit.agent.client import AgentClient

    client = AgentClient(args.socket)
    try:
        status = client.status()
    finally:
        client.close()
    if args.json:
        print(json.dumps(json_format.MessageToDict(status, always_print_fields_with_no_presence=True), indent=2))
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


def _set_limit(args: argparse.Namespace) -> int:
    from powerbandit.agent.client import AgentClient
    from powerbandit.agent.v1 import agent_pb2 as pb

    client = AgentClient(args.socket)
    try:
        scope = pb.HOLDER_SCOPE_UNSPECIFIED if args.hold else pb.HOLDER_SCOPE_PARENT
        answer = client.set_power_limit(args.gpu, args.watts, args.lease_s, lease_id=args.lease_id, holder_scope=scope)
        lease = answer.lease
        applied = ", ".join(f"GPU {a.index}: {a.power_limit_w:g} W" for a in answer.applied)
        holder = "this process" if args.hold else f"pid {lease.holder_pid} (the calling shell)"
        print(f"lease {lease.lease_id}: {applied}; held by {holder} for {args.lease_s:g} s", flush=True)
        if not args.hold:
            return 0
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda s, f: stop.set())
        while not stop.wait(max(0.05, args.lease_s / 3)):
            client.renew(lease.lease_id, args.lease_s)
        client.release(lease.lease_id)
        print(f"lease {lease.lease_id} released", flush=True)
        return 0
    finally:
        client.close()


def _release(args: argparse.Namespace) -> int:
    from powerbandit.agent.client import AgentClient

    client = AgentClient(args.socket)
    try:
        released = client.release(args.lease).released
    finally:
        client.close()
    print(f"lease {args.lease} " + ("released" if released else "had already ended"))
    return 0
