"""``powerbandit.addresses``: splitting ``HOST:PORT`` and checking listen addresses, standard library
only, with one set of messages for the server (``InvalidArgumentError``), the ``--listen`` argument
type of ``serve`` and ``dashboard`` (a usage error) and the module itself (``ListenAddressError``).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import pytest

from optimizer_server.errors import InvalidArgumentError, OptimizerError
from optimizer_server.server import parse_listen as server_parse_listen
from powerbandit import addresses
from powerbandit.addresses import (
    LISTEN_FORM,
    AddressError,
    ListenAddress,
    ListenAddressError,
    parse_listen,
    split_host_port,
)
from powerbandit.cli.argtypes import listen_address

BAD = {  # address: (what is wrong, whether the message ends with the form to use)
    "127.0.0.1:99999": ("the port must be a number from 0 to 65535", True),
    "127.0.0.1:-1": ("the port must be a number from 0 to 65535", True),
    "127.0.0.1:http": ("the port must be a number from 0 to 65535", True),
    "127.0.0.1:": ("the port must be a number from 0 to 65535", True),
    "127.0.0.1": ("no port", True),
    ":50051": ("no host (0.0.0.0 or [::] listens on every interface)", True),
    "::1:50051": ("write an IPv6 address in brackets", True),
    "[::1]": ("an IPv6 address needs a port after the brackets", True),
    "nohost.invalid:50051": ("host 'nohost.invalid' does not resolve (", False),
}


@pytest.mark.parametrize("address", sorted(BAD))
def test_a_bad_listen_address_is_named_with_what_is_wrong(address: str) -> None:
    with pytest.raises(ListenAddressError) as raised:
        parse_listen(address)
    message = str(raised.value)
    problem, with_form = BAD[address]
    assert message.startswith(f"invalid listen address {address!r}: {problem}")
    if with_form:
        assert message.endswith(f"; use {LISTEN_FORM}")
    else:
        assert message.endswith("; use an IP address or a resolvable name")


@pytest.mark.parametrize("address", sorted(BAD))
def test_the_server_and_the_argument_type_say_the_same_words(address: str) -> None:
    with pytest.raises(ListenAddressError) as plain:
        parse_listen(address)
    with pytest.raises(InvalidArgumentError) as server:
        server_parse_listen(address)
    with pytest.raises(argparse.ArgumentTypeError) as argument:
        listen_address(address)
    assert str(server.value) == str(argument.value) == str(plain.value)


def test_the_error_is_a_value_error_not_the_servers() -> None:
    assert issubclass(ListenAddressError, ValueError)
    assert not issubclass(ListenAddressError, OptimizerError)


def test_good_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:0") == ListenAddress("127.0.0.1", 0, ("127.0.0.1",))
    assert parse_listen(" 127.0.0.1:65535 ").port == 65535
    v6 = parse_listen("[::1]:50051")
    assert (v6.host, v6.port, v6.with_port(1), v6.is_loopback) == ("::1", 50051, "[::1]:1", True)
    assert parse_listen("localhost:8080").is_loopback
    wildcard = parse_listen("0.0.0.0:8080")
    assert not wildcard.is_loopback and wildcard.with_port(9) == "0.0.0.0:9"
    assert listen_address("127.0.0.1:0") == "127.0.0.1:0"
    assert server_parse_listen("[::1]:0") == parse_listen("[::1]:0")


@pytest.mark.parametrize(
    ("text", "parts"),
    [("127.0.0.1:50051", ("127.0.0.1", "50051")), ("[::1]:1", ("::1", "1")), ("host:", ("host", "")),
     (":9", ("", "9")), (" h:1 ", ("h", "1"))],
)  # fmt: skip
def test_split_host_port(text: str, parts: tuple[str, str]) -> None:
    assert split_host_port(text) == parts


@pytest.mark.parametrize(
    ("text", "why"),
    [("127.0.0.1", "no port"), ("::1:5", "write an IPv6 address in brackets"),
     ("[::1]", "an IPv6 address needs a port after the brackets")],
)  # fmt: skip
def test_split_host_port_says_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(AddressError, match=f"^{why}$".replace("[", r"\[")):
        split_host_port(text)


def test_the_module_imports_the_standard_library_only() -> None:
    """The plain install's commands (``powerbandit dashboard``) check their addresses with it."""
    assert addresses.__file__ is not None
    tree = ast.parse(Path(addresses.__file__).read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported and imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
