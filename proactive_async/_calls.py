"""The event loop of ``Client``, driven by the threads that call it (leader/follower).

No thread is dedicated to the loop. A thread that calls while nobody drives becomes the
driver: it runs the loop itself (``run_forever``) until its own call ends, so a program
calling from one thread pays no hand-off between threads at all. A thread that calls while
another drives is a follower: it queues its call (``call_soon_threadsafe``, one wake-up
shared by busy threads) and blocks on a lock of its own. A driver whose call ends while
other work is unfinished (followers' calls, or tasks no caller waits for: a collected
client's close, a worker's sweep started by ``Client.run``) hands the loop to a keeper
thread, which drives it until no task is left, so that a call never sits in a loop nobody
runs; only if no thread can be started is the role handed to a waiting follower instead.
Who drives is decided under one lock.

Why (in-process A/B against the loop thread of its own, fast local server, one core, noisy
shared machine): one thread, one call in flight, 1.25x AsyncClient's time a call -> 1.15x
(a no-op call 57 us -> 23 us); 8 threads, 0.80x of 8 tasks either way. Handing the role
from caller to caller instead of to a keeper cost 8 threads 0.74x (each hand-over leaves
the loop unrun until the woken thread gets the GIL), so contention falls back to a loop
thread (``benchmarks/bench_sync.py``).

With no thread watching the loop between drives, a server's FIN on an idle pooled
connection is seen only at the next drive. A drive that starts with I/O pending therefore
first lets the loop run ``SETTLE`` iterations before its call starts, so that aiohttp never
hands the call a connection already closed by the server (which fails after the request is
written: an ambiguous outcome). A Ctrl-C while the main thread drives cancels its call and
raises once that call has ended, as ``asyncio.Runner`` does; a second one raises at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import selectors
import signal
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any, Final, Generic, TypeVar

from ._errors import ClientStateError

try:  # signal's own functions without its enum conversions: 0.3 us a call, not 5
    _signals: Any = importlib.import_module("_signal")
except ImportError:  # pragma: no cover - an interpreter without it
    _signals = signal

__all__ = ["EXITING", "SETTLE", "Call", "SharedLoop"]

T = TypeVar("T")

EXITING: Final = "the interpreter is exiting: the event loop of Client is stopped"
_STOPPED: Final = "the call was cancelled: the event loop of Client stopped (interpreter exit)"

SETTLE: Final = 3
"""Loop iterations a drive runs before its call when I/O is pending: the iteration whose
select sees a peer's FIN runs ``_read_ready`` (EOF: the transport closes, so aiohttp no
longer pools it), the next runs ``connection_lost``, and over TLS one more passes it from
the SSL protocol to aiohttp's."""
_SIGINT: Final = int(signal.SIGINT)
_IDLE_CHECK: Final = 0.1
"""Seconds between the keeper's looks for tasks left: it stops this long after the last."""


class Call(Generic[T]):
    """One call: its coroutine, then its outcome.

    ``wake`` is a lock taken when the call is made; a follower blocks on it (a bare lock,
    interruptible by Ctrl-C in the main thread). It is released once: when the call has
    ended (``ended``), or else when the follower is made the driver.
    """

    __slots__ = ("cancelled", "coro", "ended", "error", "result", "task", "wake")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self.coro = coro
        self.wake = threading.Lock()
        self.wake.acquire()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        self.cancelled = False  # its task was cancelled, or it was given up before it started
        self.ended = False

    def cancel(self, end: Callable[[Call[Any]], None]) -> None:
        """On the loop: the caller gave up; cancel the task, or never start it."""
        if self.task is None:
            self._close_unrun(end)
        elif self.task.cancel():
            # A task cancelled before its first step never runs _run_call's body at all.
            self.task.add_done_callback(lambda _: self._close_unrun(end))

    def _close_unrun(self, end: Callable[[Call[Any]], None]) -> None:
        if not self.cancelled and not self.ended:
            self.cancelled = True
            self.coro.close()
            end(self)

    def outcome(self) -> T:
        error = self.error
        if error is not None:
            self.error = None  # no cycle through the traceback
            try:
                raise error
            finally:
                del error
        if self.cancelled:
            raise ClientStateError(_STOPPED)
        return self.result  # type: ignore[return-value]  # set: the call ended without error


