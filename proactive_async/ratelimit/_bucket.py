"""The local pacing pieces: a weighted token bucket and one shared pause.

* ``TokenBucket`` caps targets (or calls) per second, FIFO-fair.
* ``Cooldown`` is one pause shared by every dispatcher, set from a 429's ``Retry-After``.

Time is injected (``clock``, ``sleep``) so tests run on a fake clock without real waits.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

__all__ = ["Clock", "Cooldown", "Sleep", "TokenBucket", "check_positive"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# A refill computed after sleeping exactly the deficit can land a hair short of it in
# floating point; without this slack the head waiter would loop on nanosecond sleeps.
_EPSILON = 1e-9


def check_positive(name: str, value: float) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


class _Waiter:
    """One blocked ``acquire``: its weight and the future that wakes it."""

    __slots__ = ("future", "weight")

    def __init__(self, weight: float, future: asyncio.Future[None]) -> None:
        self.weight = weight
        self.future = future


class TokenBucket:
    """A weighted token bucket: ``rate`` tokens per second, at most ``burst`` saved up.

    Usage::

        limiter = TokenBucket(500)            # 500 targets/s, bucket of 500 (one second)
        await limiter.acquire(len(targets))   # waits until the call may go

    Waiters are served strictly in arrival order, so a heavy call is never starved by
    light ones. A weight above ``burst`` is admitted once the bucket is full and leaves it
    in debt, which keeps the long-run rate exact instead of blocking forever. Only the
    waiter at the head of the queue sleeps; a cancelled waiter has taken nothing and
    hands the head on. Taking tokens when they are there does not suspend.

    Parameters:
        rate: tokens per second (> 0).
        burst: the bucket size. None: ``max(1, rate)``, one second's worth, and it follows
            the rate when ``set_rate`` changes it.
        clock: monotonic seconds; ``time.monotonic`` by default.
        sleep: an awaitable sleep; ``asyncio.sleep`` by default.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._rate = check_positive("rate", rate)
        self._burst_follows_rate = burst is None
        self._burst = max(1.0, self._rate) if burst is None else check_positive("burst", burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self._burst
        self._stamp = clock()
        self._granted = 0.0
        self._waiters: deque[_Waiter] = deque()
        # The head waiter's pending sleep; cancelled when the head changes or the rate does.
        self._timer: asyncio.TimerHandle | asyncio.Future[None] | None = None

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self._rate

    @property
    def burst(self) -> float:
        """The most tokens the bucket holds."""
        return self._burst

    @property
    def granted(self) -> float:
        """All the weight handed out so far."""
        return self._granted

    def set_rate(self, rate: float) -> None:
        """Change the rate now; the waiter at the head re-plans its wait at once."""
        rate = check_positive("rate", rate)
        self._refill()
        self._rate = rate
        if self._burst_follows_rate:
            self._burst = max(1.0, rate)
            self._tokens = min(self._tokens, self._burst)
        if self._waiters:
            self._wake_head()

    def drain(self, until: float | None = None) -> None:
        """Empty the bucket (keeping any debt) and, if given, refill nothing before ``until``.

        For a server that has just answered 429: its own bucket is empty, so tokens saved
        up here, or during the pause it asked for, would only be spent on more 429s.
        """
        self._refill()
        self._tokens = min(self._tokens, 0.0)
        if until is not None and until > self._stamp:
            self._stamp = until
        if self._waiters:
            self._wake_head()

    async def acquire(self, weight: float = 1.0) -> None:
        """Wait until ``weight`` tokens can be taken, then take them.

        Raises ValueError for a negative or non-finite weight.
        """
        if self.try_acquire(weight):
            return
        await self._wait_in_line(weight)

    def try_acquire(self, weight: float = 1.0) -> bool:
        """Take ``weight`` tokens if that needs no wait (nobody in line, tokens there).

        Raises ValueError for a negative or non-finite weight.
        """
        if not (weight >= 0 and math.isfinite(weight)):
            raise ValueError(f"weight must be a non-negative finite number, got {weight!r}")
        return not self._waiters and self._try_take(weight)

    async def _wait_in_line(self, weight: float) -> None:
        loop = asyncio.get_running_loop()
        waiter = _Waiter(weight, loop.create_future())
        self._waiters.append(waiter)
        try:
            while True:
                if self._waiters[0] is waiter:
                    # No await between taking and returning: a cancellation can never
                    # arrive after the tokens are gone.
                    if self._try_take(weight):
                        return
                    self._arm_timer(weight)
                await waiter.future
                waiter.future = loop.create_future()
        finally:
            self._leave(waiter)

    def _refill(self) -> None:
        """Drip tokens in for the time since the last look."""
        now = self._clock()
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._stamp = now

    def _try_take(self, weight: float) -> bool:
        self._refill()
        # A weight above the bucket can never be fully saved up: a full bucket admits it.
        if self._tokens + _EPSILON >= min(weight, self._burst):
            self._tokens -= weight
            self._granted += weight
            return True
        return False

    def _arm_timer(self, weight: float) -> None:
        """Sleep until the head's tokens are there, then wake it."""
        self._cancel_timer()
        deficit = min(weight, self._burst) - self._tokens
        # The stamp is in the future while drained until a pause ends.
        delay = max(0.0, self._stamp - self._clock()) + deficit / self._rate
        if self._sleep is asyncio.sleep:
            # The default sleep needs no task: a loop timer is cheaper and does the same.
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer_handle)
            return
        timer = asyncio.ensure_future(self._sleep(delay))
        timer.add_done_callback(self._on_timer_future)
        self._timer = timer

    def _on_timer_handle(self) -> None:
        self._timer = None
        if self._waiters:
            self._wake_head()

    def _on_timer_future(self, timer: asyncio.Future[None]) -> None:
        if timer.cancelled() or timer is not self._timer:
            return
        self._timer = None
        error = timer.exception()
        if not self._waiters:
            return
        future = self._waiters[0].future
        if future.done():
            return
        if error is not None:
            # The injected sleep failed: the head's acquire raises it rather than retrying.
            future.set_exception(error)
        else:
            future.set_result(None)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _wake_head(self) -> None:
        future = self._waiters[0].future
        if not future.done():
            future.set_result(None)

    def _leave(self, waiter: _Waiter) -> None:
        """Take ``waiter`` out of line; a new head re-checks the bucket."""
        if self._waiters[0] is waiter:
            self._waiters.popleft()
            self._cancel_timer()
            if self._waiters:
                self._wake_head()
        else:
            self._waiters.remove(waiter)


class Cooldown:
    """One pause shared by every dispatcher: a 429's ``Retry-After`` pauses them all.

    Usage::

        cooldown = Cooldown()
        await cooldown.wait()                 # before each call
        cooldown.pause(exc.retry_after)       # on a 429

    A pause only ever extends the current one; ``wait`` re-checks after sleeping, so a
    pause extended meanwhile is honoured.

    Parameters:
        clock: monotonic seconds; ``time.monotonic`` by default.
        sleep: an awaitable sleep; ``asyncio.sleep`` by default.
    """

    def __init__(self, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._until = -math.inf
        self.count = 0
        """How many pauses were requested."""

    def pause(self, seconds: float) -> None:
        """Pause everyone until ``seconds`` from now, unless already paused for longer."""
        if math.isnan(seconds):
            raise ValueError("seconds must be a number")
        self.count += 1
        self._until = max(self._until, self._clock() + max(0.0, seconds))

    def remaining(self) -> float:
        """Seconds left in the pause, 0.0 when not paused."""
        return max(0.0, self._until - self._clock())

    async def wait(self) -> None:
        """Return at once when not paused, else when the (possibly extended) pause ends."""
        while (left := self._until - self._clock()) > 0:
            await self._sleep(left)
