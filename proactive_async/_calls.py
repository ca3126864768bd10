"""The hand-off of a call from a calling thread to the one event loop of ``Client``.

A call goes over by a call queue of our own (``Calls``) rather than anyio's ``portal.call``
(two cross-thread hand-offs: one to spawn the task, one for its result) or
``asyncio.run_coroutine_threadsafe`` (a ``concurrent.futures.Future`` with its condition and
callbacks, and a second loop iteration to pass the result on): the caller appends the call
and wakes the loop only if no drain is pending, so busy threads share one wake-up; the loop
starts one task per call, which hands back the outcome and releases a lock the caller
blocks on (``benchmarks/bench_sync.py`` measures the three). A caller interrupted while it
waits (Ctrl-C) cancels its call rather than leaving it running.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, Final, Generic, TypeVar

from ._errors import ClientStateError

__all__ = ["EXITING", "Call", "Calls", "wait"]

T = TypeVar("T")

EXITING: Final = "the interpreter is exiting: the event loop of Client is stopped"
_STOPPED: Final = "the call was cancelled: the event loop of Client stopped (interpreter exit)"


class Call(Generic[T]):
    """One call handed to the loop: its coroutine, then its outcome.

    ``done`` is a lock taken when the call is made and released when its task has ended:
    the caller blocks on it (a bare lock, interruptible by Ctrl-C in the main thread).
    """

    __slots__ = ("cancelled", "coro", "done", "ended", "error", "result", "task")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self.coro = coro
        self.done = threading.Lock()
        self.done.acquire()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        self.cancelled = False  # its task was cancelled, or the caller gave it up first
        self.ended = False  # set just before ``done`` is released

    def end(self) -> None:
        self.ended = True
        self.done.release()

    def fail(self, error: BaseException) -> None:
        """End a call that never started (its coroutine is closed unrun)."""
        self.coro.close()
        self.error = error
        self.end()

    def cancel(self) -> None:
        """On the loop: the caller gave up (Ctrl-C); cancel the task, or never start it."""
        if self.task is not None:
            self.task.cancel()
        elif not self.cancelled:
            self.cancelled = True
            self.coro.close()
            self.end()


async def run_call(call: Call[Any]) -> None:
    """A call's task: the outcome goes back without a second trip through the loop."""
    try:
        call.result = await call.coro
    except asyncio.CancelledError:
        call.cancelled = True
        raise
    except BaseException as exc:
        call.error = exc
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt or SystemExit on the loop: the loop's to handle
    finally:
        call.end()


class Calls:
    """The hand-off from calling threads to one loop: a queue drained on the loop.

    A caller wakes the loop (``call_soon_threadsafe``: a write to its self-pipe) only when no
    drain is pending yet, so threads calling while the loop is busy share one wake-up.
    """

    __slots__ = ("_drain_pending", "_lock", "_loop", "_pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: collections.deque[Call[Any]] = collections.deque()
        self._drain_pending = False

    def submit(self, coro: Coroutine[Any, Any, T]) -> Call[T]:
        """Hand ``coro`` to the loop; a loop stopped meanwhile (interpreter exit) is our error."""
        call = Call(coro)
        with self._lock:
            self._pending.append(call)
            if self._drain_pending:
                return call
            self._drain_pending = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: fail every call waiting for a drain
            with self._lock:
                stranded = list(self._pending)
                self._pending.clear()
                self._drain_pending = False
            for waiting in stranded:
                waiting.fail(ClientStateError(EXITING))
        return call

    def cancel(self, call: Call[Any]) -> None:
        """From the caller: stop ``call`` (after the drain that starts it, if one is pending)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs any more
            self._loop.call_soon_threadsafe(call.cancel)

    def _drain(self) -> None:
        with self._lock:
            calls = list(self._pending)
            self._pending.clear()
            self._drain_pending = False
        create_task = self._loop.create_task
        for call in calls:
            if not call.cancelled:
                call.task = create_task(run_call(call))


def wait(call: Call[T], calls: Calls, *, wait_out: bool = False) -> T:
    """The result of ``call``; interrupted (Ctrl-C), it is cancelled, not left running.

    With ``wait_out``, the interrupted caller waits for the call's task to end, so that its
    own wind-down (a campaign's grace period) completes first.
    """
    try:
        call.done.acquire()
    except BaseException:
        calls.cancel(call)
        if wait_out and not call.ended:  # (ended: the interrupt came just after the answer)
            call.done.acquire()
        raise
    error = call.error
    if error is not None:
        call.error = None  # no cycle through the traceback
        try:
            raise error
        finally:
            del error
    if call.cancelled:
        raise ClientStateError(_STOPPED)
    return call.result  # type: ignore[return-value]  # set: the call ended without error
