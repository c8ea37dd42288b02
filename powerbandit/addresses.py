"""Splitting ``HOST:PORT`` addresses (``[IPv6]:PORT`` too) and checking listen addresses, standard library only.

One rule for the listen addresses (:func:`parse_listen`: ``serve --listen``, ``dashboard --listen``,
:func:`optimizer_server.server.parse_listen`) and the clients' ``--server``
(:func:`powerbandit.cli.argtypes.server_address`); each caller then checks the host and port range
it needs and words its own message. Nothing here needs the server extra, so the commands of the
plain install (``powerbandit dashboard``) can check their addresses too.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass


class AddressError(ValueError):
    """What is wrong with an address's form, in a few words (the caller names the address)."""


def split_host_port(text: str) -> tuple[str, str]:
    """``(host, port text)`` of ``HOST:PORT`` or ``[IPv6]:PORT`` (the host without its brackets).

    >>> split_host_port("[::1]:50051")
    ('::1', '50051')

    Raises :class:`AddressError` when there is no port or an IPv6 host is not in brackets; the
    host and the port text are not checked further.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise AddressError("an IPv6 address needs a port after the brackets")
        return host, port
    host, sep, port = text.rpartition(":")
    if not sep:
        raise AddressError("no port")
    if ":" in host:
        raise AddressError("write an IPv6 address in brackets")
    return host, port


LISTEN_FORM = "HOST:PORT, e.g. 127.0.0.1:50051, 0.0.0.0:50051 or [::1]:50051 (port 0: any free port)"


class ListenAddressError(ValueError):
    """A listen address that cannot be used; the message names the address, what is wrong and what to write."""


@dataclass(frozen=True)
class ListenAddress:
    """A checked listen address: ``host`` (IPv6 without brackets), ``port`` (0: any free port)."""

    host: str
    port: int
    addresses: tuple[str, ...]  # what ``host`` resolves to

    @property
    def is_loopback(self) -> bool:
        """Whether every address ``host`` resolves to is a loopback address."""
        return all(ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in self.addresses)

    def with_port(self, port: int) -> str:
        """``host:port`` as gRPC and clients write it (IPv6 in brackets)."""
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"


def parse_listen(listen: str) -> ListenAddress:
    """Check a listen address ``HOST:PORT`` (what ``serve --listen`` and ``dashboard --listen`` take).

    The port must be 0 (any free port) to 65535; the host an IP address or a name that resolves.
    Raises :class:`ListenAddressError` naming the address and what is wrong with it (the server's
    :func:`optimizer_server.server.parse_listen` raises the same message as ``InvalidArgumentError``).

    >>> parse_listen("127.0.0.1:0")
    ListenAddress(host='127.0.0.1', port=0, addresses=('127.0.0.1',))
    """
    problem = f"invalid listen address {listen!r}"
    try:
        host, port_text = split_host_port(listen)
    except AddressError as exc:
        raise ListenAddressError(f"{problem}: {exc}; use {LISTEN_FORM}") from None
    if not host:
        raise ListenAddressError(
            f"{problem}: no host (0.0.0.0 or [::] listens on every interface); use {LISTEN_FORM}"
        )
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ListenAddressError(f"{problem}: the port must be a number from 0 to 65535; use {LISTEN_FORM}")
    port = int(port_text)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ListenAddressError(
            f"{problem}: host {host!r} does not resolve ({exc}); use an IP address or a resolvable name"
        ) from None
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    return ListenAddress(host, port, addresses)
