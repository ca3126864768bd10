"""Callbacks for observability: what a campaign tells you of outcomes, retries and 429s.

A callback is a plain function, called on the campaign's event loop: keep it quick (a
metrics counter, a log line), and hand slower work to a queue or a task of your own. It
is never awaited, so it adds no await point inside the life of a chunk: a slow or
cancelled callback cannot cut a chunk's settlement short. A callback that raises never
costs a record: the error is logged and the campaign goes on.

Each callback receives one object (as stamina's ``RetryDetails``): a field added to it
later breaks no callback. ``on_retry`` gets a ``RetryDetails``, ``on_throttle`` a
``ThrottleDetails``, and ``on_outcome`` the ``Outcome`` itself, which already is such an
object (every field after ``status`` has a default) and is what ``async for`` yields: a
wrapper around it would cost an allocation per record. Whether an outcome is this run's
or replayed from the journal by a resume is told by the hook called: ``on_replayed``,
when given, receives the replayed ones instead of ``on_outcome``.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from ._errors import ProactiveError, RateLimitError
from ._records import Outcome

__all__ = [
    "OutcomeHook",
    "RetryDetails",
    "RetryHook",
    "SafeHook",
    "ThrottleDetails",
    "ThrottleHook",
    "safe_hook",
]

_log = logging.getLogger("proactive_async")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryDetails:
    """A failed attempt that will be retried: what ``on_retry`` receives."""

    error: ProactiveError
    """Why the attempt failed."""
    attempt: int
    """The number of the attempt that failed (1 for the first)."""
    wait: float
    """Seconds before the next attempt (a 429's ``Retry-After``, or the policy's backoff)."""
    elapsed: float
    """Seconds since the call's first attempt (stamina's ``waited_so_far``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottleDetails:
    """A 429 the server answered: what ``on_throttle`` receives."""

    error: RateLimitError
    """The 429 itself."""
    retry_after: float | None
    """The server's ``Retry-After`` in seconds, None when it sent none."""


class OutcomeHook(Protocol):
    """Called with each record's final outcome (``Campaign(on_outcome=...)``), or with
    each outcome a resume replays from the journal (``Campaign(on_replayed=...)``).

    Usage::

        def count(outcome: Outcome) -> None:
            OUTCOMES.labels(outcome.status.value).inc()
    """

    def __call__(self, outcome: Outcome, /) -> None: ...


class RetryHook(Protocol):
    """Called when a failed attempt will be retried (``Campaign(on_retry=...)``); a retried
    429 calls it too (after ``on_throttle``).

    Usage::

        def count(retry: RetryDetails) -> None:
            RETRIES.labels(retry.error.kind).inc()
    """

    def __call__(self, details: RetryDetails, /) -> None: ...


class ThrottleHook(Protocol):
    """Called with each 429 the server answers (``Campaign(on_throttle=...)``).

    Usage::

        def count(throttle: ThrottleDetails) -> None:
            THROTTLED.inc()
    """

    def __call__(self, details: ThrottleDetails, /) -> None: ...


class SafeHook:
    """A user callback whose errors are logged and never raised."""

    __slots__ = ("_function", "_name", "failures")

    def __init__(self, function: Any, name: str) -> None:
        # An object whose __call__ is async counts as an async function too.
        call = inspect.getattr_static(type(function), "__call__", None)
        if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(call):
            raise TypeError(
                f"{name} must be a plain function, not an async one: it is called on the "
                "event loop and never awaited (start a task or fill a queue from it instead)"
            )
        self._function = function
        self._name = name
        self.failures = 0

    def __call__(self, details: object, /) -> None:
        try:
            result = self._function(details)
        except Exception:
            self._failed()
            return
        # An async callable that the check at construction missed (a wrapped one).
        if result is not None and inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # never awaited: no "was never awaited" warning either
            self._failed("returned an awaitable, which is never awaited")

    def _failed(self, why: str = "raised") -> None:
        self.failures += 1
        # The 1st, 10th, 100th... failure: a callback broken for every record of a
        # million-record campaign must not write a million tracebacks.
        if _is_power_of_ten(self.failures):
            _log.error(
                "the %s callback %s (%d time(s) so far); the record is kept and the "
                "campaign goes on",
                self._name,
                why,
                self.failures,
                exc_info=why == "raised",
            )

    def __repr__(self) -> str:
        return f"SafeHook({self._name}={self._function!r})"


def safe_hook(function: Any, name: str) -> SafeHook | None:
    """A SafeHook around ``function``; None stays None (no per-call work without a callback)."""
    return SafeHook(function, name) if function is not None else None


def _is_power_of_ten(number: int) -> bool:
    while number % 10 == 0:
        number //= 10
    return number == 1
