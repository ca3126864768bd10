"""The server-side rate limit: a token bucket over targets, and how Retry-After is written."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable

__all__ = ["TokenBucket", "format_retry_after"]


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; one token per target.

    A call larger than the whole bucket is admitted once the bucket is full and drives
    it negative, so it is never refused forever and the long-run rate is still ``rate``.
    """

    def __init__(
        self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()

    def acquire(self, n: int) -> float:
        """Take ``n`` tokens and return 0.0, or take none and return seconds to wait."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        needed = min(float(n), self._burst)
        # The tolerance absorbs float error, so a client that waits exactly the announced
        # time is admitted rather than told to wait a few femtoseconds more.
        if self._tokens + 1e-9 >= needed:
            self._tokens -= n
            return 0.0
        return (needed - self._tokens) / self._rate


def format_retry_after(
    seconds: float, style: str, *, wall_clock: Callable[[], float] = time.time
) -> str:
    """``Retry-After`` for a wait of ``seconds``, never earlier than the wait."""
    if style == "seconds":
        return str(math.ceil(seconds))
    if style == "fractional":
        millis = math.ceil(seconds * 1000.0)
        return f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    # An HTTP-date has whole seconds: round the instant up so the client never comes early.
    return email.utils.formatdate(math.ceil(wall_clock() + seconds), usegmt=True)
