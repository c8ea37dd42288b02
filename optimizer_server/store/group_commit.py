"""Group commit on an event loop: store calls run on the loop's thread, their COMMIT on another.

Used by the SQLite store (see :meth:`SqliteStore.submit
<optimizer_server.store.sqlite.SqliteStore.submit>`), through the small public interface
:class:`BatchTarget`: open a batch transaction, end it. Which thread runs what:

* the **event loop's thread** runs every submitted call, inside the open batch transaction (the
  store gives each call its own savepoint), and delivers the results;
* the **committer thread** (one per batcher) runs only :meth:`BatchTarget.end_batch`: the COMMIT
  and its fsync, while the loop goes on serving.

The first call of a batch opens the transaction and schedules the COMMIT for the end of the
current loop iteration, so every call that runs in that iteration joins the batch. Calls that
arrive while a batch is being committed wait for it and then form the next batch. A caller gets
its result only once its batch is on disk. Running the calls on the loop's own thread avoids
handing every call to another thread and back, which costs more than the calls themselves.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

_Pending = tuple["asyncio.Future[Any]", bool, Any]  # (caller's future, succeeded, result or exception)


class BatchTarget(Protocol):
    """What the batcher needs of a store: one batch transaction at a time."""

    def begin_batch(self) -> None:
        """Take the writer and open the batch transaction (on the loop's thread).

        Raises the error callers should get (e.g. ``UnavailableError``) when it cannot, having
        released the writer again.
        """

    def end_batch(self) -> Exception | None:
        """COMMIT the batch transaction (ROLLBACK if that fails) and release the writer.

        Runs on the committer thread. Returns the error every call of the batch gets when the
        COMMIT failed, else ``None``.
        """


class GroupCommitBatcher:
    """Batches the calls submitted on one event loop into shared transactions of ``target``."""

    def __init__(self, target: BatchTarget, loop: asyncio.AbstractEventLoop) -> None:
        self.target = target
        self.loop = loop
        self.loop_thread_id = threading.get_ident()  # made by the first submit, on the loop's thread
        self._open = False  # a batch transaction is open
        self._pending: list[_Pending] = []
        self._committing: asyncio.Future[None] | None = None
        self._commits: queue.SimpleQueue[tuple[list[_Pending], asyncio.Future[None]] | None] = queue.SimpleQueue()
        self._committer = threading.Thread(target=self._commit_batches, name="powerbandit-sqlite-commit", daemon=True)
        self._committer.start()

    def on_loop_thread(self) -> bool:
        """Whether the caller runs on the event loop's thread."""
        return threading.get_ident() == self.loop_thread_id

    def in_batch(self) -> bool:
        """True while a call of the open batch runs (on the loop's thread)."""
        return self._open and self.on_loop_thread()

    async def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` now, on the loop's thread, in the open batch (opening one if
        needed); return its result, or raise its exception, once the batch is committed."""
        while self._committing is not None:
            await self._committing  # the previous batch is being made durable
        if not self._open:
            self.target.begin_batch()
            self._open = True
            self.loop.call_soon(self._hand_over)
        future: asyncio.Future[T] = self.loop.create_future()
        try:
            self._pending.append((future, True, fn(*args, **kwargs)))
        except Exception as exc:  # delivered to this caller only, after the batch commits
            self._pending.append((future, False, exc))
        return await future

    def _hand_over(self) -> None:
        """End of the loop iteration: hand the open batch to the committer thread."""
        if not self._open:  # already committed by close()
            return
        batch, self._pending = self._pending, []
        self._open = False
        done: asyncio.Future[None] = self.loop.create_future()
        self._committing = done
        self._commits.put((batch, done))

    def _commit_batches(self) -> None:
        """The committer thread: end each batch handed over, then deliver it on the loop."""
        while (item := self._commits.get()) is not None:
            batch, done = item
            error = self.target.end_batch()
            self.loop.call_soon_threadsafe(self._deliver, batch, error, done)

    def _deliver(self, batch: list[_Pending], error: Exception | None, done: asyncio.Future[None]) -> None:
        """On the loop's thread: wake the batch's callers, then let the next batch form."""
        for future, ok, value in batch:
            if future.cancelled():
                continue
            if error is not None:
                future.set_exception(error)
            elif ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        self._committing = None
        done.set_result(None)

    def close(self) -> None:
        """Stop the committer once it has committed what it was handed; commit a batch still open.

        Called by the store's ``close``, on the loop's thread or another one.
        """
        self._commits.put(None)
        self._committer.join(timeout=10)
        if self._open:  # closed from the loop before the batch's hand-over callback ran
            self._open = False
            batch, self._pending = self._pending, []
            error = self.target.end_batch()
            if self.on_loop_thread() and not self.loop.is_closed():
                done: asyncio.Future[None] = self.loop.create_future()
                self._deliver(batch, error, done)
