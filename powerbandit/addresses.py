"""Splitting ``HOST:PORT`` addresses (``[IPv6]:PORT`` too), standard library only.

One rule for the server's ``--listen`` (:func:`optimizer_server.server.parse_listen`) and the
clients' ``--server`` (:func:`powerbandit.cli.argtypes.server_address`); each caller then checks the
host and port range it needs and words its own message.
"""

from __future__ import annotations


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
