"""The adaptive law (``ratelimit/_law.py``) in its two homes, one table of scenarios.

Each scenario is a server limit the client is not told (a token bucket, 429 with or
without Retry-After) and a group of senders on virtual time: one process with every call
in flight on a local ``RateLimit``, or three processes on one ``SharedRateLimit`` through a
real redis-server (the script's clock is the virtual one; each Redis exchange runs on a
thread of its own while virtual time stands still, so the result does not depend on the
machine). Both homes must meet the same marks: goodput, 429 share, and the time from a
cold start to 90% of the limit.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import pytest
from _pacing import fake_sleep
from _virtual_time import VirtualClock, run_virtual

from proactive_async.ratelimit import AdaptiveTuning, RateLimit, SharedRateLimit
from proactive_async.ratelimit._law import CallCounts, Law, Reading

T = TypeVar("T")


class Server:
    """A token bucket of targets the client is not told about."""

    def __init__(self, clock: VirtualClock, rate: float, burst: float, style: str) -> None:
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = clock()
        self._style = style

    def admit(self, weight: float) -> tuple[bool, float | None]:
        """(accepted, the Retry-After it announces when refused)."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= weight:
            self._tokens -= weight
            return True, None
        wait = (weight - self._tokens) / self._rate
        if self._style == "none":  # nginx limit_req: no Retry-After at all
            return False, None
        if self._style == "one":  # nginx limit_req with a fixed Retry-After: 1
            return False, 1.0
        if self._style == "seconds":
            return False, float(math.ceil(wait))
        return False, math.ceil(wait * 1000) / 1000


class Home(Protocol):
    async def acquire(self, sender: int, weight: float) -> None: ...
    async def on_success(self, sender: int, weight: float) -> None: ...
    async def on_throttle(self, sender: int, weight: float, retry_after: float | None) -> bool: ...


class LocalHome:
    """One process: every sender shares one local RateLimit (its pause included)."""

    def __init__(self, clock: VirtualClock, tuning: AdaptiveTuning) -> None:
        self.limit = RateLimit(tuning=tuning, clock=clock, sleep=fake_sleep)

    async def acquire(self, sender: int, weight: float) -> None:
        await self.limit.acquire(weight)

    async def on_success(self, sender: int, weight: float) -> None:
        await self.limit.on_success(weight)

    async def on_throttle(self, sender: int, weight: float, retry_after: float | None) -> bool:
        return await self.limit.on_throttle(weight, retry_after)


