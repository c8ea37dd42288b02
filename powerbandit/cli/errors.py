"""How the command line answers a mistake: one ``error: ...`` line on stderr and a non-zero exit.

Commands raise :class:`UserError` (or let a domain error through: a server's refusal, a bad
database URL, a malformed trace file, a file that cannot be read or written); :func:`run_command`,
called once by each entry point, turns any of them into that one line. Nothing a user can cause by
mistyping a flag or pointing at the wrong file ends in a traceback. Argument values are checked
earlier still, by the argparse types in :mod:`powerbandit.cli.argtypes`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

#: Exit code of a command whose standard output was closed early (``powerbandit jobs list | head -1``),
#: as for a process ended by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141
#: Exit code of a command interrupted with Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake the user can correct; printed as ``error: <message>``, exit code ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types that are a user's mistake or the world's state, never a bug of ours.

    ``OSError`` covers files that cannot be read or written and addresses that cannot be bound; the
    others are the optimizer's domain errors, the SDK's call errors and the trace reader's format
    errors, each of which carries a message naming what to fix.
    """
    from client_sdk.client import OptimizerClientError
    from optimizer_server.errors import OptimizerError

    types: tuple[type[BaseException], ...] = (UserError, OptimizerError, OptimizerClientError, OSError)
    try:  # the simulator needs the server extra; without it no trace is ever read
        from simulations.traces import TraceError
    except ImportError:
        return types
    return (*types, TraceError)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout has no file descriptor (e.g. replaced in tests)
        pass


def run_command(command: Callable[[], int]) -> int:
    """Run ``command`` and return its exit code; a user error becomes one ``error:`` line and code 1.

    A closed standard output (the reader of a pipe went away) ends the command quietly with
    :data:`EXIT_BROKEN_PIPE`, the way Unix tools end on SIGPIPE; Ctrl-C ends it with
    :data:`EXIT_INTERRUPTED` and no traceback.
    """
    try:
        code = command()
        sys.stdout.flush()  # a broken pipe shows up here for output still buffered
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except user_error_types() as exc:
        print(f"error: {_message(exc)}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, UserError) else 1


def _message(exc: BaseException) -> str:
    """The error's own words; for ``OSError`` with a file name, the reason and the file."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename and type(exc).__str__ is OSError.__str__:
        return f"{exc.strerror}: {exc.filename}"
    hint, code = getattr(exc, "hint", ""), getattr(exc, "code", None)
    if isinstance(hint, str) and hint and code is not None:  # a call refused: its status and reason, not the RPC
        return f"{code.name}: {hint}"
    return str(exc) or type(exc).__name__
