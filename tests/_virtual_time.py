"""Virtual time for asyncio tests: a loop whose clock jumps to the next timer.

``run_virtual(main)`` runs ``main(clock)`` on a fresh loop where every wait takes no real
time: when all tasks wait, the clock moves to the next timer. A wait with no timer at all is
a deadlock and raises.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class VirtualClock:
    """Seconds of virtual time; the loop below moves it forward."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _JumpingSelector(selectors.DefaultSelector):
    """Instead of blocking for ``timeout``, jump the clock to the next timer."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise RuntimeError("deadlock: every task waits and no timer is set")
        if timeout > 0:
            self._clock.now += timeout
        return super().select(0)


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(_JumpingSelector(clock))
        self._virtual = clock

    def time(self) -> float:
        return self._virtual.now


def run_virtual(main: Callable[[VirtualClock], Awaitable[T]]) -> T:
    """Run ``main(clock)`` to the end on a fresh virtual-time loop."""
    clock = VirtualClock()

    async def runner() -> T:
        return await main(clock)

    with asyncio.Runner(loop_factory=lambda: VirtualLoop(clock)) as loop_runner:
        return loop_runner.run(runner())
