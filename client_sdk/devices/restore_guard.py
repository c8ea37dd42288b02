"""The restore guard: put power limits back at interpreter exit and on SIGTERM/SIGINT.

:class:`RestoreGuard` calls a ``restore`` callable at exit and when SIGTERM or SIGINT arrives, then
hands the signal on to the handler that was installed before (or performs the default action).
Handlers are installed only while armed, only from the main thread, never over ``SIG_IGN``. A
``kill -9`` cannot be caught: that is what the node agent is for (it watches its holders).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["RestoreGuard", "chain_signal"]

_LOG = logging.getLogger("powerbandit.sdk.nvml")


def chain_signal(signum: int, previous: Any, frame: FrameType | None) -> None:
    """Hand a signal to the handler that was installed before ours."""
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    elif signum == signal.SIGINT:
        raise KeyboardInterrupt
    else:
        # Default action (terminate): re-deliver the signal with the default disposition.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


class RestoreGuard:
    """Runs ``restore`` at exit and on SIGTERM/SIGINT while armed (see the module docstring)."""

    def __init__(self, restore: Callable[[], None]) -> None:
        self._restore = restore
        self._previous_handlers: dict[int, Any] = {}
        self._atexit_callback: Callable[[], None] | None = None

    def arm(self) -> None:
        """Install the atexit hook and (main thread only) the signal handlers; idempotent."""
        if self._atexit_callback is None:
            # A strong reference on purpose: while a limit is changed, the owner must live to restore it.
            self._atexit_callback = self._restore_at_exit
            atexit.register(self._atexit_callback)
        if self._previous_handlers or threading.current_thread() is not threading.main_thread():
            if not self._previous_handlers:
                _LOG.debug("Not in the main thread: no signal handlers; the limit is restored at exit/close().")
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                previous = signal.getsignal(signum)
                if previous == signal.SIG_IGN:
                    continue  # the process ignores it: it cannot end the run
                signal.signal(signum, self.on_signal)
            except (ValueError, OSError):  # not the main interpreter, or an unusual platform
                continue
            self._previous_handlers[signum] = previous

    def disarm(self) -> None:
        """Remove the atexit hook and (main thread only) put the previous signal handlers back."""
        if self._atexit_callback is not None:
            atexit.unregister(self._atexit_callback)
            self._atexit_callback = None
        if not self._previous_handlers or threading.current_thread() is not threading.main_thread():
            return  # our handlers stay; they restore (a no-op now) and chain
        for signum, previous in list(self._previous_handlers.items()):
            try:
                if signal.getsignal(signum) == self.on_signal:
                    signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                continue
        self._previous_handlers.clear()

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """The installed handler: restore, then chain to the previous handler."""
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        _LOG.info("Signal %d: restoring the GPU power limit before handing the signal on.", signum)
        try:
            self._restore()
        finally:
            chain_signal(signum, previous, frame)

    def _restore_at_exit(self) -> None:
        self._atexit_callback = None  # atexit is running it now
        try:
            self._restore()
        except Exception:  # pragma: no cover - never let exit fail on this
            _LOG.exception("Restoring the GPU power limit at exit failed")
