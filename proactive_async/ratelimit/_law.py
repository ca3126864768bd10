"""The adaptive control law: one state machine, two homes.

``AdaptiveRate`` (one process, state in memory) and ``SharedRateLimit`` (a group of
processes, state in a Redis hash) move their rate with this law and nothing else. The law
decides; the home measures. At each answer the home hands the law a ``Reading`` (its clock,
the weight granted and accepted so far, the weight accepted in the last window, the call
counts of the noise filter) and the ``LawState``; the law changes the state in place and
says what the answer was (``Verdict``). The home then applies the new rate (and the pause,
emptying its bucket when ``drain``); the shared home writes the state back only if no
other process changed it meanwhile (a generation number, compared and set in one Lua step),
so one congestion event cuts the rate once for the whole group, whichever process saw it.

The law, in short: before the first 429 the rate doubles every half ``interval`` (slow
start). A 429 drops it to ``decrease`` times the goodput achieved over the last ``window``
of sending (paused time left out), never times the configured rate; before anything was
accepted it is cut from the rate calls were really sent at, and that rate is a ceiling for
slow start (it stops just under it, then probes above it instead of doubling into the same
refusal). After the first second that goodput is also the estimate of the server's limit.
Increases then close ``approach`` of the gap to just under the estimate each ``interval``
(concave), hold there for a plateau that doubles each time a 429 confirms the same limit,
and only then probe above it, slowly at first (convex). 429s from calls already in flight
are one signal: after a cut, further 429s only extend the pause until the Retry-After plus
``reaction_window`` has passed. A rare 429 is noise (``noise_share``, ``noise_run``): the
rate stays and nobody else pauses. The first refusal pauses every sender for its whole
Retry-After; later, one of a second or less pauses them for ``reaction_window`` only
(``group_pause``), while the call that met it waits all of it.

Why the decision lives in Python for the shared limit too (it lived in a Lua copy of this
law before): the copy drifted (it read 12 of the tuning's 19 fields, then measured goodput
from grants, which reads a slow start's ramp as the limit: a 3-process group behind a
300 r/s nginx settled near 170/s for seconds after its first cut). Redis keeps only what
must be atomic: the bucket, the counters and the state with its generation number.
"""

from __future__ import annotations

import math
from typing import Final, Literal, NamedTuple

import msgspec

from ._tuning import NOISE_MIN_CALLS, PAUSES_PER_PLATEAU, AdaptiveTuning

__all__ = ["SHORT_RETRY_AFTER", "CallCounts", "Law", "LawState", "Reading", "Verdict", "covers"]

SHORT_RETRY_AFTER: Final = 1.0
"""Seconds: a ``Retry-After`` up to this, once the limit is being measured, pauses the group
only briefly (``Law.group_pause``); the call that met it still waits all of it."""

Verdict = Literal["noise", "pause", "cut"]
"""What a 429 was: ``noise`` (only its call waits), ``pause`` (the congestion event already
acted on: every sender waits, the rate stays), ``cut`` (a new signal: the rate drops)."""


def covers(group: float, wait: float) -> bool:
    """Does the group's pause of ``group`` seconds spare the caller its own ``wait``? (The
    homes tell the caller so; a pause shortened by ``Law.group_pause`` does not.)"""
    return group >= wait - 1e-3


class CallCounts(NamedTuple):
    """The noise filter's counts: calls answered over the last one to two windows."""

    accepted: int
    throttled: int
    run: int
    """429s in a row with no success between them, the one being judged included."""


class Reading(NamedTuple):
    """What the home measured when an answer came: the law's only view of the traffic."""

    now: float
    granted: float
    """Weight handed out so far (the limiter's grants, or the whole group's)."""
    accepted_total: float
    """Weight accepted so far."""
    accepted_recent: float
    """Weight accepted within the last ``window`` seconds."""
    calls: CallCounts


class LawState(msgspec.Struct, kw_only=True):
    """Everything the law remembers between two answers (JSON in the shared home)."""

    rate: float
    plateau: float
    """Seconds to hold just under the estimate before probing (doubles on confirmation)."""
    hold_for: float
    """The plateau, or more when the last 429 paused everyone long (PAUSES_PER_PLATEAU)."""
    last_step: float
    step_accepted: float
    """``accepted_total`` at the last step: what was used since is the busy test."""
    mark_time: float
    mark_granted: float
    """Since when (and from what grant count) "the rate really sent" is counted."""
    estimate: float | None = None
    """The goodput at the last cut: the best guess at the server's limit."""
    provisional: float | None = None
    """The rate refused before anything was measured: a ceiling for slow start."""
    reached: float | None = None
    """When the rate came up to just under the estimate (None: not since the last cut)."""
    probes: int = 0
    """Increases in a row above the estimate without a 429."""
    hold_until: float | None = None
    """Until then, 429s are the congestion event already acted on."""
    started: float | None = None
    """The first answer (success or 429): a campaign may start long after the limit."""
    pauses: list[tuple[float, float]] = msgspec.field(default_factory=list)
    """The pauses 429s asked for lately, (start, end), oldest first."""
    paused_until: float | None = None


