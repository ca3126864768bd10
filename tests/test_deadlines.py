"""One timer for the read and total timeouts of every call in flight (``_deadlines``)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from proactive_async._deadlines import Deadlines, Watch


class Stream:
    total_bytes = 0


async def watched(deadlines: Deadlines, work: asyncio.Future[None] | None = None) -> str:
    """A call: waits on ``work`` (for ever by default); what ended it."""
    watch = deadlines.watch()
    assert watch is not None
    try:
        await (work if work is not None else asyncio.get_running_loop().create_future())
        return "done"
    except asyncio.CancelledError:
        if watch.settle():
            return f"timeout:{watch.expired}"
        raise
    finally:
        deadlines.forget(watch)
        watch.settle()


async def test_a_call_with_no_progress_is_cancelled_after_read_and_told_it_was_the_timeout() -> (
    None
):
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, read=0.1, total=None)
    started = loop.time()
    assert await watched(deadlines) == "timeout:read"
    took = loop.time() - started
    assert 0.1 <= took < 0.1 + 3 * deadlines.tick  # never early, at most a tick or so late
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_progress_resets_read_but_not_total() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, read=0.1, total=0.35)
    stream = Stream()

    async def dripping() -> str:
        watch = deadlines.watch()
        assert watch is not None
        watch.stream = stream
        try:
            while True:
                await asyncio.sleep(0.03)
                stream.total_bytes += 1  # a byte every 30 ms: never 0.1 s without one
        except asyncio.CancelledError:
            assert watch.settle()
            return str(watch.expired)

    started = loop.time()
    assert await dripping() == "total"
    assert loop.time() - started >= 0.35


async def test_a_call_that_ends_in_time_is_left_alone_and_the_timer_stops() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, read=0.2, total=0.5)
    work = loop.create_future()
    loop.call_later(0.05, work.set_result, None)
    assert await watched(deadlines, work) == "done"
    await asyncio.sleep(deadlines.tick * 2)
    assert deadlines._timer is None  # nothing in flight: no timer runs


async def test_the_callers_own_cancel_still_propagates_when_a_timeout_fired_too() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, read=0.05, total=None)
    outcome: list[str] = []

    async def call() -> None:
        watch = deadlines.watch()
        assert watch is not None
        try:
            await loop.create_future()
        except asyncio.CancelledError:
            outcome.append("timed out" if watch.settle() else "cancelled")
            raise
        finally:
            deadlines.forget(watch)

    task = asyncio.create_task(call())
    await asyncio.sleep(0)  # the call is in flight, watched
    (watch,) = deadlines._watches
    watch.last -= 1.0  # past its read timeout: the next sweep cancels it ...
    deadlines._sweep()
    assert task.cancelling() == 1
    task.cancel()  # ... and the caller cancels too before the task runs
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == ["cancelled"]


async def test_a_cancel_the_call_swallowed_is_taken_back_at_its_end() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, read=0.05, total=None)
    watch = deadlines.watch()
    assert isinstance(watch, Watch)
    with contextlib.suppress(asyncio.CancelledError):
        await loop.create_future()  # a library below swallows the cancel
    deadlines.forget(watch)
    assert watch.expired == "read"
    assert watch.settle() is True
    assert watch.settle() is False  # once only
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


def test_the_tick_is_a_twentieth_of_the_shortest_timeout_within_bounds() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert Deadlines(loop, read=30.0, total=60.0).tick == 1.0
        assert Deadlines(loop, read=None, total=2.0).tick == pytest.approx(0.1)
        assert Deadlines(loop, read=0.01, total=None).tick == 0.005
        with pytest.raises(ValueError):
            Deadlines(loop, read=None, total=None)
    finally:
        loop.close()
