"""Adaptive control: moves a ``TokenBucket``'s rate to what the server accepts when the
client is not told the limit (slow start, a cut on 429, plateau, convex probing).

``AdaptiveTuning`` holds its knobs; the Redis ``SharedRateLimit`` reads the same ones.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Final

from ._bucket import Clock, TokenBucket, check_positive

__all__ = [
    "DEFAULT_TUNING",
    "NOISE_MIN_CALLS",
    "PAUSES_PER_PLATEAU",
    "AdaptiveRate",
    "AdaptiveTuning",
]


@dataclass(frozen=True, slots=True)
class AdaptiveTuning:
    """How :class:`AdaptiveRate` moves: its knobs, built once, defaults written here only.

    Usage::

        AdaptiveTuning()                              # the defaults, right for most servers
        AdaptiveTuning(decrease=0.8, max_plateau=30)  # back off harder, probe more often

    Parameters:
        floor: never go below this rate.
        interval: seconds between two increases.
        window: seconds over which the achieved goodput is measured.
        reaction_window: seconds after a pause during which 429s are not a new signal.
        decrease: the share of achieved goodput the rate drops to on a 429.
        slow_start: the growth factor per half interval before the first 429.
        approach: the share of the gap to the estimate closed per interval.
        probe: the first step above the estimate, as a share of the rate; each further
            step without a 429 is ``probe_growth`` times larger.
        max_cut: with nothing accepted lately, a 429 sets the rate to this share of the
            rate calls were really sent at (the limiter's grants since the last 429).
        busy: an increase needs this share of the rate to have been used, so an idle
            campaign does not talk itself into a huge rate.
        drain: empty the limiter's bucket on each 429 until its pause ends.
        margin: the rate settles this share below the estimate.
        plateau, max_plateau: seconds spent just under the estimate before probing, at
            first and at most; and at least 10 times the pause the last 429 asked for
            (``Retry-After: 1`` stops every sender for a second per probe past the limit).
        confirm: a new estimate within this share of the last one confirms it (doubling
            the plateau) when the rate had come back up to just under the last one; one
            further off starts again from ``plateau``.
        unknown_pause: the pause assumed for a 429 without Retry-After (the caller backs
            off for a time we are not told).
        noise_share, noise_run: a 429 cuts the rate only when 429s are more than
            ``noise_share`` of the calls of the last one to two ``window``s (counted over
            at least 20 calls), or when ``noise_run`` come with no success between them;
            otherwise it is noise: the rate stays, nobody else pauses, and only the call
            that met it waits its Retry-After.

    How the noise threshold was chosen: a sender above a server's limit by x gets about
    x / (1 + x) of its calls refused, so a real limit passed by 5% or more shows at once;
    random 429s (a busy shard, a proxy) of 1-2% of calls do not. What it costs: a limit
    passed by less than 5% is found only when probing has gone past 5% (up to ~5% of calls
    refused meanwhile), and at fewer than 20 calls per window a lone 429 is taken for noise
    (the second one, or a run, cuts). A 429 with no call accepted lately (the start) is
    always the limit. 0.0 reads every 429 as the limit (the old behaviour).
    """

    floor: float = 1.0
    interval: float = 0.5
    window: float = 1.0
    reaction_window: float = 0.1
    decrease: float = 0.9
    slow_start: float = 2.0
    approach: float = 0.5
    probe: float = 0.02
    probe_growth: float = 1.5
    max_cut: float = 0.5
    busy: float = 0.5
    drain: bool = True
    margin: float = 0.05
    plateau: float = 2.0
    max_plateau: float = 60.0
    confirm: float = 0.15
    unknown_pause: float = 0.5
    noise_share: float = 0.05
    noise_run: int = 3

    def __post_init__(self) -> None:
        for name in ("floor", "interval", "window"):
            check_positive(name, getattr(self, name))
        if not 0 < self.decrease < 1:
            raise ValueError("decrease must be between 0 and 1")
        if not 0 <= self.noise_share < 1 or self.noise_run < 1:
            raise ValueError("noise_share must be in [0, 1) and noise_run at least 1")
        for name in ("reaction_window", "unknown_pause"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must not be negative")


DEFAULT_TUNING: Final = AdaptiveTuning()
PAUSES_PER_PLATEAU: Final = 10.0
"""Seconds held just under a found limit per second of the pause a 429 imposed, at least:
with ``Retry-After: 1`` each probe past the limit stops every sender for a second, so
probing at most every 10 s keeps its cost near a tenth of the time; with the short
pauses of most servers the plateau itself is the longer."""
NOISE_MIN_CALLS: Final = 20


class AdaptiveRate:
    """Finds the rate a server accepts without being told it (AIMD driven by 429s).

    Usage::

        limiter = TokenBucket(1000)
        adaptive = AdaptiveRate(limiter, ceiling=5000, tuning=AdaptiveTuning(decrease=0.8))
        ...                                   # after each call:
        adaptive.on_success(len(targets))     # or adaptive.on_throttle(exc.retry_after)

    Before the first 429 the rate doubles every half ``interval`` (slow start). A 429
    drops the rate to ``decrease`` times the goodput actually achieved over the last
    ``window`` of sending (paused time left out), never times the configured rate, which
    may be far above what the server took; before any success it is cut from the rate
    calls were really sent at. After the first second, that goodput is also the estimate
    of the server's limit; before it, the rate calls were really sent at when refused is a
    ceiling for slow start, which stops just under it and then probes above it instead of
    doubling into the same refusal. Increases then close half the gap to just under the estimate
    each ``interval`` (concave), hold there for a ``plateau`` that doubles each time a
    429 confirms the same limit, and only then probe above it, slowly at first (convex).
    So the rate spends its time just under the limit instead of saw-toothing down to
    half of it. 429s from calls already in flight are one signal: after a decrease,
    further 429s only extend the pause until the Retry-After plus ``reaction_window`` has
    passed. Each 429 also empties the limiter's bucket until the pause ends, so the first
    calls after a pause are paced, not a burst; the bucket starts empty for the same
    reason.

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
        self._floor = tuning.floor
        self._ceiling = math.inf if ceiling is None else check_positive("ceiling", ceiling)
        if self._ceiling < self._floor:
            raise ValueError("ceiling must not be below floor")
        self._clock = clock
        self._interval = tuning.interval
        self._window = tuning.window
        self._reaction_window = tuning.reaction_window
        self._decrease = tuning.decrease
        self._slow_start = tuning.slow_start
        self._approach = tuning.approach
        self._probe = tuning.probe
        self._probe_growth = tuning.probe_growth
        self._max_cut = tuning.max_cut
        self._busy = tuning.busy
        self._drain = tuning.drain
        self._margin = tuning.margin
        self._plateau = self._first_plateau = tuning.plateau
        # How long to stay just under the estimate before probing: the plateau, or more
        # when the last 429 paused everyone for long (see PAUSES_PER_PLATEAU).
        self._hold_for = tuning.plateau
        # The rate refused at the start, before anything was measured: a ceiling for
        # slow start until an estimate is measured.
        self._provisional: float | None = None
        self._max_plateau = tuning.max_plateau
        self._confirm = tuning.confirm
        self._unknown_pause = tuning.unknown_pause
        self._noise_share = tuning.noise_share
        self._noise_run = tuning.noise_run
        # Calls answered and 429s in this window and the one before: the noise filter.
        self._calls_since = clock()
        self._calls = [0, 0]
        self._previous_calls = [0, 0]
        self._throttle_run = 0
        # When the rate came up to just under the estimate (inf: not since the last 429).
        self._reached = math.inf
        # (time, weight) of accepted calls within the last `window` seconds.
        self._accepted: deque[tuple[float, float]] = deque()
        self._accepted_sum = 0.0
        now = clock()
        # (time, the limiter's grants then): what was really sent is counted from here.
        self._mark = (now, limiter.granted)
        # The first answer (success or 429): the campaign may start long after we exist.
        self._started: float | None = None
        self._last_step = now
        self._step_weight = 0.0
        self._hold_until = -math.inf
        # Increases in a row above the estimate without a 429.
        self._probes = 0
        # The latest pause a 429 asked for.
        # The pauses 429s asked for lately, (start, end), oldest first; the last may go on.
        self._pauses: deque[list[float]] = deque()
        self._paused_until = -math.inf
        # The goodput at the last 429: our best guess at the server's limit.
        self._estimate: float | None = None
        self._rate = limiter.rate
        self._apply(limiter.rate if initial is None else initial)
        if self._drain:
            # Pace the first calls at the starting rate instead of one bucket-sized burst.
            limiter.drain()

    @property
    def rate(self) -> float:
        """The rate currently set on the limiter."""
        return self._rate

    @property
    def estimate(self) -> float | None:
        """The estimated server limit (goodput measured at a 429); None before any."""
        return self._estimate

    def on_success(self, weight: float) -> None:
        """Count an accepted call; at most once per ``interval``, raise the rate."""
        now = self._clock()
        if self._started is None:
            self._started = now
            self._mark = (now, self._mark[1])
        self._count_call(now, throttled=False)
        self._accepted.append((now, weight))
        self._accepted_sum += weight
        self._step_weight += weight
        # Before the first 429 there is nothing to be careful of: grow twice as often.
        interval = self._interval if self._estimate is not None else self._interval / 2
        if now - self._last_step >= interval:
            self._increase(now)

    def on_throttle(self, retry_after: float | None) -> bool:
        """A 429: lower the rate, unless one was already acted on in the reaction window.

        Returns False for noise (a rare 429, see ``AdaptiveTuning.noise_share``): nothing
        changes, and only the call that met it waits; True when it is the server's limit
        speaking, which pauses every sender.
        """
        now = self._clock()
        if self._started is None:
            self._started = now
            self._mark = (now, self._mark[1])
        self._count_call(now, throttled=True)
        if now >= self._hold_until and self._is_noise():
            return False
        # Without a Retry-After the caller backs off for some time we are not told.
        wait = self._unknown_pause if retry_after is None else max(0.0, retry_after)
        # Paused time in the window, before this 429: time not sending is not goodput lost.
        paused = self._paused_within(now)
        if now >= self._paused_until:
            self._pauses.append([now, now + wait])
        else:
            self._pauses[-1][1] = max(self._pauses[-1][1], now + wait)
        self._paused_until = max(self._paused_until, now + wait)
        if self._drain:
            self._limiter.drain(until=self._paused_until)
        if now < self._hold_until:
            return True
        rate = self._rate
        self._forget_before(now - self._window)
        # Accepted per second of sending in the window: paused time does not count (a
        # server that refills little while paused is not slower for it). Right after the
        # start the whole window still counts: reading low there is the safe side.
        span = max(self._window - paused, self._window / 4)
        achieved = self._accepted_sum / span
        measured = achieved > 0
        # The rate calls were really sent at since the last cut (or the start).
        since, granted = self._mark
        sent = (self._limiter.granted - granted) / max(now - since, self._window / 4)
        if measured:
            basis = min(rate, achieved)
        elif self._estimate is not None:
            # No answer in the window (a pause, or successes still on their way): keep
            # to the estimate rather than read "nothing accepted" as a rate of zero.
            basis = min(rate, self._estimate)
        else:
            # The start, where 429s often come back before any success: the rate calls
            # were really sent at, not the configured one, is what to cut.
            basis = min(rate, sent) * self._max_cut if sent > 0 else rate * self._max_cut
        if self._estimate is None and sent > 0:
            # Refused at that rate before anything could be measured: slow start goes on
            # up to just under it, no further, then probes above it, instead of doubling
            # into the same refusal again.
            self._provisional = min(rate, sent)
        if measured and now - self._started >= self._window:
            # The goodput, even where it passes the rate just cut (answers to calls sent
            # before the cut): in a storm of 429s the rate falls cut after cut, and an
            # estimate that followed it down would hold the campaign far under the limit.
            previous, self._estimate = self._estimate, achieved
            if previous is None or abs(achieved - previous) > self._confirm * previous:
                # Another limit (or a storm read low): what was learnt of the last one
                # does not hold for this one; probe above it after the first plateau.
                self._plateau = self._first_plateau
            elif self._reached != math.inf:
                # The same limit again, met on the way back up to just under it: it is
                # real, so probe above it less often. Cuts in a row before the rate came
                # back (the start, where a server's initial bucket runs out) are one
                # episode, not confirmations.
                self._plateau = min(self._max_plateau, self._plateau * 2)
        elif self._estimate is not None:
            self._estimate = min(self._estimate, rate)
        self._reached = math.inf
        # A probe past the limit costs this pause for every sender: hold under the limit
        # long enough that probing costs about 1/PAUSES_PER_PLATEAU of the time.
        self._hold_for = max(self._plateau, wait * PAUSES_PER_PLATEAU)
        self._apply(basis * self._decrease)
        # The pause and the calls already in flight say nothing new: the next signal
        # comes from calls sent after the pause at the new rate.
        self._hold_until = now + wait + self._reaction_window
        self._mark = (now, self._limiter.granted)
        self._last_step = now
        self._step_weight = 0.0
        self._probes = 0
        return True

    def _increase(self, now: float) -> None:
        self._forget_before(now - self._window)
        used = self._step_weight / (now - self._last_step)
        self._last_step = now
        self._step_weight = 0.0
        if used < self._busy * self._rate:
            return
        estimate = self._estimate
        rate = self._rate
        provisional = estimate is None and self._provisional is not None
        if provisional:
            estimate = self._provisional
        if estimate is None:
            self._apply(rate * self._slow_start)
            return
        target = estimate * (1 - self._margin)
        if rate < target * (1 - self._probe):
            if provisional:
                # Nothing measured yet: slow start, up to just under the rate refused.
                self._apply(min(rate * self._slow_start, target))
            else:
                # Concave: close most of the gap while far below the limit, little near it.
                self._apply(rate + (target - rate) * self._approach)
            return
        if self._reached == math.inf:
            self._reached = now
        if not provisional and now - self._reached < self._hold_for:
            # Just under the limit: stay; the more often the limit was confirmed, the longer.
            self._apply(max(rate, target))
        else:
            # Convex: creep above the estimate, faster the longer no 429 comes.
            step = self._probe * self._probe_growth**self._probes
            # Long without a 429 the estimate was just low: grow as in slow start, no faster.
            self._apply(rate * min(self._slow_start, 1 + step))
            self._probes += 1

    def _paused_within(self, now: float) -> float:
        """Seconds of the last ``window`` spent paused, before this 429: with short
        Retry-Afters several pauses fit in one window, and each is time not sending."""
        horizon = now - self._window
        pauses = self._pauses
        while pauses and pauses[0][1] <= horizon:
            pauses.popleft()
        return sum(max(0.0, min(end, now) - max(start, horizon)) for start, end in pauses)

    def _count_call(self, now: float, *, throttled: bool) -> None:
        if now - self._calls_since >= self._window:
            recent = now - self._calls_since < 2 * self._window
            self._previous_calls = self._calls if recent else [0, 0]
            self._calls = [0, 0]
            self._calls_since = now
        self._calls[throttled] += 1
        self._throttle_run = self._throttle_run + 1 if throttled else 0

    def _is_noise(self) -> bool:
        """A 429 among many accepted calls, not in a run: a pause, not a limit."""
        if self._throttle_run >= self._noise_run:
            return False
        accepted = self._calls[0] + self._previous_calls[0]
        if accepted == 0:
            return False  # nothing accepted lately (the start, say): the limit speaks
        throttles = self._calls[1] + self._previous_calls[1]
        return throttles / max(accepted + throttles, NOISE_MIN_CALLS) <= self._noise_share

    def _forget_before(self, horizon: float) -> None:
        accepted = self._accepted
        while accepted and accepted[0][0] < horizon:
            self._accepted_sum -= accepted.popleft()[1]

    def _apply(self, rate: float) -> None:
        rate = min(self._ceiling, max(self._floor, rate))
        if rate != self._rate or rate != self._limiter.rate:
            self._rate = rate
            self._limiter.set_rate(rate)
