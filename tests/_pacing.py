"""Helpers shared by the pacing tests (the token bucket, the adaptive control)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from _virtual_time import VirtualClock, run_virtual


async def fake_sleep(seconds: float) -> None:
    """An injected sleep (not ``asyncio.sleep`` itself, so the limiter uses a task)."""
    await asyncio.sleep(seconds)


def finishes_without_suspending(awaitable: Any) -> bool:
    """True when a coroutine runs to its end on the first step (no await that yields)."""
    try:
        awaitable.send(None)
    except StopIteration:
        return True
    awaitable.close()
    return False


def suspends(make: Callable[[], Any]) -> bool:
    """True when the coroutine ``make()`` returns has to wait (checked inside a loop)."""

    async def main(_: VirtualClock) -> bool:
        return not finishes_without_suspending(make())

    return run_virtual(main)