class SharedHome:
    """``processes`` SharedRateLimits on one key; each Redis exchange runs on a real loop
    in a thread while the virtual loop waits for it (virtual time stands still)."""

    def __init__(self, url: str, clock: VirtualClock, tuning: AdaptiveTuning, processes: int):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        key = f"law:{uuid.uuid4().hex}"
        self._offset = 1000.0  # the script's clock must not start at 0 (0: Redis TIME)

        def script_clock() -> float:
            return clock() + self._offset

        self._clock = clock
        self.limits = [
            self._run(self._build(url, key, tuning, script_clock)) for _ in range(processes)
        ]
        self._jitter = random.Random(3)

    @staticmethod
    async def _build(url: str, key: str, tuning: AdaptiveTuning, clock: Any) -> SharedRateLimit:
        return SharedRateLimit(url, key=key, tuning=tuning, clock=clock)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def acquire(self, sender: int, weight: float) -> None:
        # SharedRateLimit.acquire's loop, its sleeps on virtual time.
        limit = self.limits[sender]
        while True:
            granted, wait = self._run(limit._call("acquire", weight))
            if granted:
                if wait > 0:
                    await asyncio.sleep(wait)
                return
            await asyncio.sleep(wait + self._jitter.uniform(0, 0.01))

    async def on_success(self, sender: int, weight: float) -> None:
        self._run(self.limits[sender].on_success(weight))

    async def on_throttle(self, sender: int, weight: float, retry_after: float | None) -> bool:
        return self._run(self.limits[sender].on_throttle(weight, retry_after))

    def close(self) -> None:
        for limit in self.limits:
            self._run(limit.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@dataclass
class Run:
    accepted: list[tuple[float, float]] = field(default_factory=list)
    calls: int = 0
    throttled: int = 0
    first_refusal: float = math.inf

    def goodput(self, duration: float) -> float:
        return sum(weight for _, weight in self.accepted) / duration

    def cold_start(self, limit: float, first_refusal: float) -> float:
        """Seconds from the start until a trailing 0.5 s window that starts after the
        server's first refusal (its initial bucket spent) holds 90% of the limit."""
        times = [at for at, _ in self.accepted]
        weights = [weight for _, weight in self.accepted]
        total, low = 0.0, 0
        for high, at in enumerate(times):
            total += weights[high]
            while times[low] < at - 0.5:
                total -= weights[low]
                low += 1
            if at - 0.5 >= first_refusal and total / 0.5 >= 0.9 * limit:
                return at
        return math.inf


async def drive(
    clock: VirtualClock,
    home: Home,
    server: Server,
    *,
    senders: int,
    in_flight: int,
    weight: float,
    duration: float,
    rtt: float = 0.004,
) -> Run:
    """Each sender keeps ``in_flight`` calls going: acquire, call, tell the limit (and
    after a 429 the group's pause did not cover, wait its Retry-After)."""
    run = Run()
    jitter = random.Random(7)

    async def slot(sender: int) -> None:
        while True:
            await home.acquire(sender, weight)
            if clock() >= duration:
                return
            run.calls += 1
            await asyncio.sleep(rtt / 2 * jitter.uniform(0.5, 1.5))
            accepted, retry_after = server.admit(weight)
            await asyncio.sleep(rtt / 2 * jitter.uniform(0.5, 1.5))
            if accepted:
                run.accepted.append((clock(), weight))
                await home.on_success(sender, weight)
            else:
                run.first_refusal = min(run.first_refusal, clock())
                run.throttled += 1
                if not await home.on_throttle(sender, weight, retry_after) and retry_after:
                    # Not spared by the group's pause: the call waits its Retry-After itself,
                    # as the campaign's sender does.
                    await asyncio.sleep(retry_after)

    await asyncio.gather(
        *(slot(sender) for sender in range(senders) for _ in range(in_flight // senders))
    )
    return run


SCENARIOS = [
    # (id, server limit, Retry-After style, targets per call, the marks both homes meet:
    #  goodput share of the limit, 429 share of calls, seconds to 90% after a cold start)
    # Retry-After in whole seconds: each cut of the first storm stops everyone a second.
    ("300-seconds", 300.0, "seconds", 1.0, (0.9, 0.05, 3.0)),
    ("300-fractional", 300.0, "fractional", 1.0, (0.9, 0.05, 2.0)),
    # nginx's limit_req (a burst of a tenth of a second, no Retry-After): the first storm's
    # goodput reads low, and the climb back to the limit costs a few seconds.
    ("300-none", 300.0, "none", 1.0, (0.85, 0.05, 2.0)),
    ("1000-fractional-10", 1000.0, "fractional", 10.0, (0.9, 0.06, 2.5)),
    # nginx's limit_req answering every 429 with Retry-After: 1: the group pauses a whole
    # second at the first refusal only; later refusals (slow start's overshoot, probes
    # past the limit) stop each its own call for the second, the group for 0.1 s (with a
    # whole second each: 0.82x over 20 s).
    ("300-one-second", 300.0, "one", 1.0, (0.9, 0.05, 3.0)),
]
DURATION = 20.0
IN_FLIGHT = 96


def simulate(home_kind: str, limit: float, style: str, weight: float, url: str) -> Run:
    async def main(clock: VirtualClock) -> Run:
        tuning = AdaptiveTuning()
        # nginx's burst: a tenth of a second's worth; a bucket of one second otherwise.
        nginx = style in ("none", "one")
        server = Server(clock, limit, limit / 10 if nginx else limit, style)
        shared = SharedHome(url, clock, tuning, 3) if home_kind == "shared" else None
        home: Home = shared if shared is not None else LocalHome(clock, tuning)
        try:
            return await drive(
                clock,
                home,
                server,
                senders=3 if shared is not None else 1,
                in_flight=IN_FLIGHT,
                weight=weight,
                duration=DURATION,
            )
        finally:
            if shared is not None:
                shared.close()

    return run_virtual(main)


@pytest.mark.parametrize("home", ["local", "shared"])
@pytest.mark.parametrize(
    ("limit", "style", "weight", "marks"),
    [scenario[1:] for scenario in SCENARIOS],
    ids=[scenario[0] for scenario in SCENARIOS],
)
def test_both_homes_find_an_untold_limit_fast_with_high_goodput_and_few_429s(
    redis_server: Any,
    home: str,
    limit: float,
    style: str,
    weight: float,
    marks: tuple[float, float, float],
) -> None:
    run = simulate(home, limit, style, weight, redis_server.url)
    goodput = run.goodput(DURATION) / limit
    share = run.throttled / max(1, run.calls)
    cold = run.cold_start(limit, run.first_refusal)
    figures = f"{home}: {goodput:.3f}x, 429s {share:.1%}, cold start {cold:.2f} s"
    least_goodput, most_429s, slowest_start = marks
    assert goodput >= least_goodput, figures
    assert share <= most_429s, figures
    assert cold <= slowest_start, figures


def test_a_short_retry_after_stops_the_group_briefly_once_the_limit_is_being_measured() -> None:
    law = Law(AdaptiveTuning())
    reading = Reading(0.0, 0.0, 0.0, 0.0, CallCounts(0, 0, 0))
    state = law.start(100.0, reading)
    # The first refusal: everyone waits the whole Retry-After, however short.
    assert law.group_pause(state, 1.0) == 1.0
    assert law.on_throttle(state, Reading(0.01, 5.0, 0.0, 0.0, CallCounts(0, 1, 1)), 1.0) == "cut"
    assert state.paused_until == pytest.approx(1.01)
    # Then a second or less stops the group for the reaction window only; more is honoured.
    assert law.group_pause(state, 1.0) == pytest.approx(0.1)
    assert law.group_pause(state, 0.05) == pytest.approx(0.05)
    assert law.group_pause(state, 2.0) == 2.0


def test_a_429_the_groups_short_pause_does_not_cover_leaves_its_call_to_wait() -> None:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    limit = RateLimit(clock=lambda: now[0], sleep=sleep)
    for _ in range(20):
        asyncio.run(limit.acquire(1.0))
    # The first refusal pauses every sender for the whole second: the caller is spared.
    assert asyncio.run(limit.on_throttle(1.0, 1.0)) is True
    assert limit.paused == pytest.approx(1.0)
    now[0] += 3.0  # past the pause and its hold: accepted calls, then a run of 429s
    for _ in range(50):
        asyncio.run(limit.on_success(1.0))
    spared = [asyncio.run(limit.on_throttle(1.0, 1.0)) for _ in range(3)]
    # Two taken for noise, then the run's cut: each call waits its own Retry-After.
    assert spared == [False, False, False]
    assert 0 < limit.paused <= 0.1 + 1e-9  # the group only the reaction window
