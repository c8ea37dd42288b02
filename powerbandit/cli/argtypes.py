"""Argparse types that check a flag's value where it is parsed: a mistake is one usage line, exit 2.

>>> fraction_0_1("0.25")
0.25
"""

from __future__ import annotations

import argparse
import math

from powerbandit.addresses import AddressError, ListenAddressError, parse_listen, split_host_port
from powerbandit.domain import MAX_SLOWDOWN


def _number(text: str, kind: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number ({kind})") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number ({kind})")
    return value


def fraction_0_1(text: str) -> float:
    """A number from 0 to 1 inclusive (``eta``: 1 = energy only, 0 = time only)."""
    value = _number(text, "expected a number from 0 to 1")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]: use a number from 0 to 1, e.g. 0.5")
    return value


def at_least_1(text: str) -> float:
    """A number >= 1 (``beta``: the early-stop multiple of the best cost)."""
    value = _number(text, "expected a number >= 1")
    if value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is below 1: use a number >= 1, e.g. 2")
    return value


def slowdown_factor(text: str) -> float:
    """A slowdown budget: a factor from 1 to 100 (1.1 = runs at most 10 % slower than the default's).

    >>> slowdown_factor("1.1")
    1.1
    """
    value = _number(text, "expected a slowdown factor from 1 to 100, e.g. 1.1")
    if value < 1.0:
        raise argparse.ArgumentTypeError(
            f"{text} is below 1: a slowdown budget is a factor >= 1, e.g. 1.1 (at most 10 % slower)"
        )
    if value > MAX_SLOWDOWN:
        raise argparse.ArgumentTypeError(
            f"{text} is above {MAX_SLOWDOWN:g}: a slowdown budget is a factor from 1 to {MAX_SLOWDOWN:g}, e.g. 1.1"
        )
    return value


def positive_float(text: str) -> float:
    """A number > 0 (seconds, sizes)."""
    value = _number(text, "expected a number > 0")
    if value <= 0.0:
        raise argparse.ArgumentTypeError(f"{text} is not positive: use a number > 0")
    return value


def non_negative_float(text: str) -> float:
    """A number >= 0 (a grace period that may be none)."""
    value = _number(text, "expected a number >= 0")
    if value < 0.0:
        raise argparse.ArgumentTypeError(f"{text} is negative: use a number >= 0")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1 (counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (expected 1 or more)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is below 1: use a whole number >= 1")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (e.g. a count where 0 means "all")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; use 0 or more")
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def log_level(text: str) -> str:
    """A logging level name, any case: DEBUG, INFO, WARNING or ERROR."""
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"unknown log level {text!r}; use one of {', '.join(LOG_LEVELS)}")
    return level


def port_or_off(text: str) -> int:
    """A TCP port 0..65535 (0: any free port), or -1 for off."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535, or -1 for off)") from None
    if not -1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port number: use 0 to 65535, or -1 for off")
    return value


def listen_address(text: str) -> str:
    """A ``HOST:PORT`` to listen on (``serve``, ``dashboard``; checked by :func:`powerbandit.addresses.parse_listen`)."""
    try:
        parse_listen(text)
    except ListenAddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


_GRPC_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:", "xds:")


def server_address(text: str) -> str:
    """A server to call: ``HOST:PORT`` (``[IPv6]:PORT`` too) or a gRPC target URI (``unix:/path``, ``dns:///host:port``).

    >>> server_address("10.0.0.7:50051")
    '10.0.0.7:50051'
    """
    address = text.strip()
    if address.startswith(_GRPC_SCHEMES):
        if address.partition(":")[2]:
            return address
        raise argparse.ArgumentTypeError(f"{text!r} names a scheme but no target, e.g. unix:/run/powerbandit.sock")
    try:
        host, port = split_host_port(address)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT ({exc}), e.g. 127.0.0.1:50051") from None
    if not host or any(c.isspace() for c in host):
        raise argparse.ArgumentTypeError(f"{text!r} has no valid host: use HOST:PORT, e.g. 127.0.0.1:50051")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: the port {port!r} is not a number from 1 to 65535")
    return address
