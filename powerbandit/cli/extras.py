"""Which commands need the ``server`` extra, and the one-line message when it is missing.

``pip install powerbandit`` is the training-side SDK; the server, the simulator, the demo and the
plots need ``pip install 'powerbandit[server]'`` (numpy, matplotlib, grpcio-reflection,
prometheus-client).
"""

from __future__ import annotations

import importlib

SERVER_EXTRA_MODULES = frozenset({"numpy", "matplotlib", "grpc_reflection", "prometheus_client"})
"""Top-level modules that only the ``server`` extra installs."""

SERVER_EXTRA_INSTALL = "pip install 'powerbandit[server]'"


def is_missing_server_extra(exc: ImportError) -> bool:
    """Whether ``exc`` says that a module of the ``server`` extra is not installed."""
    name = getattr(exc, "name", None) or ""
    return isinstance(exc, ModuleNotFoundError) and name.split(".")[0] in SERVER_EXTRA_MODULES


def missing_server_extra_reason(command: str, exc: ImportError) -> str:
    """Which extra to install for ``command`` (``exc``: the failed import), without the ``error:``."""
    module = (exc.name or "a module").split(".")[0]
    return f"`powerbandit {command}` needs the server extra ({module} is not installed); install it with: {SERVER_EXTRA_INSTALL}"


def missing_server_extra_message(command: str, exc: ImportError) -> str:
    """``error: ...`` line telling the user which extra to install for ``command``."""
    return f"error: {missing_server_extra_reason(command, exc)}"


def require_server_extra(command: str, *modules: str) -> None:
    """Import ``modules`` (of the server extra) now, before ``command`` contacts anything.

    Raises :class:`~powerbandit.cli.errors.UserError` (exit status 1, as every missing-extra
    message) naming ``command`` and the extra when one of them is not installed.
    """
    from powerbandit.cli.errors import UserError

    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not is_missing_server_extra(exc):
                raise
            raise UserError(missing_server_extra_reason(command, exc)) from None
