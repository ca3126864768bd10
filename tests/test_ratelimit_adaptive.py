"""AdaptiveRate and AdaptiveTuning (``ratelimit/_adaptive.py``), on virtual time.

Unit tests steer the control with a clock that moves only when told; the simulation runs
it against a simulated server on an event loop whose clock is virtual (when nothing is
ready to run, the loop jumps to the next timer), so results do not depend on the machine.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from _pacing import fake_sleep, finishes_without_suspending, suspends
from _virtual_time import VirtualClock, run_virtual

from proactive_async.ratelimit._adaptive import AdaptiveRate, AdaptiveTuning
from proactive_async.ratelimit._bucket import Cooldown, TokenBucket

T = TypeVar("T")


# -- AdaptiveRate: unit behaviour ------------------------------------------------------------


@dataclass
class Steering:
    clock: VirtualClock = field(default_factory=VirtualClock)
    limiter: TokenBucket = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = TokenBucket(100, clock=self.clock)

    def adaptive(
        self,
        initial: float | None = None,
        ceiling: float | None = None,
        **tuning: Any,
    ) -> AdaptiveRate:
        return AdaptiveRate(
            self.limiter,
            initial=initial,
            ceiling=ceiling,
            clock=self.clock,
            # Every 429 is a limit here unless a test says otherwise (the noise filter
            # has its own tests).
            tuning=AdaptiveTuning(**{"noise_share": 0.0, **tuning}),
        )

    def succeed(self, adaptive: AdaptiveRate, per_second: float, seconds: float) -> None:
        """Report one success of weight 1 every 1/per_second seconds."""
        for _ in range(round(per_second * seconds)):
            self.clock.now += 1 / per_second
            adaptive.on_success(1)


def test_initial_floor_and_ceiling_bound_the_rate() -> None:
    s = Steering()
    adaptive = s.adaptive(initial=5000, ceiling=400)
    assert adaptive.rate == s.limiter.rate == 400
    assert s.adaptive(initial=0.01, floor=2).rate == 2
    other = Steering()
    other.limiter.set_rate(123)
    assert other.adaptive().rate == 123  # None: the limiter's current rate
    with pytest.raises(ValueError):
        s.adaptive(floor=10, ceiling=5)


def test_the_first_calls_are_paced_at_the_starting_rate_not_burst() -> None:
    s = Steering()
    s.adaptive(initial=50)
    assert suspends(s.limiter.acquire)  # the bucket starts empty


def test_slow_start_doubles_while_busy_but_not_while_idle() -> None:
    s = Steering()
    adaptive = s.adaptive(initial=100)
    s.succeed(adaptive, 100, 0.26)  # the whole rate used: one doubling per 0.25 s
    assert adaptive.rate == 200
    s.succeed(adaptive, 20, 2.0)  # a tenth of the rate used: no growth
    assert adaptive.rate == 200


def test_rare_429s_among_many_accepted_calls_pause_but_do_not_cut_the_rate() -> None:
    """1% random 429s (noise) at 1,000 calls/s: the rate stays; each still pauses."""
    s = Steering()
    adaptive = s.adaptive(initial=1000, noise_share=0.05)
    for second in range(5):
        s.succeed(adaptive, 990, 1.0)
        for _ in range(10):
            adaptive.on_throttle(0.05)
            s.clock.now += 0.001
            adaptive.on_success(1)
        assert adaptive.rate >= 1000, f"cut after second {second}"
        assert s.limiter.rate == adaptive.rate


def test_a_429_share_above_the_threshold_cuts_the_rate() -> None:
    s = Steering()
    adaptive = s.adaptive(initial=1000, noise_share=0.05)
    s.succeed(adaptive, 900, 1.0)
    for _ in range(60):  # ~6% of the window's calls, spread out: a limit, not noise
        s.clock.now += 0.001
        adaptive.on_success(1)
        adaptive.on_throttle(0.0)
    assert adaptive.rate < 1000


def test_a_run_of_429s_cuts_the_rate_even_when_they_are_few() -> None:
    s = Steering()
    adaptive = s.adaptive(initial=1000, noise_share=0.05, noise_run=3)
    s.succeed(adaptive, 1000, 2.0)
    adaptive.on_throttle(0.0)
    adaptive.on_throttle(0.0)
    assert adaptive.rate >= 1000  # two in a row among 2,000 calls: still noise
    adaptive.on_throttle(0.0)
    assert adaptive.rate < 1000


def test_a_lone_429_at_a_low_call_rate_is_noise_and_a_second_one_cuts() -> None:
    s = Steering()
    adaptive = s.adaptive(initial=100, noise_share=0.05)
    s.succeed(adaptive, 10, 1.0)  # 10 calls in the window: fewer than the 20 counted
    adaptive.on_throttle(0.0)
    assert adaptive.rate == 100
    s.clock.now += 0.01
    adaptive.on_success(1)
    adaptive.on_throttle(0.0)
    assert adaptive.rate < 100


def test_noise_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="noise_share"):
        AdaptiveTuning(noise_share=1.0)
    with pytest.raises(ValueError, match="noise_run"):
        AdaptiveTuning(noise_run=0)


def test_throttle_drops_to_a_share_of_achieved_goodput_not_of_the_configured_rate() -> None:
    s = Steering()
    adaptive = s.adaptive(initial=10_000, decrease=0.9)
    s.succeed(adaptive, 300, 2.0)  # 10 000/s configured, 300/s accepted (and not busy)
    adaptive.on_throttle(None)
    assert adaptive.rate == pytest.approx(270, rel=0.01)
    assert adaptive.estimate == pytest.approx(300, rel=0.01)


def test_429s_before_any_success_cut_from_the_rate_really_sent_not_the_configured_one() -> None:
    s = Steering()
    adaptive = s.adaptive(initial=1_000_000, max_cut=0.5, decrease=0.9, window=1.0)
    s.clock.now = 5.0  # the campaign starts a while after the limiter was built
    for _ in range(64):  # 64 calls go out at once, then the first answer is a 429
        assert finishes_without_suspending(s.limiter.acquire())
    assert s.limiter.granted == 64
    s.clock.now += 0.005
    adaptive.on_throttle(1.0)
    # 64 calls over at least a quarter window: 256/s, halved, then x0.9.
    assert adaptive.rate == pytest.approx(256 * 0.5 * 0.9)
    assert adaptive.estimate is None  # nothing was measured: slow start goes on


def test_the_estimate_is_the_goodput_even_when_cuts_have_taken_the_rate_under_it() -> None:
    s = Steering()
    adaptive = s.adaptive(initial=2000, decrease=0.9, reaction_window=0.1)
    s.succeed(adaptive, 2000, 1.5)
    for _ in range(4):  # a storm: 429s keep coming, and 2,000/s accepted between pauses
        adaptive.on_throttle(0.05)
        s.clock.now += 0.05
        s.succeed(adaptive, 2000, 0.15)
    assert adaptive.rate < 1400  # cut after cut ...
    assert adaptive.estimate == pytest.approx(2000, rel=0.05)  # ... not the limit's estimate


def test_a_429_with_no_answer_in_the_window_cuts_from_the_estimate_not_to_zero() -> None:
    s = Steering()
    adaptive = s.adaptive(initial=300, decrease=0.9)
    s.succeed(adaptive, 300, 1.5)
    adaptive.on_throttle(0.0)
    assert adaptive.rate == pytest.approx(270, rel=0.01)
    s.clock.now += 5.0  # silence: nothing accepted in the last window
    adaptive.on_throttle(0.0)
    # Throttled at 270: the limit is at most that; one more x0.9 step, not a collapse.
    assert adaptive.estimate == pytest.approx(270, rel=0.01)
    assert adaptive.rate == pytest.approx(0.9 * 270, rel=0.01)


def test_a_burst_of_429s_within_the_reaction_window_counts_once() -> None:
    s = Steering()
    adaptive = s.adaptive(initial=500, reaction_window=0.1)
    s.succeed(adaptive, 400, 2.0)
    adaptive.on_throttle(0.0)
    after_one = adaptive.rate
    for _ in range(20):  # the calls already in flight
        s.clock.now += 0.004
        adaptive.on_throttle(0.0)
    assert adaptive.rate == after_one
    s.clock.now += 0.1
    adaptive.on_throttle(0.0)  # past the window: a new signal
    assert adaptive.rate < after_one


def test_retry_after_extends_the_reaction_window_and_holds_the_limiter_empty() -> None:
    s = Steering()
    adaptive = s.adaptive(initial=100)
    s.succeed(adaptive, 100, 2.0)
    adaptive.on_throttle(1.0)
    rate = adaptive.rate
    s.clock.now += 0.9
    adaptive.on_throttle(1.0)  # inside pause + reaction window: only extends the pause
    assert adaptive.rate == rate
    # Drained until the pause ends (now + 1 s): nothing may go before then.
    assert suspends(lambda: s.limiter.acquire(0.5))


def test_increase_closes_the_gap_then_slows_then_holds_just_under_the_estimate() -> None:
    s = Steering()
    adaptive = s.adaptive(initial=300, margin=0.05, plateau=2.0, interval=0.5)
    s.succeed(adaptive, 300, 1.5)
    adaptive.on_throttle(0.0)
    assert adaptive.estimate == pytest.approx(300, rel=0.01)
    rates = [adaptive.rate]
    for _ in range(7):  # 3.5 s: the approach, then the 2 s plateau
        s.succeed(adaptive, adaptive.rate, 0.5)
        rates.append(adaptive.rate)
    assert rates[0] == pytest.approx(270, rel=0.01)
    first_step, second_step = rates[1] - rates[0], rates[2] - rates[1]
    assert first_step > second_step > 0  # concave: large steps far off, small ones near
    assert max(rates) == pytest.approx(300 * 0.95)  # then holds on the plateau under it


def test_probing_above_the_estimate_starts_after_the_plateau() -> None:
    s = Steering()
    adaptive = s.adaptive(initial=300, plateau=2.0, interval=0.5)
    s.succeed(adaptive, 300, 1.5)
    adaptive.on_throttle(0.0)
    rates = []
    for _ in range(20):  # 10 s without a 429
        s.succeed(adaptive, adaptive.rate, 0.5)
        rates.append(adaptive.rate)
    assert rates[-1] > 300
    growth = [b / a for a, b in itertools.pairwise(rates)]
    assert max(growth) <= 2.0  # never faster than slow start


def probing_starts_after(s: Steering, adaptive: AdaptiveRate, limit: float) -> float:
    """Seconds of steady success (at the rate allowed) until the rate passes ``limit``."""
    started = s.clock.now
    while adaptive.rate <= limit:
        s.succeed(adaptive, adaptive.rate, 0.5)
        assert s.clock.now - started < 300, "never probed"
    return s.clock.now - started


def test_cuts_in_a_row_before_the_rate_came_back_do_not_lengthen_the_plateau() -> None:
    s = Steering()
    adaptive = s.adaptive(initial=2000, plateau=2.0, interval=0.5, reaction_window=0.1)
    for _ in range(5):  # the start: the server's initial bucket runs out, cut after cut
        s.succeed(adaptive, min(adaptive.rate, 1400), 1.2)
        adaptive.on_throttle(0.05)
    estimate = adaptive.estimate  # each cut measured within `confirm` of the one before
    assert estimate is not None and estimate < 1400
    # The approach and a 2 s plateau; it was 35 s when each of those cuts "confirmed".
    assert probing_starts_after(s, adaptive, estimate) < 6.0


def test_the_same_limit_met_again_after_coming_back_probes_less_often() -> None:
    s = Steering()
    adaptive = s.adaptive(initial=300, plateau=2.0, interval=0.5)
    s.succeed(adaptive, 300, 1.5)
    adaptive.on_throttle(0.0)
    first = probing_starts_after(s, adaptive, 300)
    s.succeed(adaptive, 300, 1.0)  # the server still takes 300/s: a 429 at the same level
    adaptive.on_throttle(0.0)
    assert adaptive.estimate == pytest.approx(300, rel=0.05)
    # The plateau doubled to 4 s (the approach back is a little shorter than the first).
    assert probing_starts_after(s, adaptive, 300) >= first + 1.0


def test_a_different_limit_starts_again_from_the_first_plateau() -> None:
    s = Steering()
    adaptive = s.adaptive(initial=300, plateau=2.0, interval=0.5)
    s.succeed(adaptive, 300, 1.5)
    adaptive.on_throttle(0.0)
    for _ in range(3):  # the same limit confirmed three times: a 16 s plateau
        probing_starts_after(s, adaptive, 300)
        s.succeed(adaptive, 300, 1.0)
        adaptive.on_throttle(0.0)
    s.succeed(adaptive, 150, 1.0)  # then the server takes half: a new limit
    adaptive.on_throttle(0.0)
    estimate = adaptive.estimate
    assert estimate is not None and estimate < 200
    assert probing_starts_after(s, adaptive, estimate) < 6.0  # not 16 s under it


def test_refused_at_the_start_slow_start_stops_just_under_that_rate_then_probes() -> None:
    s = Steering()
    adaptive = s.adaptive(initial=1_000_000, max_cut=0.5, margin=0.05, plateau=2.0)
    s.clock.now = 5.0  # the campaign starts a while after the limiter was built
    for _ in range(64):  # 64 calls at once: 30 accepted, the rest refused (a burst limit)
        assert finishes_without_suspending(s.limiter.acquire())
    s.clock.now += 0.01
    for _ in range(30):
        adaptive.on_success(1)
    adaptive.on_throttle(1.0)
    assert adaptive.estimate is None  # nothing measured yet
    refused_at = 64 / 0.25  # 64 calls over at least a quarter window
    s.clock.now += 1.0  # the pause
    rates = [adaptive.rate]
    while adaptive.rate < refused_at * 0.95 and len(rates) < 20:  # slow start ...
        s.succeed(adaptive, adaptive.rate, 0.25)
        rates.append(adaptive.rate)
    assert all(b <= 2 * a for a, b in itertools.pairwise(rates))
    assert rates[-1] == pytest.approx(refused_at * 0.95)  # ... stops just under it
    # No plateau on a guess: it probes above it at once, slowly at first.
    steps = []
    for _ in range(4):  # an increase every half interval until something is measured
        before = adaptive.rate
        s.succeed(adaptive, before, 0.25)
        steps.append(adaptive.rate / before)
    assert steps[0] == pytest.approx(1.02) and steps[1] > steps[0]


def test_a_long_retry_after_holds_the_rate_under_the_limit_ten_times_as_long() -> None:
    s = Steering()
    short = s.adaptive(initial=300, plateau=2.0, interval=0.5)
    s.succeed(short, 300, 1.5)
    short.on_throttle(0.0)
    held_short = probing_starts_after(s, short, 300)
    s = Steering()
    long = s.adaptive(initial=300, plateau=2.0, interval=0.5)
    s.succeed(long, 300, 1.5)
    long.on_throttle(1.0)  # each probe past the limit would stop every sender for 1 s
    s.clock.now += 1.0
    held_long = probing_starts_after(s, long, 300)
    assert held_short < 6.0
    assert held_long >= 10.0 and held_long < 15.0


# -- AdaptiveRate against a simulated server ---------------------------------------------------


class SimulatedServer:
    """A token bucket of targets the client is not told about; 429 + Retry-After."""

    def __init__(self, clock: VirtualClock, rate: float, burst: float, style: str) -> None:
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = clock()
        self._style = style

    def admit(self, weight: float) -> float | None:
        """None when accepted, else the Retry-After in seconds it announces."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        needed = min(weight, self._burst)
        if self._tokens >= needed:
            self._tokens -= weight
            return None
        wait = (needed - self._tokens) / self._rate
        if self._style == "seconds":
            return float(math.ceil(wait))
        return math.ceil(wait * 1000) / 1000


