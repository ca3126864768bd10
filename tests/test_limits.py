"""RateLimiter, Cooldown and AdaptiveRate, all on virtual time.

Every test runs on an event loop whose clock is virtual: when nothing is ready to run,
the loop jumps its clock to the next timer instead of blocking. ``asyncio.sleep`` (or the
injected ``fake_sleep``, which goes through the task path of the limiter) therefore
advances the fake clock exactly, and the results do not depend on the machine's speed.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from _virtual_time import VirtualClock, run_virtual

from proactive_async._limits import AdaptiveRate, AdaptiveTuning, Cooldown, RateLimiter

T = TypeVar("T")


async def fake_sleep(seconds: float) -> None:
    """An injected sleep (not ``asyncio.sleep`` itself, so the limiter uses a task)."""
    await asyncio.sleep(seconds)


SLEEPS = pytest.mark.parametrize("sleep", [fake_sleep, asyncio.sleep], ids=["injected", "loop"])


async def acquire_at(limiter: RateLimiter, clock: VirtualClock, weight: float = 1.0) -> float:
    await limiter.acquire(weight)
    return clock()


def finishes_without_suspending(awaitable: Any) -> bool:
    """True when a coroutine runs to its end on the first step (no await that yields)."""
    try:
        awaitable.send(None)
    except StopIteration:
        return True
    awaitable.close()
    return False


def suspends(make: Callable[[], Any]) -> bool:
    """True when the coroutine ``make()`` returns has to wait (checked inside a loop)."""

    async def main(_: VirtualClock) -> bool:
        return not finishes_without_suspending(make())

    return run_virtual(main)


# -- RateLimiter -----------------------------------------------------------------------------


def test_acquire_with_tokens_available_does_not_suspend() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(10, 5, clock=clock)
    # No running loop at all: the fast path creates no task, future or sleep.
    assert all(finishes_without_suspending(limiter.acquire()) for _ in range(5))
    assert suspends(limiter.acquire)


def test_granted_counts_the_weight_handed_out_on_both_paths() -> None:
    async def main(clock: VirtualClock) -> float:
        limiter = RateLimiter(10, 5, clock=clock, sleep=fake_sleep)
        await limiter.acquire(5)  # at once
        await limiter.acquire(2.5)  # after a wait
        waiter = asyncio.create_task(limiter.acquire(3))
        await asyncio.sleep(0.1)
        waiter.cancel()  # cancelled while waiting: nothing handed out
        await asyncio.gather(waiter, return_exceptions=True)
        return limiter.granted

    assert run_virtual(main) == 7.5


def test_default_burst_is_one_second_and_at_least_one() -> None:
    assert RateLimiter(500).burst == 500
    assert RateLimiter(0.2).burst == 1
    assert RateLimiter(500, 50).burst == 50


@pytest.mark.parametrize(
    ("rate", "burst"), [(0, None), (-1, None), (math.inf, None), (math.nan, None), (10, 0)]
)
def test_invalid_rate_or_burst_is_refused(rate: float, burst: float | None) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)


@pytest.mark.parametrize("weight", [-1.0, math.nan, math.inf])
def test_invalid_weight_is_refused(weight: float) -> None:
    limiter = RateLimiter(10)
    with pytest.raises(ValueError):
        finishes_without_suspending(limiter.acquire(weight))


@SLEEPS
def test_bucket_refills_at_rate_after_the_burst(sleep: Any) -> None:
    async def main(clock: VirtualClock) -> list[float]:
        limiter = RateLimiter(10, 5, clock=clock, sleep=sleep)
        return [await acquire_at(limiter, clock) for _ in range(8)]

    times = run_virtual(main)
    assert times[:5] == [0.0] * 5
    assert times[5:] == pytest.approx([0.1, 0.2, 0.3])


def test_saved_tokens_are_capped_at_burst() -> None:
    async def main(clock: VirtualClock) -> list[float]:
        limiter = RateLimiter(10, 5, clock=clock, sleep=fake_sleep)
        await asyncio.sleep(60)  # idle for a minute: still only 5 saved
        return [await acquire_at(limiter, clock) - 60 for _ in range(7)]

    times = run_virtual(main)
    assert times[:5] == [0.0] * 5
    assert times[5:] == pytest.approx([0.1, 0.2])


def test_weighted_acquire_waits_for_its_whole_weight() -> None:
    async def main(clock: VirtualClock) -> list[float]:
        limiter = RateLimiter(10, 10, clock=clock, sleep=fake_sleep)
        return [await acquire_at(limiter, clock, w) for w in (10, 4, 0.5)]

    assert run_virtual(main) == pytest.approx([0.0, 0.4, 0.45])


def test_waiters_are_served_in_arrival_order_and_a_big_one_is_not_starved() -> None:
    async def main(clock: VirtualClock) -> list[tuple[str, float]]:
        limiter = RateLimiter(10, 10, clock=clock, sleep=fake_sleep)
        await limiter.acquire(10)
        done: list[tuple[str, float]] = []

        async def one(name: str, weight: float, delay: float) -> None:
            await asyncio.sleep(delay)
            await limiter.acquire(weight)
            done.append((name, clock()))

        # The big call arrives first; small ones keep arriving and would each fit sooner.
        smalls = [one(f"small{i}", 1, 0.01 * (i + 1)) for i in range(4)]
        await asyncio.gather(one("big", 8, 0.0), *smalls)
        return done

    done = run_virtual(main)
    assert [name for name, _ in done] == ["big", "small0", "small1", "small2", "small3"]
    assert [t for _, t in done] == pytest.approx([0.8, 0.9, 1.0, 1.1, 1.2])


def test_weight_above_burst_is_admitted_from_a_full_bucket_and_leaves_debt() -> None:
    async def main(clock: VirtualClock) -> list[float]:
        limiter = RateLimiter(10, 5, clock=clock, sleep=fake_sleep)
        first = await acquire_at(limiter, clock, 20)  # full bucket: admitted, 15 in debt
        second = await acquire_at(limiter, clock, 1)  # 16 tokens to refill
        await limiter.acquire(4)  # bucket at 0 (refilled 0.4 s later)
        third = await acquire_at(limiter, clock, 20)  # waits only until the bucket is full
        return [first, second, third]

    assert run_virtual(main) == pytest.approx([0.0, 1.6, 2.5])


@SLEEPS
def test_set_rate_up_mid_wait_shortens_the_current_wait(sleep: Any) -> None:
    async def main(clock: VirtualClock) -> float:
        limiter = RateLimiter(1, 1, clock=clock, sleep=sleep)
        await limiter.acquire()
        waiter = asyncio.create_task(acquire_at(limiter, clock))
        await asyncio.sleep(0.1)  # 0.1 token saved at 1/s
        limiter.set_rate(10)  # the remaining 0.9 token takes 0.09 s
        assert limiter.rate == 10
        return await waiter

    assert run_virtual(main) == pytest.approx(0.19)


def test_set_rate_down_mid_wait_lengthens_the_current_wait() -> None:
    async def main(clock: VirtualClock) -> float:
        limiter = RateLimiter(10, 10, clock=clock, sleep=fake_sleep)
        await limiter.acquire(10)
        waiter = asyncio.create_task(acquire_at(limiter, clock, 2))
        await asyncio.sleep(0.1)  # 1 of 2 tokens saved
        limiter.set_rate(1)  # the other one takes 1 s
        return await waiter

    assert run_virtual(main) == pytest.approx(1.1)


def test_default_burst_follows_set_rate_and_saved_tokens_shrink_with_it() -> None:
    async def main(clock: VirtualClock) -> list[float]:
        limiter = RateLimiter(100, clock=clock, sleep=fake_sleep)
        limiter.set_rate(10)
        assert limiter.burst == 10
        return [await acquire_at(limiter, clock) for _ in range(11)]

    times = run_virtual(main)
    assert times[:10] == [0.0] * 10
    assert times[10] == pytest.approx(0.1)


def test_cancelled_head_waiter_takes_nothing_and_the_next_goes_on() -> None:
    async def main(clock: VirtualClock) -> list[float]:
        limiter = RateLimiter(10, 10, clock=clock, sleep=fake_sleep)
        await limiter.acquire(10)
        head = asyncio.create_task(limiter.acquire(10))
        second = asyncio.create_task(acquire_at(limiter, clock, 1))
        await asyncio.sleep(0.25)
        head.cancel()
        with pytest.raises(asyncio.CancelledError):
            await head
        first_after = await second  # 2.5 tokens were saved: goes at once
        # The cancelled waiter took nothing: 1.5 tokens remain, the next 2 need 0.05 s.
        return [first_after, await acquire_at(limiter, clock, 2)]

    assert run_virtual(main) == pytest.approx([0.25, 0.3])


def test_cancelled_middle_waiter_leaves_the_line_without_blocking_it() -> None:
    async def main(clock: VirtualClock) -> list[float]:
        limiter = RateLimiter(10, 10, clock=clock, sleep=fake_sleep)
        await limiter.acquire(10)
        first = asyncio.create_task(acquire_at(limiter, clock, 1))
        middle = asyncio.create_task(limiter.acquire(5))
        last = asyncio.create_task(acquire_at(limiter, clock, 1))
        await asyncio.sleep(0.05)
        middle.cancel()
        await asyncio.gather(middle, return_exceptions=True)
        return [await first, await last]

    assert run_virtual(main) == pytest.approx([0.1, 0.2])


def test_waiter_cancelled_right_after_being_woken_takes_nothing() -> None:
    async def main(clock: VirtualClock) -> float:
        limiter = RateLimiter(1, 1, clock=clock, sleep=fake_sleep)
        await limiter.acquire()
        head = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0.5)
        limiter.set_rate(1000)  # wakes the head ...
        head.cancel()  # ... which is cancelled before it runs again
        await asyncio.gather(head, return_exceptions=True)
        assert head.cancelled()
        # A full token is there (0.5 saved + refill at 1000/s): nothing was taken by head.
        return await acquire_at(limiter, clock, 1)

    assert run_virtual(main) == pytest.approx(0.5, abs=1e-3)


def test_a_failing_injected_sleep_is_raised_by_the_waiting_acquire() -> None:
    async def broken_sleep(seconds: float) -> None:
        raise OSError("no sleep today")

    async def main(clock: VirtualClock) -> None:
        limiter = RateLimiter(10, 1, clock=clock, sleep=broken_sleep)
        await limiter.acquire()
        with pytest.raises(OSError, match="no sleep today"):
            await limiter.acquire()

    run_virtual(main)


def test_drain_empties_the_bucket_and_holds_refill_until_the_given_time() -> None:
    async def main(clock: VirtualClock) -> list[float]:
        limiter = RateLimiter(10, 10, clock=clock, sleep=fake_sleep)
        await limiter.acquire(10)
        waiter = asyncio.create_task(acquire_at(limiter, clock, 1))
        await asyncio.sleep(0.05)
        limiter.drain(until=1.0)  # the waiter re-plans: refill starts again at t=1
        first = await waiter
        await asyncio.sleep(0.5)  # 5 tokens saved ...
        limiter.drain()  # ... and thrown away
        return [first, await acquire_at(limiter, clock, 1)]

    assert run_virtual(main) == pytest.approx([1.1, 1.7])


@SLEEPS
@pytest.mark.parametrize("weight", [1, 10])
def test_500_per_second_for_10_seconds_is_accurate_with_no_window_above_rate_plus_burst(
    sleep: Any, weight: int
) -> None:
    rate, burst, total, workers = 500.0, 50.0, 5000, 64

    async def main(clock: VirtualClock) -> list[float]:
        limiter = RateLimiter(rate, burst, clock=clock, sleep=sleep)
        stamps: list[float] = []
        left = total // weight

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await limiter.acquire(weight)
                stamps.extend([clock()] * weight)
                await asyncio.sleep(0.003)  # the call itself

        await asyncio.gather(*(worker() for _ in range(workers)))
        return stamps

    stamps = sorted(run_virtual(main))
    steady = (len(stamps) - burst) / (stamps[-1] - stamps[0])
    assert steady == pytest.approx(rate, rel=0.02)
    busiest = max(bisect.bisect_left(stamps, t + 1.0) - i for i, t in enumerate(stamps))
    assert busiest <= rate + burst


# -- Cooldown ------------------------------------------------------------------------------


def test_cooldown_wait_returns_at_once_when_not_paused() -> None:
    cooldown = Cooldown(clock=VirtualClock())
    assert cooldown.remaining() == 0.0
    assert finishes_without_suspending(cooldown.wait())


def test_cooldown_pause_extends_but_never_shortens() -> None:
    clock = VirtualClock()
    cooldown = Cooldown(clock=clock)
    cooldown.pause(2.0)
    cooldown.pause(0.5)
    assert cooldown.remaining() == 2.0
    clock.now = 1.0
    cooldown.pause(3.0)
    assert cooldown.remaining() == 3.0
    cooldown.pause(-5.0)
    assert cooldown.remaining() == 3.0
    assert cooldown.count == 4
    clock.now = 10.0
    assert cooldown.remaining() == 0.0
    with pytest.raises(ValueError):
        cooldown.pause(math.nan)


@SLEEPS
def test_cooldown_wait_sleeps_to_the_end_and_honours_an_extension(sleep: Any) -> None:
    async def main(clock: VirtualClock) -> list[float]:
        cooldown = Cooldown(clock=clock, sleep=sleep)
        cooldown.pause(1.0)

        async def waiter() -> float:
            await cooldown.wait()
            return clock()

        first = asyncio.create_task(waiter())
        await asyncio.sleep(0.5)
        cooldown.pause(1.5)  # now until 2.0
        late = asyncio.create_task(waiter())
        return list(await asyncio.gather(first, late))

    assert run_virtual(main) == [2.0, 2.0]


# -- AdaptiveRate: unit behaviour ------------------------------------------------------------


@dataclass
class Steering:
    clock: VirtualClock = field(default_factory=VirtualClock)
    limiter: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(100, clock=self.clock)

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
        limiter = RateLimiter(initial, clock=clock, sleep=fake_sleep)
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
