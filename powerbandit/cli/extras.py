"""Which commands need the ``server`` extra, and the one-line message when it is missing.

``pip install powerbandit`` is the training-side SDK; the server, the simulator, the demo and the
plots need ``pip install 'powerbandit[server]'`` (numpy, matplotlib, grpcio-reflection,
prometheus-client).
"""

from __future__ import annotations

SERVER_EXTRA_MODULES = frozenset({"numpy", "matplotlib", "grpc_reflection", "prometheus_client"})
"""Top-level modules that only the ``server`` extra installs."""

SERVER_EXTRA_INSTALL = "pip install 'powerbandit[server]'"


def is_missing_server_extra(exc: ImportError) -> bool:
    """Whether ``exc`` says that a module of the ``server`` extra is not installed."""
    name = getattr(exc, "name", None) or ""
    return isinstance(exc, ModuleNotFoundError) and name.split(".")[0] in SERVER_EXTRA_MODULES


def missing_server_extra_message(command: str, exc: ImportError) -> str:
    """``error: ...`` line telling the user which extra to install for ``command``."""
    return (
        f"error: `powerbandit {command}` needs the server extra ({exc.name} is not installed); "
        f"install it with: {SERVER_EXTRA_INSTALL}"
    )
