"""TokenBucket and Cooldown (``ratelimit/_bucket.py``), on virtual time.

Every test runs on an event loop whose clock is virtual: when nothing is ready to run,
the loop jumps its clock to the next timer instead of blocking. ``asyncio.sleep`` (or the
injected ``fake_sleep``, which goes through the task path of the bucket) therefore
advances the fake clock exactly, and the results do not depend on the machine's speed.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from typing import Any

import pytest
from _pacing import fake_sleep, finishes_without_suspending, suspends
from _virtual_time import VirtualClock, run_virtual

from proactive_async.ratelimit._bucket import Cooldown, TokenBucket

SLEEPS = pytest.mark.parametrize("sleep", [fake_sleep, asyncio.sleep], ids=["injected", "loop"])


async def acquire_at(bucket: TokenBucket, clock: VirtualClock, weight: float = 1.0) -> float:
    await bucket.acquire(weight)
    return clock()


# -- TokenBucket -----------------------------------------------------------------------------


def test_acquire_with_tokens_available_does_not_suspend() -> None:
    clock = VirtualClock()
    limiter = TokenBucket(10, 5, clock=clock)
    # No running loop at all: the fast path creates no task, future or sleep.
    assert all(finishes_without_suspending(limiter.acquire()) for _ in range(5))
    assert suspends(limiter.acquire)


def test_granted_counts_the_weight_handed_out_on_both_paths() -> None:
    async def main(clock: VirtualClock) -> float:
        limiter = TokenBucket(10, 5, clock=clock, sleep=fake_sleep)
        await limiter.acquire(5)  # at once
        await limiter.acquire(2.5)  # after a wait
        waiter = asyncio.create_task(limiter.acquire(3))
        await asyncio.sleep(0.1)
        waiter.cancel()  # cancelled while waiting: nothing handed out
        await asyncio.gather(waiter, return_exceptions=True)
        return limiter.granted

    assert run_virtual(main) == 7.5


def test_default_burst_is_one_second_and_at_least_one() -> None:
    assert TokenBucket(500).burst == 500
    assert TokenBucket(0.2).burst == 1
    assert TokenBucket(500, 50).burst == 50


@pytest.mark.parametrize(
    ("rate", "burst"), [(0, None), (-1, None), (math.inf, None), (math.nan, None), (10, 0)]
)
def test_invalid_rate_or_burst_is_refused(rate: float, burst: float | None) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


@pytest.mark.parametrize("weight", [-1.0, math.nan, math.inf])
def test_invalid_weight_is_refused(weight: float) -> None:
    limiter = TokenBucket(10)
    with pytest.raises(ValueError):
        finishes_without_suspending(limiter.acquire(weight))


@SLEEPS
def test_bucket_refills_at_rate_after_the_burst(sleep: Any) -> None:
    async def main(clock: VirtualClock) -> list[float]:
        limiter = TokenBucket(10, 5, clock=clock, sleep=sleep)
        return [await acquire_at(limiter, clock) for _ in range(8)]

    times = run_virtual(main)
    assert times[:5] == [0.0] * 5
    assert times[5:] == pytest.approx([0.1, 0.2, 0.3])


def test_saved_tokens_are_capped_at_burst() -> None:
    async def main(clock: VirtualClock) -> list[float]:
        limiter = TokenBucket(10, 5, clock=clock, sleep=fake_sleep)
        await asyncio.sleep(60)  # idle for a minute: still only 5 saved
        return [await acquire_at(limiter, clock) - 60 for _ in range(7)]

    times = run_virtual(main)
    assert times[:5] == [0.0] * 5
    assert times[5:] == pytest.approx([0.1, 0.2])


def test_weighted_acquire_waits_for_its_whole_weight() -> None:
    async def main(clock: VirtualClock) -> list[float]:
        limiter = TokenBucket(10, 10, clock=clock, sleep=fake_sleep)
        return [await acquire_at(limiter, clock, w) for w in (10, 4, 0.5)]

    assert run_virtual(main) == pytest.approx([0.0, 0.4, 0.45])


def test_waiters_are_served_in_arrival_order_and_a_big_one_is_not_starved() -> None:
    async def main(clock: VirtualClock) -> list[tuple[str, float]]:
        limiter = TokenBucket(10, 10, clock=clock, sleep=fake_sleep)
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
        limiter = TokenBucket(10, 5, clock=clock, sleep=fake_sleep)
        first = await acquire_at(limiter, clock, 20)  # full bucket: admitted, 15 in debt
        second = await acquire_at(limiter, clock, 1)  # 16 tokens to refill
        await limiter.acquire(4)  # bucket at 0 (refilled 0.4 s later)
        third = await acquire_at(limiter, clock, 20)  # waits only until the bucket is full
        return [first, second, third]

    assert run_virtual(main) == pytest.approx([0.0, 1.6, 2.5])


@SLEEPS
def test_set_rate_up_mid_wait_shortens_the_current_wait(sleep: Any) -> None:
    async def main(clock: VirtualClock) -> float:
        limiter = TokenBucket(1, 1, clock=clock, sleep=sleep)
        await limiter.acquire()
        waiter = asyncio.create_task(acquire_at(limiter, clock))
        await asyncio.sleep(0.1)  # 0.1 token saved at 1/s
        limiter.set_rate(10)  # the remaining 0.9 token takes 0.09 s
        assert limiter.rate == 10
        return await waiter

    assert run_virtual(main) == pytest.approx(0.19)


def test_set_rate_down_mid_wait_lengthens_the_current_wait() -> None:
    async def main(clock: VirtualClock) -> float:
        limiter = TokenBucket(10, 10, clock=clock, sleep=fake_sleep)
        await limiter.acquire(10)
        waiter = asyncio.create_task(acquire_at(limiter, clock, 2))
        await asyncio.sleep(0.1)  # 1 of 2 tokens saved
        limiter.set_rate(1)  # the other one takes 1 s
        return await waiter

    assert run_virtual(main) == pytest.approx(1.1)


def test_default_burst_follows_set_rate_and_saved_tokens_shrink_with_it() -> None:
    async def main(clock: VirtualClock) -> list[float]:
        limiter = TokenBucket(100, clock=clock, sleep=fake_sleep)
        limiter.set_rate(10)
        assert limiter.burst == 10
        return [await acquire_at(limiter, clock) for _ in range(11)]

    times = run_virtual(main)
    assert times[:10] == [0.0] * 10
    assert times[10] == pytest.approx(0.1)


def test_cancelled_head_waiter_takes_nothing_and_the_next_goes_on() -> None:
    async def main(clock: VirtualClock) -> list[float]:
        limiter = TokenBucket(10, 10, clock=clock, sleep=fake_sleep)
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
        limiter = TokenBucket(10, 10, clock=clock, sleep=fake_sleep)
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
        limiter = TokenBucket(1, 1, clock=clock, sleep=fake_sleep)
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
        limiter = TokenBucket(10, 1, clock=clock, sleep=broken_sleep)
        await limiter.acquire()
        with pytest.raises(OSError, match="no sleep today"):
            await limiter.acquire()

    run_virtual(main)


def test_drain_empties_the_bucket_and_holds_refill_until_the_given_time() -> None:
    async def main(clock: VirtualClock) -> list[float]:
        limiter = TokenBucket(10, 10, clock=clock, sleep=fake_sleep)
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
        limiter = TokenBucket(rate, burst, clock=clock, sleep=sleep)
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