async def _run_call(call: Call[Any], end: Callable[[Call[Any]], None], settle: int) -> None:
    """A call's task; ``settle`` zero-timeout iterations first (see SETTLE)."""
    try:
        try:
            for _ in range(settle):
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            call.coro.close()  # never started: no "never awaited" warning
            raise
        call.result = await call.coro
    except asyncio.CancelledError:
        call.cancelled = True
        raise
    except BaseException as exc:  # KeyboardInterrupt or SystemExit too: its caller's
        call.error = exc
    finally:
        end(call)


class _Interrupts:
    """The SIGINT handler while the main thread drives: the first cancels the call (on the
    loop, woken), the next raises KeyboardInterrupt at once; none raises while the driver
    hands its role on (``quiet``)."""

    def __init__(self, shared: SharedLoop, call: Call[Any], count: int) -> None:
        self.shared = shared
        self.call = call
        self.count = count
        self.quiet = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1 or self.quiet:
            self.shared.cancel(self.call)
            return
        raise KeyboardInterrupt


class SharedLoop:
    """An event loop run by the threads that call it: each call drives it or follows.

    Usage::

        shared = SharedLoop(asyncio.new_event_loop())
        answer = shared.run(coroutine)   # from any thread but one running an event loop
    """

    __slots__ = (
        "_closed",
        "_drain_pending",
        "_driver",
        "_lock",
        "_pending",
        "_tasks",
        "_waiting",
        "loop",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._driver: Call[Any] | None = None  # the call whose thread drives, if any
        self._pending: collections.deque[Call[Any]] = collections.deque()  # to start
        self._waiting: dict[Call[Any], None] = {}  # followers' calls not ended: successors
        self._drain_pending = False
        self._closed = False
        # This loop's tasks, kept by its task factory: asyncio.all_tasks() walks every task
        # of the process (of every loop), which cost a call 4.8 ms with 20k tasks elsewhere.
        self._tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        loop.set_task_factory(self._new_task)

    def _new_task(
        self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any
    ) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        self._tasks.add(task)
        return task

    def tasks_left(self, but: asyncio.Task[Any] | None = None) -> bool:
        """Whether a task of this loop (other than ``but``) has not finished."""
        return any(task is not but and not task.done() for task in list(self._tasks))

    def run(self, coro: Coroutine[Any, Any, T], *, wait_out: bool = False, within: float = -1) -> T:
        """Run ``coro`` on the loop and return its result, driving the loop if nobody does.

        Interrupted (Ctrl-C), the call is cancelled, not left running; with ``wait_out`` the
        caller waits for it to end (a campaign's grace period). ``within``: seconds a
        follower waits at most (interpreter exit), then gives the call up.
        """
        call = Call(coro)
        with self._lock:
            if self._closed:
                call.coro.close()
                raise ClientStateError(EXITING)
            lead = self._driver is None
            wake = False
            if lead:
                self._driver = call
            else:
                self._pending.append(call)
                self._waiting[call] = None
                wake = not self._drain_pending
                self._drain_pending = True
        if lead:
            return self._lead(call)
        if wake:
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: nothing will run this call
                self._give_up(call)
                call.coro.close()
                raise ClientStateError(EXITING) from None
        return self._follow(call, wait_out, within)

    def _lead(self, call: Call[T]) -> T:
        try:
            settle = SETTLE if self._io_pending() else 0
            call.task = self.loop.create_task(_run_call(call, self._end, settle))
            interrupted = self._drive(call, 0)
        except BaseException:
            self._give_up(call)
            raise
        return _outcome(call, interrupted)

    def _follow(self, call: Call[T], wait_out: bool, within: float) -> T:
        interrupted = 0
        deadline = time.monotonic() + within if within >= 0 else None
        try:
            while True:
                try:
                    timeout = -1 if deadline is None else max(0.0, deadline - time.monotonic())
                    if not call.wake.acquire(timeout=timeout):
                        self._give_up(call)
                        raise ClientStateError(_STOPPED)
                except KeyboardInterrupt:
                    if interrupted or not wait_out:
                        raise
                    interrupted = 1
                    self.cancel(call)
                    continue
                if call.ended:
                    break
                # Made the driver: this thread runs the loop until its call ends.
                interrupted = self._drive(call, interrupted)
                break
        except BaseException:
            self._give_up(call)
            raise
        return _outcome(call, interrupted)

    def _drive(self, call: Call[Any], interrupted: int) -> int:
        """Run the loop until ``call`` ends, then hand the role on; the Ctrl-Cs seen."""
        handler: _Interrupts | None = None
        try:
            if (
                threading.current_thread() is threading.main_thread()
                and _signals.getsignal(_SIGINT) is signal.default_int_handler
            ):
                handler = _Interrupts(self, call, interrupted)
                try:
                    _signals.signal(_SIGINT, handler)
                except ValueError:  # signals unsupported here (an embedded interpreter)
                    handler = None
            while not call.ended:
                self.loop.run_forever()
        finally:
            if handler is not None:
                handler.quiet = True
            self._leave(call)
            if handler is not None:
                interrupted = handler.count
                if _signals.getsignal(_SIGINT) is handler:
                    _signals.signal(_SIGINT, signal.default_int_handler)
        return interrupted

    def _leave(self, call: Call[Any], *, keep: bool = True) -> None:
        """The driver's call has ended (or it gives up): the role to a follower whose call is
        unfinished; else, if tasks are left on the loop, to a keeper thread; else to nobody."""
        keeper: Call[Any] | None = None
        with self._lock:
            if self._driver is not call:
                return
            successor = next((c for c in self._waiting if c is not call), None)
            if keep and (successor is not None or self.tasks_left()):
                # Followers waiting: a keeper rather than one of them (handing
                # the role from caller to caller costs 8 threads 0.74x of 8 tasks, a
                # keeper 0.83x, as a loop thread of its own did).
                successor = keeper = Call(_until_idle(self))
            self._driver = successor
        if keeper is None:
            if successor is not None:
                successor.wake.release()
            return
        keeper.task = self.loop.create_task(_run_call(keeper, self._end, 0))
        name = "proactive-async-loop"
        try:
            threading.Thread(target=self._keep, args=(keeper,), name=name, daemon=True).start()
        except RuntimeError:  # no new thread (interpreter shutdown): the next drive runs them
            keeper.task.cancel()
            keeper.coro.close()
            self._leave(keeper, keep=False)

    def _keep(self, keeper: Call[None]) -> None:
        """The keeper thread: drives while tasks no caller waits for are left."""
        self._drive(keeper, 0)

    def _give_up(self, call: Call[Any]) -> None:
        """The caller leaves before its call ended: never make it the driver again, cancel
        its call, and hand the role on if it held it."""
        with self._lock:
            self._waiting.pop(call, None)
        if not call.ended:
            self.cancel(call)
        self._leave(call)

    def cancel(self, call: Call[Any]) -> None:
        """From any thread: cancel ``call`` on the loop (after the drain that starts it)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs any more
            self.loop.call_soon_threadsafe(call.cancel, self._end)

    def _end(self, call: Call[Any]) -> None:
        """On the loop: ``call`` has ended; stop the loop if its thread drives, else wake it."""
        with self._lock:
            call.ended = True
            self._waiting.pop(call, None)
            driving = self._driver is call
        if driving:
            self.loop.stop()
        else:
            call.wake.release()

    def _drain(self) -> None:
        with self._lock:
            calls = list(self._pending)
            self._pending.clear()
            self._drain_pending = False
        create_task = self.loop.create_task
        for call in calls:
            if not call.cancelled:
                call.task = create_task(_run_call(call, self._end, 0))

    def _io_pending(self) -> bool:
        """Whether the loop has I/O to see before a call starts (it was not driven since)."""
        selector = getattr(self.loop, "_selector", None)  # asyncio's selector event loops
        if not isinstance(selector, selectors.BaseSelector):
            return True  # cannot tell: settle
        return bool(selector.select(0))  # level-triggered: the loop still sees them after

    def close(self) -> bool:
        """Take no more calls (interpreter exit); closes the loop if nobody drives it.
        Whether it was closed."""
        with self._lock:
            self._closed = True
            idle = self._driver is None
        if idle:
            self.loop.close()
        return idle


def _outcome(call: Call[T], interrupted: int) -> T:
    """The call's result (or error); a Ctrl-C seen while it ran is raised once it ended."""
    if interrupted:
        raise KeyboardInterrupt
    return call.outcome()


async def _until_idle(shared: SharedLoop) -> None:
    """The keeper's own call: ends once no other task is left on the loop."""
    me = asyncio.current_task()
    while True:
        await asyncio.sleep(_IDLE_CHECK)
        if not shared.tasks_left(but=me):
            return