@dataclass
class SimulationResult:
    goodput: float
    """Accepted targets per second over the whole run, ramp-up included."""
    throttled_share: float
    calls: int


def simulate(
    limit: float,
    initial: float,
    *,
    style: str = "seconds",
    weight: float = 1,
    duration: float = 20.0,
    in_flight: int = 64,
    rtt: float = 0.004,
) -> SimulationResult:
    """A campaign runner as the SDK's: cooldown, limiter, call; 429s paused and retried."""

    async def main(clock: VirtualClock) -> SimulationResult:
        server = SimulatedServer(clock, limit, limit, style)
        limiter = TokenBucket(initial, clock=clock, sleep=fake_sleep)
        adaptive = AdaptiveRate(limiter, clock=clock)
        cooldown = Cooldown(clock=clock, sleep=fake_sleep)
        jitter = random.Random(7)
        accepted = 0.0
        calls = throttled = 0

        async def worker() -> None:
            nonlocal accepted, calls, throttled
            while True:
                await cooldown.wait()
                await limiter.acquire(weight)
                if clock() >= duration:
                    return
                calls += 1
                await asyncio.sleep(rtt / 2 * jitter.uniform(0.5, 1.5))
                retry_after = server.admit(weight)
                await asyncio.sleep(rtt / 2 * jitter.uniform(0.5, 1.5))
                if retry_after is None:
                    accepted += weight
                    adaptive.on_success(weight)
                else:
                    throttled += 1
                    adaptive.on_throttle(retry_after)
                    cooldown.pause(retry_after)

        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return SimulationResult(accepted / duration, throttled / max(1, calls), calls)

    return run_virtual(main)


SCENARIOS = [
    # (limit, initial, Retry-After style, targets per call)
    (300, 50, "seconds", 1),
    (300, 2000, "seconds", 1),
    (300, 1_000_000, "seconds", 1),
    (300, 50, "fractional", 1),
    (300, 2000, "fractional", 1),
    (300, 2000, "fractional", 10),
    (100, 2000, "fractional", 1),
    (1000, 50, "seconds", 1),
    (1000, 2000, "seconds", 10),
]


@pytest.mark.parametrize(("limit", "initial", "style", "weight"), SCENARIOS)
def test_adaptive_finds_an_untold_limit_with_high_goodput_and_few_429s(
    limit: float, initial: float, style: str, weight: float
) -> None:
    result = simulate(limit, initial, style=style, weight=weight)
    assert result.goodput >= 0.9 * limit
    assert result.throttled_share <= 0.05
