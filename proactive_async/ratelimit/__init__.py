"""Rate limits: how fast calls go (not ``Limits``, the connection pool; see ``_config``).

A sender (the campaign's chunk sender, or ``AsyncClient`` for one call) talks to a
``RateLimitBackend`` and never asks which one it has. What lives where:

* here: the ``RateLimitBackend`` protocol and ``report_failure``, the one rule for telling
  a limit about a 429 or 503;
* ``_bucket``: the weighted ``TokenBucket`` and the shared ``Cooldown`` pause;
* ``_tuning``: ``AdaptiveTuning``, the knobs of the adaptive control;
* ``_law``: the adaptive control law that finds a server's untold limit, one state
  machine with two homes (it decides; the home measures and keeps its state);
* ``_adaptive``: ``AdaptiveRate``, the law at home in one process;
* ``_local``: ``RateLimit``, one process (a bucket, a cooldown, the adaptive control);
* ``_redis``, ``_redis_script`` and ``_redis_errors``: ``SharedRateLimit``, many
  processes through Redis (the law's state kept there, changed by compare-and-set), and
  ``SharedLimitError``, the fatal error of a Redis that answers with an error. redis-py is
  imported only when a ``SharedRateLimit`` is built (the ``redis`` extra).

A live display reads ``paused`` (seconds left in a shared pause) and ``problem`` (why the
limit holds calls back, in one line: Redis away) of a limit that has them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .._errors import ProactiveError, RateLimitError, ServiceUnavailableError
from .._retry import RetryPolicy
from ._adaptive import AdaptiveTuning
from ._local import RateLimit, unnamed_throttle_wait
from ._redis import SharedLimitError, SharedRateLimit, default_limit_key

__all__ = [
    "AdaptiveTuning",
    "RateLimit",
    "RateLimitBackend",
    "SharedLimitError",
    "SharedRateLimit",
    "default_limit_key",
    "report_failure",
    "unnamed_throttle_wait",
]


@runtime_checkable
class RateLimitBackend(Protocol):
    """What a sender needs of a rate limit; weights count targets (recipients + contacts).

    * ``acquire(weight)`` before every attempt: waits out a shared pause, then the rate;
    * ``on_success(weight)`` after an accepted call;
    * ``on_throttle(weight, retry_after)`` after a 429: pauses every sender sharing it;
    * ``on_busy(seconds)`` after a 503: the server is busy for everyone, everyone waits;
    * ``aclose()`` once nobody uses it: releases what it holds (a Redis connection).
    """

    async def acquire(self, weight: float = 1.0) -> None:
        """Wait until a call of ``weight`` targets may go (after any shared pause)."""

    async def on_success(self, weight: float) -> None:
        """A call of ``weight`` targets was accepted."""

    async def on_throttle(self, weight: float, retry_after: float | None) -> bool:
        """A 429 for a call of ``weight`` targets; ``retry_after`` as the server named it.

        True: every sender now waits a shared pause that covers ``retry_after`` (the caller
        needs no wait of its own). False: the caller waits its ``retry_after`` itself (a
        rare 429 taken for noise, or a pause of the group shorter than it).
        """

    async def on_busy(self, seconds: float) -> None:
        """A 503: pause every sender for ``seconds``."""

    async def aclose(self) -> None:
        """Release what the limit holds; its owner calls it once, after the last call."""

    @property
    def rate(self) -> float | None:
        """The current targets-per-second limit, as far as known here; None: none."""


async def report_failure(
    limit: RateLimitBackend, exc: ProactiveError, weight: float, policy: RetryPolicy, attempt: int
) -> bool:
    """Tell a rate limit about a 429 or 503; the one rule for the client and the sender.

    Returns True when every sender now waits a shared pause (so the caller need not wait
    on its own). A wait past ``policy.max_retry_after`` pauses nobody: the call that met
    it ends with the error, while everyone else goes on (a hostile ``Retry-After: 86400``
    must not freeze a campaign).
    """
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None and retry_after > policy.max_retry_after:
        return False
    if isinstance(exc, RateLimitError):
        return await limit.on_throttle(weight, retry_after)
    if isinstance(exc, ServiceUnavailableError):
        await limit.on_busy(policy.wait_for(exc, attempt))
        return True
    return False
