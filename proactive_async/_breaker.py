"""When a run cannot succeed, and which failed records a resume may send again.

``Breaker`` holds the sender's stop windows (no call reaches the server; calls fail after
the server may have processed them; 429s without end), each closed by a call that
succeeds; ``RetryPolicy`` holds their limits. ``is_resendable`` is the one rule for
``--resend-failed``: failures of the run, never of the record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ._errors import (
    AuthenticationError,
    CircuitOpenError,
    ClientStateError,
    ConnectError,
    ConnectTimeout,
    NameResolutionError,
    NotFoundError,
    PermissionDeniedError,
    ProactiveError,
    RateLimitError,
    RedirectError,
    ServiceUnavailableError,
    TLSError,
)
from ._records import Outcome, OutcomeStatus
from ._retry import RetryPolicy

__all__ = ["ABORTED", "Breaker", "is_resendable", "resendable_kind"]

ABORTED: Final = "aborted"
"""``OutcomeError.kind`` of a record not sent because the run was aborted."""

_RESENDABLE: Final = frozenset(
    [ABORTED]
    + [
        cls.__name__
        for cls in (
            ConnectError,
            ConnectTimeout,
            NameResolutionError,
            TLSError,
            CircuitOpenError,
            RateLimitError,
            ServiceUnavailableError,
            AuthenticationError,
            PermissionDeniedError,
            ClientStateError,
            NotFoundError,
            RedirectError,
        )
    ]
)
"""Failure kinds of the run rather than of the record (``is_resendable``)."""


class Breaker:
    """Whether any call can still succeed: the state behind a policy's stop limits.

    Three windows, each closed by a call that succeeds: attempts that all failed to
    connect (``stop_unreachable_after`` seconds; any attempt that reached the server
    closes it too), failures that may have been processed (``stop_ambiguous_after`` of
    them), and 429s (``max_retry_after`` seconds). Calls finish in any order and from
    any chunk: the windows are the sender's, not a chunk's.
    """

    __slots__ = ("_ambiguous", "_clock", "_last_success", "_throttled_since", "_unreachable_since")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last_success: float | None = None
        self._unreachable_since: float | None = None
        self._throttled_since: float | None = None
        self._ambiguous = 0

    def succeeded(self) -> None:
        self._last_success = self._clock()
        self._unreachable_since = self._throttled_since = None
        self._ambiguous = 0

    def accepted_within(self, seconds: float) -> bool:
        """Some call succeeded in the last ``seconds``."""
        last = self._last_success
        return last is not None and self._clock() - last <= seconds

    def throttled_out(self, exc: ProactiveError, how_long: str | int) -> CircuitOpenError:
        """429s without end: ``how_long`` they went on, or how many one call met."""
        if isinstance(how_long, int):
            how_long = f"{how_long} times for one call"
        return CircuitOpenError(
            f"every call was answered 429 (rate limited) {how_long} with none accepted "
            f"({exc.message}); the API's limit for this token or channel is used up: resume "
            "later, or at a lower rate",
            reason="throttled",
            cause=exc,
        )

    def failed(self, exc: ProactiveError, policy: RetryPolicy) -> CircuitOpenError | None:
        """Count a failed attempt; the error that stops the run, if this one trips it."""
        now = self._clock()
        if isinstance(exc, ConnectError):
            since = self._unreachable_since
            if since is None:
                self._unreachable_since = now
                return None
            limit = policy.stop_unreachable_after
            if limit is None or now - since < limit:
                return None
            return CircuitOpenError(
                f"no call reached the server for {now - since:.0f} s: every attempt failed "
                f"to connect ({exc.message}); check the base URL, and that the API is up and "
                "reachable from here",
                reason="unreachable",
                cause=exc,
            )
        self._unreachable_since = None  # it answered, or the request reached it
        if isinstance(exc, RateLimitError):
            since = self._throttled_since
            if since is None:
                self._throttled_since = now
            elif now - since >= policy.max_retry_after:
                return self.throttled_out(exc, f"for {now - since:.0f} s")
            return None
        if exc.may_have_been_processed:
            self._ambiguous += 1
            limit = policy.stop_ambiguous_after
            if limit is not None and self._ambiguous >= limit:
                return CircuitOpenError(
                    f"{self._ambiguous} calls failed after the server may have processed them, "
                    f"and none succeeded ({exc.kind}: {exc.message}); stopped rather than call "
                    "every record: those records ended unknown (may have been sent), the "
                    "others were not sent; check the API before resuming",
                    reason="ambiguous",
                    cause=exc,
                )
        return None


def is_resendable(outcome: Outcome) -> bool:
    """A ``failed`` record worth sending again once its cause is fixed (``resend_failed``).

    ``failed`` is certainly not created. Resendable are the failures of the run rather than
    of the record: no connection, a name that does not resolve, TLS, 429/503, a wrong
    token or URL (401, 403, 404, a redirect), the run aborted or stopped by its breaker. A
    400, 409 or 422 is not: the same request would be refused again.
    """
    error = outcome.error
    return (
        outcome.status is OutcomeStatus.FAILED and error is not None and resendable_kind(error.kind)
    )


def resendable_kind(kind: str) -> bool:
    """Whether a ``failed`` record of this error kind is resendable (``is_resendable``)."""
    return kind in _RESENDABLE
