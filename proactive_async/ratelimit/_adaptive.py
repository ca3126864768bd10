"""``AdaptiveRate``: the adaptive control law (``_law.py``) at home in one process. It
moves a ``TokenBucket``'s rate to what the server accepts when the client is not told the
limit; it measures (the accepted calls of the last window, the noise filter's counts) and
the law decides.

``AdaptiveTuning`` and its constants live in ``_tuning.py`` (re-exported here).
"""

from __future__ import annotations

import math
import time
from collections import deque

from ._bucket import Clock, TokenBucket, check_positive
from ._law import CallCounts, Law, Reading
from ._tuning import DEFAULT_TUNING, AdaptiveTuning

__all__ = [
    "DEFAULT_TUNING",
    "AdaptiveRate",
    "AdaptiveTuning",
    "CallCounter",
]


class CallCounter:
    """Calls answered and 429s in this window and the one before, and the 429s in a row:
    what the law's noise filter reads."""

    __slots__ = ("_calls", "_previous", "_run", "_since", "_window")

    def __init__(self, window: float, now: float) -> None:
        self._window = window
        self._since = now
        self._calls = [0, 0]
        self._previous = [0, 0]
        self._run = 0

    def count(self, now: float, *, throttled: bool) -> None:
        if now - self._since >= self._window:
            recent = now - self._since < 2 * self._window
            self._previous = self._calls if recent else [0, 0]
            self._calls = [0, 0]
            self._since = now
        self._calls[throttled] += 1
        self._run = self._run + 1 if throttled else 0

    def counts(self) -> CallCounts:
        calls, previous = self._calls, self._previous
        return CallCounts(calls[0] + previous[0], calls[1] + previous[1], self._run)


class AdaptiveRate:
    """Finds the rate a server accepts without being told it (AIMD driven by 429s).

    Usage::

        limiter = TokenBucket(1000)
        adaptive = AdaptiveRate(limiter, ceiling=5000, tuning=AdaptiveTuning(decrease=0.8))
        ...                                   # after each call:
        adaptive.on_success(len(targets))     # or adaptive.on_throttle(exc.retry_after)

    How it moves is the law's (``_law.py``: slow start, a cut on 429 to a share of the
    goodput, a plateau just under the estimate, convex probing, noise); this class
    measures (the accepted calls of the last window, the noise filter's counts) and
    applies the law's rate to the limiter, emptying it for the pause a 429 asks for.

    Parameters:
        limiter: the limiter whose rate is steered.
        initial: the starting rate; None keeps the limiter's rate.
        ceiling: never go above this; None: no ceiling.
        clock: monotonic seconds; ``time.monotonic`` by default.
        tuning: the :class:`AdaptiveTuning` (how fast it moves, how careful it is).
    """

    def __init__(
        self,
        limiter: TokenBucket,
        *,
        initial: float | None = None,
        ceiling: float | None = None,
        clock: Clock = time.monotonic,
        tuning: AdaptiveTuning = DEFAULT_TUNING,
    ) -> None:
        self._limiter = limiter
        bound = math.inf if ceiling is None else check_positive("ceiling", ceiling)
        self._law = Law(tuning, ceiling=bound)
        self._clock = clock
        self._window = tuning.window
        self._unknown_pause = tuning.unknown_pause
        self._drain = tuning.drain
        now = clock()
        self._counter = CallCounter(tuning.window, now)
        # (time, weight) of accepted calls within the last `window` seconds.
        self._accepted: deque[tuple[float, float]] = deque()
        self._accepted_sum = 0.0
        self._accepted_total = 0.0
        self._state = self._law.start(
            limiter.rate if initial is None else initial, self._reading(now)
        )
        self._apply()
        if self._drain:
            # Pace the first calls at the starting rate instead of one bucket-sized burst.
            limiter.drain()

    @property
    def rate(self) -> float:
        """The rate currently set on the limiter."""
        return self._state.rate

    @property
    def paused_until(self) -> float | None:
        """When the group's pause for the last 429 ends (the law's clock); None before any."""
        return self._state.paused_until

    @property
    def estimate(self) -> float | None:
        """The estimated server limit (goodput measured at a 429); None before any."""
        return self._state.estimate

    def on_success(self, weight: float) -> None:
        """Count an accepted call; at most once per ``interval``, raise the rate."""
        now = self._clock()
        self._counter.count(now, throttled=False)
        self._accepted.append((now, weight))
        self._accepted_sum += weight
        self._accepted_total += weight
        if self._law.due(self._state, now):
            self._law.on_success(self._state, self._reading(now))
            self._apply()

    def on_throttle(self, retry_after: float | None) -> bool:
        """A 429: lower the rate, unless one was already acted on in the reaction window.

        Returns False for noise (a rare 429, see ``AdaptiveTuning.noise_share``): nothing
        changes, and only the call that met it waits; True when it is the server's limit
        speaking, which pauses every sender.
        """
        now = self._clock()
        self._counter.count(now, throttled=True)
        # Without a Retry-After the caller backs off for some time we are not told.
        wait = self._unknown_pause if retry_after is None else max(0.0, retry_after)
        state = self._state
        if self._law.on_throttle(state, self._reading(now), wait) == "noise":
            return False
        # The group's pause (``Law.group_pause``), which may be shorter than ``wait``.
        if self._drain and state.paused_until is not None:
            self._limiter.drain(until=state.paused_until)
        self._apply()
        return True

    def _reading(self, now: float) -> Reading:
        accepted = self._accepted
        horizon = now - self._window
        while accepted and accepted[0][0] < horizon:
            self._accepted_sum -= accepted.popleft()[1]
        return Reading(
            now,
            self._limiter.granted,
            self._accepted_total,
            self._accepted_sum,
            self._counter.counts(),
        )

    def _apply(self) -> None:
        rate = self._state.rate
        if rate != self._limiter.rate:
            self._limiter.set_rate(rate)
