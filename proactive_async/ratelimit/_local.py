"""The local rate limit: one process's pacing (token buckets, a shared pause, adaptive)."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Final

from ._adaptive import DEFAULT_TUNING, AdaptiveRate, AdaptiveTuning
from ._bucket import Clock, Cooldown, Sleep, TokenBucket
from ._law import covers

__all__ = ["ADAPTIVE_START", "RateLimit", "unnamed_throttle_wait"]

ADAPTIVE_START: Final = 1_000_000.0
"""Targets/s an adaptive limit with no ceiling starts at: no limit until the first 429."""
_THROTTLE_WAIT_MIN: Final = 0.01
_THROTTLE_WAIT_MAX: Final = 0.25


class RateLimit:
    """Paces the calls of one process: targets/s, calls/s, a shared pause on 429 and 503.

    Usage::

        limit = RateLimit(500)                    # 500 targets/s
        limit = RateLimit()                       # adaptive: find the server's limit
        async with AsyncClient(url, token, rate_limit=limit) as client: ...

    One ``RateLimit`` shared by a campaign and by single calls paces them together.

    Parameters:
        rate: targets per second, a token bucket of ``burst`` targets. None: adaptive.
        burst: the bucket size; None: one second's worth.
        calls_per_second: an optional second bucket that counts calls, not targets.
        adaptive: find the rate the server accepts (AIMD on 429). Default: on when no
            ``rate`` is given; with both, ``rate`` is the ceiling.
        tuning: how the adaptive mode moves (:class:`AdaptiveTuning`).
        clock, sleep: monotonic seconds and an awaitable sleep (injectable for tests).
    """

    def __init__(
        self,
        rate: float | None = None,
        *,
        burst: float | None = None,
        calls_per_second: float | None = None,
        adaptive: bool | None = None,
        tuning: AdaptiveTuning = DEFAULT_TUNING,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        # TokenBucket refuses a rate of 0 or less: 0 is never read as "no limit".
        self._targets = (
            TokenBucket(rate, burst, clock=clock, sleep=sleep) if rate is not None else None
        )
        self._calls = (
            TokenBucket(calls_per_second, clock=clock, sleep=sleep)
            if calls_per_second is not None
            else None
        )
        self._adaptive: AdaptiveRate | None = None
        if adaptive if adaptive is not None else rate is None:
            if self._targets is None:
                self._targets = TokenBucket(ADAPTIVE_START, burst, clock=clock, sleep=sleep)
            self._adaptive = AdaptiveRate(self._targets, ceiling=rate, clock=clock, tuning=tuning)
        self._cooldown = Cooldown(clock=clock, sleep=sleep)
        self._clock = clock

    def __repr__(self) -> str:
        mode = "adaptive" if self._adaptive is not None else "fixed"
        return f"RateLimit(rate={self.rate!r}, {mode})"

    @property
    def rate(self) -> float | None:
        """The current targets-per-second limit (it moves in adaptive mode); None: none."""
        return self._targets.rate if self._targets is not None else None

    @property
    def adaptive(self) -> bool:
        return self._adaptive is not None

    @property
    def paused(self) -> float:
        """Seconds left in the shared pause (0.0 when not paused)."""
        return self._cooldown.remaining()

    def start_empty(self) -> None:
        """Empty the targets bucket of a fixed rate: a run about to start has no idle time
        to make up for, and a full bucket would let rate + burst through in its first
        second (an adaptive limit paces its start on its own)."""
        if self._targets is not None and self._adaptive is None:
            self._targets.drain()

    async def acquire(self, weight: float = 1.0) -> None:
        """Wait out any pause, then take ``weight`` targets and one call from the buckets."""
        # Called before every attempt: what needs no wait is done without awaiting.
        if self._cooldown.remaining() > 0:
            await self._cooldown.wait()
        targets = self._targets
        if targets is not None and not targets.try_acquire(weight):
            await targets.acquire(weight)
        if self._calls is not None and not self._calls.try_acquire(1.0):
            await self._calls.acquire(1.0)

    async def on_success(self, weight: float) -> None:
        """An accepted call of ``weight`` targets: the adaptive rate counts it."""
        if self._adaptive is not None:
            self._adaptive.on_success(weight)

    async def on_throttle(self, weight: float, retry_after: float | None) -> bool:
        """A 429: every caller pauses for ``retry_after`` (or a wait from the rate). False:
        the caller waits on its own: the adaptive rate took the 429 for noise (nobody else
        waits), or paused the group for less (``Law.group_pause``)."""
        wait = retry_after if retry_after is not None else unnamed_throttle_wait(weight, self.rate)
        adaptive = self._adaptive
        if adaptive is None:
            self._cooldown.pause(wait)
            return True
        if not adaptive.on_throttle(wait):
            return False  # noise: the rate stays and nobody else waits
        # The law may pause the group for less than this call waits (``Law.group_pause``):
        # then the caller waits the rest on its own.
        until = adaptive.paused_until
        group = until - self._clock() if until is not None else wait
        self._cooldown.pause(group)
        return covers(group, wait)

    async def on_busy(self, seconds: float) -> None:
        """A 503: every caller pauses for ``seconds``."""
        self._cooldown.pause(seconds)

    async def aclose(self) -> None:
        """Nothing to release: a local limit holds no connection (the protocol asks it)."""

    async def __aenter__(self) -> RateLimit:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def unnamed_throttle_wait(weight: float, rate: float | None) -> float:
    """The shared pause for a 429 that names no wait (nginx ``limit_req`` sends none).

    Such a server refuses what passes its rate *now*; the time for a couple of calls'
    worth of tokens at the current rate is enough, where a backoff of seconds would idle
    every sender and waste the server's capacity.
    """
    if rate is None or rate <= 0 or math.isinf(rate):
        return _THROTTLE_WAIT_MAX
    return min(_THROTTLE_WAIT_MAX, max(_THROTTLE_WAIT_MIN, 2 * weight / rate))
