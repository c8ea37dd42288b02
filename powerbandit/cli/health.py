"""``powerbandit health``: ask a server's gRPC health service whether it is serving.

Exit status 0 when the server answers SERVING, 1 otherwise (not serving, unreachable, timed out,
a failed TLS handshake), with one line saying which. Container health checks, systemd and scripts
use it; it needs only the SDK install (``grpcio-health-checking``), not the server extra.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from powerbandit.cli.argtypes import server_address

DEFAULT_ADDRESS = "127.0.0.1:50051"

#: The gRPC C-core's log level for this command unless ``GRPC_VERBOSITY`` says otherwise: none. A
#: failed handshake is logged (``ssl_transport_security.cc ... WRONG_VERSION_NUMBER``) before the
#: command's own line, which says what went wrong and carries the C-core's reason in the call's status.
GRPC_CORE_VERBOSITY = "NONE"


def default_address() -> str:
    """``$POWERBANDIT_SERVER``, else the local end of ``$POWERBANDIT_LISTEN``, else 127.0.0.1:50051.

    A server told to listen on ``0.0.0.0:PORT`` or ``[::]:PORT`` is reached on loopback at PORT, so
    the same environment that starts a server (a container's, a unit's) also checks it.
    """
    server = os.environ.get("POWERBANDIT_SERVER", "").strip()
    if server:
        return server
    listen = os.environ.get("POWERBANDIT_LISTEN", "").strip()
    if not listen:
        return DEFAULT_ADDRESS
    host, sep, port = listen.rpartition(":")
    if not sep:
        return DEFAULT_ADDRESS
    if host in ("", "0.0.0.0", "[::]", "::"):
        return f"127.0.0.1:{port}"
    return listen


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``powerbandit health``."""
    parser.add_argument(
        "--server",
        default=None,
        type=server_address,
        help="host:port [POWERBANDIT_SERVER, else the loopback end of POWERBANDIT_LISTEN, else 127.0.0.1:50051]",
    )
    parser.add_argument(
        "--service",
        default="",
        help="service name to check (default: the whole server; e.g. powerbandit.v1.OptimizerService)",
    )
    parser.add_argument(
        "--timeout-s", type=float, default=5.0, help="seconds to wait for the answer (default 5)"
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system root certificates)")
    parser.add_argument(
        "--tls-root-cert",
        default=os.environ.get("POWERBANDIT_TLS_ROOT_CERT") or None,
        help="connect with TLS, trusting this PEM certificate [POWERBANDIT_TLS_ROOT_CERT]",
    )
    parser.add_argument(
        "--tls-server-name",
        default=None,
        help="name the server's certificate is checked against (default: the host of --server)",
    )


def check(
    address: str,
    service: str = "",
    timeout_s: float = 5.0,
    *,
    tls: bool = False,
    root_cert_pem: bytes | None = None,
    server_name: str | None = None,
) -> str:
    """The health status name the server at ``address`` reports for ``service`` (e.g. ``SERVING``).

    ``tls`` (or a ``root_cert_pem``) connects with TLS; ``server_name`` overrides the name the
    certificate is checked against. Raises :class:`grpc.RpcError` when the server cannot be reached
    or does not know ``service``.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls or root_cert_pem is not None:
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        credentials = grpc.ssl_channel_credentials(root_certificates=root_cert_pem)
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def quiet_grpc_core_logging(command: str | None) -> None:
    """For ``powerbandit health``: keep the gRPC C-core's log lines off stderr (a ``GRPC_VERBOSITY`` set wins).

    The C-core reads ``GRPC_VERBOSITY`` when ``grpc`` is first imported, so the entry point calls
    this before anything imports it (this module imports ``grpc`` inside its functions); once
    ``grpc`` is loaded it changes nothing, not even the environment.
    """
    if command == "health" and "grpc" not in sys.modules:
        os.environ.setdefault("GRPC_VERBOSITY", GRPC_CORE_VERBOSITY)


def tls_failure(detail: str, address: str, server_name: str | None) -> str | None:
    """What a failed TLS handshake means, from the status details of the failed call (None: not TLS).

    >>> tls_failure("Tls handshake failed (TSI_PROTOCOL_FAILURE): ...:WRONG_VERSION_NUMBER: ...", "h:1", None)
    'TLS handshake failed: the server at h:1 does not speak TLS (is it plaintext? drop --tls)'
    """
    if "WRONG_VERSION_NUMBER" in detail:
        return f"TLS handshake failed: the server at {address} does not speak TLS (is it plaintext? drop --tls)"
    if "CERTIFICATE_VERIFY_FAILED" in detail:
        reason = detail.rsplit("CERTIFICATE_VERIFY_FAILED:", 1)[-1].strip().removesuffix(": OK").strip()
        return (
            f"TLS handshake failed: the certificate of the server at {address} is not trusted ({reason}); "
            f"pass the certificate that signed it with --tls-root-cert"
        )
    if "Hostname Verification Check failed" in detail:
        name = server_name or address.rpartition(":")[0].strip("[]")
        return (
            f"TLS handshake failed: the certificate of the server at {address} is not for {name!r}; "
            f"give the name it is for with --tls-server-name"
        )
    if "handshake failed" in detail.lower():
        return f"TLS handshake failed with the server at {address}: {detail}"
    return None


def run(args: argparse.Namespace) -> int:
    """Check the server; prints one line and returns 0 only for SERVING."""
    import grpc

    address = args.server or default_address()
    if args.timeout_s <= 0:
        print(f"error: --timeout-s must be positive, got {args.timeout_s:g}", file=sys.stderr)
        return 2
    what = f"{address} ({args.service})" if args.service else address
    root_cert_pem = None
    if args.tls_root_cert:
        try:
            root_cert_pem = Path(args.tls_root_cert).read_bytes()
        except OSError as exc:
            print(f"error: cannot read --tls-root-cert {args.tls_root_cert}: {exc.strerror}", file=sys.stderr)
            return 2
        if b"-----BEGIN CERTIFICATE-----" not in root_cert_pem:
            print(f"error: --tls-root-cert {args.tls_root_cert} holds no PEM certificate "
                  f"(-----BEGIN CERTIFICATE-----)", file=sys.stderr)  # fmt: skip
            return 2
    try:
        status = check(
            address,
            args.service,
            args.timeout_s,
            tls=args.tls,
            root_cert_pem=root_cert_pem,
            server_name=args.tls_server_name,
        )
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        if code == grpc.StatusCode.NOT_FOUND:
            print(f"error: {what}: the server does not know this service", file=sys.stderr)
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            print(f"error: {what}: no answer within {args.timeout_s:g} s", file=sys.stderr)
        else:
            detail = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""
            tls = args.tls or root_cert_pem is not None
            failure = tls_failure(detail, address, args.tls_server_name) if tls else None
            if failure:
                print(f"error: {failure}", file=sys.stderr)
            else:
                hint = "" if tls or "Socket closed" not in detail else " (if the server uses TLS, add --tls)"
                print(f"error: {what}: unreachable ({code.name if code else 'error'}: {detail}){hint}",
                      file=sys.stderr)  # fmt: skip
        return 1
    print(f"{what}: {status}")
    return 0 if status == "SERVING" else 1