class Law:
    """The control law, with its tuning, floor and ceiling; stateless itself.

    Usage (a home)::

        law = Law(tuning, ceiling=5000.0)
        state = law.start(100.0, reading)
        law.on_success(state, reading)            # maybe a step: state.rate moved
        verdict = law.on_throttle(state, reading, wait=1.0)
    """

    def __init__(self, tuning: AdaptiveTuning, *, ceiling: float = math.inf) -> None:
        if ceiling < tuning.floor:
            raise ValueError("ceiling must not be below floor")
        self.tuning = tuning
        self.ceiling = ceiling

    def start(self, rate: float, reading: Reading) -> LawState:
        """The state of a limit that has seen no answer yet, at ``rate`` (bounded)."""
        return LawState(
            rate=self.bound(rate),
            plateau=self.tuning.plateau,
            hold_for=self.tuning.plateau,
            last_step=reading.now,
            step_accepted=reading.accepted_total,
            mark_time=reading.now,
            mark_granted=reading.granted,
        )

    def bound(self, rate: float) -> float:
        return min(self.ceiling, max(self.tuning.floor, rate))

    def due(self, state: LawState, now: float) -> bool:
        """Is a step due? (Before the first 429 there is nothing to be careful of: twice
        as often.) The first answer is due at once: it starts the clocks."""
        if state.started is None:
            return True
        interval = self.tuning.interval if state.estimate is not None else self.tuning.interval / 2
        return now - state.last_step >= interval

    def on_success(self, state: LawState, reading: Reading) -> None:
        """An accepted call: at most once per interval, raise the rate (if it was used)."""
        self._first_answer(state, reading.now)
        if self.due(state, reading.now):
            self._increase(state, reading)

    def on_throttle(self, state: LawState, reading: Reading, wait: float) -> Verdict:
        """A 429 asking for ``wait`` seconds: noise, the event already acted on, or a cut."""
        now = reading.now
        self._first_answer(state, now)
        holding = state.hold_until is not None and now < state.hold_until
        if not holding and self.is_noise(reading.calls):
            return "noise"
        # Paused time in the window, before this 429: time not sending is not goodput lost.
        paused = self._paused_within(state, now)
        wait = self.group_pause(state, wait)
        self._pause(state, now, wait)
        if holding:
            return "pause"
        self._cut(state, reading, wait, paused)
        return "cut"

    def group_pause(self, state: LawState, wait: float) -> float:
        """How long every sender pauses for a 429 asking for ``wait`` (its own call always
        waits the whole of it): all of it at the first refusal, or when the server asks for
        more than a second; once the limit is being measured, a ``Retry-After`` of a second
        or less (the least a whole-second header can say) stops the group only for the
        reaction window: the cut that comes with it already brings the rate under the
        limit, and a second's stop of every sender per probe would cost far more than the
        few calls that meet the 429 (nginx ``limit_req`` with a fixed ``Retry-After: 1``:
        0.82x of the limit over 20 s with the whole pause, see ``tests/test_ratelimit_law.py``).
        """
        learning = state.estimate is not None or state.provisional is not None
        if learning and wait <= SHORT_RETRY_AFTER:
            return min(wait, self.tuning.reaction_window)
        return wait

    def is_noise(self, calls: CallCounts) -> bool:
        """A 429 among many accepted calls, not in a run: a pause, not a limit."""
        tuning = self.tuning
        if calls.run >= tuning.noise_run or calls.accepted == 0:
            return False  # a run, or nothing accepted lately (the start): the limit speaks
        answered = max(calls.accepted + calls.throttled, NOISE_MIN_CALLS)
        return calls.throttled / answered <= tuning.noise_share

    # -- the steps -------------------------------------------------------------------------

    def _first_answer(self, state: LawState, now: float) -> None:
        if state.started is None:
            state.started = now
            state.mark_time = now

    def _increase(self, state: LawState, reading: Reading) -> None:
        tuning = self.tuning
        now = reading.now
        elapsed = now - state.last_step
        used = (reading.accepted_total - state.step_accepted) / elapsed if elapsed > 0 else 0.0
        state.last_step = now
        state.step_accepted = reading.accepted_total
        rate = state.rate
        # An idle campaign must not talk itself into a huge rate.
        if used < tuning.busy * rate:
            return
        provisional = state.estimate is None and state.provisional is not None
        estimate = state.provisional if provisional else state.estimate
        if estimate is None:
            state.rate = self.bound(rate * tuning.slow_start)
            return
        target = estimate * (1 - tuning.margin)
        if rate < target * (1 - tuning.probe):
            if provisional:
                # Nothing measured yet: slow start, up to just under the rate refused.
                state.rate = self.bound(min(rate * tuning.slow_start, target))
            else:
                # Concave: close most of the gap while far below the limit, little near it.
                state.rate = self.bound(rate + (target - rate) * tuning.approach)
            return
        if state.reached is None:
            state.reached = now
        if not provisional and now - state.reached < state.hold_for:
            # Just under the limit: stay; the more often the limit was confirmed, the longer.
            state.rate = self.bound(max(rate, target))
        else:
            # Convex: creep above the estimate, faster the longer no 429 comes; long
            # without a 429 the estimate was just low: grow as in slow start, no faster.
            step = tuning.probe * tuning.probe_growth**state.probes
            state.rate = self.bound(rate * min(tuning.slow_start, 1 + step))
            state.probes += 1

    def _cut(self, state: LawState, reading: Reading, wait: float, paused: float) -> None:
        tuning = self.tuning
        now = reading.now
        rate = state.rate
        window = tuning.window
        # Accepted per second of sending in the window: paused time does not count (a
        # server that refills little while paused is not slower for it).
        achieved = reading.accepted_recent / max(window - paused, window / 4)
        # The rate calls were really sent at since the last cut (or the start).
        sent = (reading.granted - state.mark_granted) / max(now - state.mark_time, window / 4)
        started = state.started if state.started is not None else now
        # A first cut in the first half window measures next to nothing: 8 calls accepted
        # in the first 4 ms read as 8/s once cut a campaign to 7/s (1.5 s to climb back).
        # The rate calls were really sent at says more there, as before any success.
        first = state.estimate is None and state.provisional is None
        measured = achieved > 0 and not (first and now - started < window / 2)
        if measured:
            basis = min(rate, achieved)
        elif state.estimate is not None:
            # No answer in the window (a pause, or successes still on their way): keep
            # to the estimate rather than read "nothing accepted" as a rate of zero.
            basis = min(rate, state.estimate)
        else:
            # The start, where 429s often come back before any success: the rate calls
            # were really sent at, not the configured one, is what to cut.
            basis = (min(rate, sent) if sent > 0 else rate) * tuning.max_cut
        if state.estimate is None and sent > 0:
            # Refused at that rate before anything could be measured: slow start goes on
            # up to just under it, no further, then probes above it.
            state.provisional = min(rate, sent)
        if measured and now - started >= window:
            self._estimate(state, achieved)
        elif state.estimate is not None:
            state.estimate = min(state.estimate, rate)
        state.reached = None
        # A probe past the limit costs this pause for every sender: hold under the limit
        # long enough that probing costs about 1/PAUSES_PER_PLATEAU of the time.
        state.hold_for = max(state.plateau, wait * PAUSES_PER_PLATEAU)
        state.rate = self.bound(basis * tuning.decrease)
        # The pause and the calls already in flight say nothing new: the next signal
        # comes from calls sent after the pause at the new rate.
        state.hold_until = now + wait + tuning.reaction_window
        state.mark_time, state.mark_granted = now, reading.granted
        state.last_step = now
        state.step_accepted = reading.accepted_total
        state.probes = 0

    def _estimate(self, state: LawState, achieved: float) -> None:
        """The goodput is the new estimate, even where it passes the rate just cut (answers
        to calls sent before the cut): in a storm of 429s the rate falls cut after cut, and
        an estimate that followed it down would hold the campaign far under the limit."""
        previous, state.estimate = state.estimate, achieved
        if previous is None or abs(achieved - previous) > self.tuning.confirm * previous:
            # Another limit (or a storm read low): what was learnt of the last one does
            # not hold for this one; probe above it after the first plateau.
            state.plateau = self.tuning.plateau
        elif state.reached is not None:
            # The same limit again, met on the way back up to just under it: it is real,
            # so probe above it less often. Cuts in a row before the rate came back (the
            # start, where a server's initial bucket runs out) are one episode.
            state.plateau = min(self.tuning.max_plateau, state.plateau * 2)

    def _pause(self, state: LawState, now: float, wait: float) -> None:
        end = now + wait
        if state.paused_until is None or now >= state.paused_until:
            state.pauses.append((now, end))
        else:
            start, last = state.pauses[-1]
            state.pauses[-1] = (start, max(last, end))
        state.paused_until = end if state.paused_until is None else max(state.paused_until, end)

    def _paused_within(self, state: LawState, now: float) -> float:
        """Seconds of the last ``window`` spent paused: with short Retry-Afters several
        pauses fit in one window, and each is time not sending."""
        horizon = now - self.tuning.window
        pauses = [pause for pause in state.pauses if pause[1] > horizon]
        state.pauses = pauses
        return sum(max(0.0, min(end, now) - max(start, horizon)) for start, end in pauses)
