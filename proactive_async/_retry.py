"""Which failures are safe to retry, how long to wait, and the retry loop itself.

The endpoint has no idempotency key, so a retry can only be automatic when the request was
certainly not processed: the connection was never made, 429, or 503. Anything that may have
been processed (500/502/504, a read timeout, a connection lost after sending, an
undecodable 2xx body) is *ambiguous* and is retried only when the caller opts in. A fatal
error (401, 403, TLS) is never retried.

One decision: ``RetryPolicy.next_wait(error, attempt, elapsed)`` says whether to try again
and after how long. The client's loop (``retry_call``) and the campaign's chunk sender both
ask it. The loop is a plain ``while``: tenacity's ``AsyncRetrying`` cost about 25 us a call
(measured in issue 2, more than the rest of the SDK's own work per call) and, once every
stop and wait rule lives in ``next_wait``, it had nothing left to decide.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Protocol, TypeVar

from ._errors import (
    ConnectError,
    ProactiveError,
    RateLimitError,
    ServiceUnavailableError,
)

__all__ = ["RetryPolicy", "is_safe_to_retry", "parse_retry_after", "retry_call"]

_log = logging.getLogger("proactive_async")
T = TypeVar("T")


class Sleep(Protocol):
    """An awaitable sleep, injectable so tests need no real waits."""

    def __call__(self, seconds: float, /) -> Awaitable[None]: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how a failed call is tried again.

    Usage::

        RetryPolicy(max_attempts=5, deadline=60.0)          # safe failures only (default)
        RetryPolicy(retry_ambiguous=True)                    # opt in: may send twice
        RetryPolicy.never()                                  # one attempt

    Parameters:
        max_attempts: attempts in all, the first included.
        deadline: seconds from the first attempt after which no new attempt starts; a wait
            that would end past it stops retrying. None: no overall deadline.
        retry_ambiguous: also retry failures after which the server may have processed the
            request (500/502/504, read timeout, connection lost, undecodable 2xx). This can
            create duplicate conversations; off by default.
        backoff_initial, backoff_max, jitter: exponential backoff in seconds (initial,
            doubled per attempt up to max) plus up to ``jitter`` seconds of random jitter.
        max_retry_after: the longest ``Retry-After`` honoured; a longer one stops retrying
            and the 429/503 error is raised carrying the wait. In a campaign, also how long
            429s may go on with no call accepted before the run stops (``CircuitOpenError``):
            a single wait the policy honours never trips it.
        stop_unreachable_after: in a campaign, seconds with no call reaching the server
            (every attempt failing to connect: nothing listening, a refused or unreachable
            host) after which the run stops (``CircuitOpenError``); None: never. The default
            60 s outlasts the restart of an API or a load balancer and is shorter than the
            first attempts of a chunk take to run out (8 attempts: about 61 s of backoff), so
            a run against nothing ends with its records unsent, ``aborted``, not ``failed``.
        stop_ambiguous_after: in a campaign, failures that may have been processed (500,
            read timeout, connection lost, undecodable 2xx) with no call succeeding since,
            after which the run stops; None: never. Those records end ``unknown``; the rest
            are not sent. With 50, calls failing that way one time in two (far worse than
            a healthy server) trip it about once in 10**9 runs of a million calls, while a
            server that processes every call and answers 500 costs 50 calls (plus those in
            flight), not one per record.
    """

    max_attempts: int = 5
    deadline: float | None = 120.0
    retry_ambiguous: bool = False
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.5
    max_retry_after: float = 120.0
    stop_unreachable_after: float | None = 60.0
    stop_ambiguous_after: int | None = 50

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.deadline is not None and self.deadline <= 0:
            raise ValueError("deadline must be positive or None")
        if not self.max_retry_after >= 0:
            raise ValueError("max_retry_after must not be negative")
        if self.stop_unreachable_after is not None and not self.stop_unreachable_after > 0:
            raise ValueError("stop_unreachable_after must be positive or None")
        if self.stop_ambiguous_after is not None and self.stop_ambiguous_after < 1:
            raise ValueError("stop_ambiguous_after must be at least 1 or None")

    @classmethod
    def never(cls) -> RetryPolicy:
        """A policy that makes exactly one attempt."""
        return cls(max_attempts=1)

    def should_retry(self, exc: BaseException) -> bool:
        """Whether ``exc`` may be retried under this policy (attempt budget aside)."""
        if not isinstance(exc, ProactiveError) or exc.fatal:
            return False
        if is_safe_to_retry(exc):
            return True
        return self.retry_ambiguous and exc.may_have_been_processed

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` when the server named none."""
        exponent = min(max(attempt, 1) - 1, 64)  # past 2**64 any backoff_max has been hit
        wait = self.backoff_initial * 2.0**exponent + random.uniform(0, self.jitter)
        return max(0.0, min(wait, self.backoff_max))

    def wait_for(self, exc: BaseException | None, attempt: int) -> float:
        """The wait before the next attempt: the server's Retry-After, else backoff."""
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, float | int):
            return max(0.0, float(retry_after))
        return self.backoff(attempt)

    def next_wait(self, exc: BaseException, attempt: int, elapsed: float = 0.0) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to stop and raise ``exc``.

        Stops on: a failure this policy does not retry (fatal, ambiguous without opt-in,
        other 4xx, not ours), the attempt budget, a Retry-After past ``max_retry_after``,
        and a wait that would end past the ``deadline`` (``elapsed`` seconds since the first
        attempt started).
        """
        if attempt >= self.max_attempts or not self.should_retry(exc):
            return None
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, float | int) and retry_after > self.max_retry_after:
            _log.info("Retry-After %.1fs passes the cap %.1fs", retry_after, self.max_retry_after)
            return None
        wait = self.wait_for(exc, attempt)
        if self.deadline is not None and elapsed + wait >= self.deadline:
            return None
        return wait


def is_safe_to_retry(exc: ProactiveError) -> bool:
    """True for failures that certainly were not processed: no connection, 429, 503."""
    return isinstance(exc, ConnectError | RateLimitError | ServiceUnavailableError)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After``: integer or fractional seconds, or an HTTP-date.

    Returns None when absent, unreadable or negative (the caller's backoff applies, never
    "retry now"); a date in the past gives 0.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        return _seconds_until_http_date(text, now)
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        return None
    return seconds


def _seconds_until_http_date(text: str, now: float | None) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


async def retry_call(
    attempt_fn: Callable[[int], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Sleep,
    clock: Callable[[], float] = time.monotonic,
    first: ProactiveError | None = None,
    started: float | None = None,
) -> T:
    """Run ``attempt_fn(attempt_number)`` until it succeeds or the policy stops retrying.

    The error raised at the end is the last attempt's, with ``attempts`` set. ``first``:
    the first attempt was made by the caller (at ``started``) and failed with it; the
    retries go on from there (a call that succeeds at once never comes here: one frame
    and one coroutine less on every call).
    """
    started = clock() if started is None else started
    attempt = 1
    error = first
    while True:
        if error is None:
            try:
                return await attempt_fn(attempt)
            except ProactiveError as exc:
                error = exc
        error.attempts = attempt
        wait = policy.next_wait(error, attempt, clock() - started)
        if wait is None:
            raise error
        _log.warning("attempt %d failed (%s); retrying in %.2fs", attempt, error.kind, wait)
        error = None
        await sleep(wait)
        attempt += 1
