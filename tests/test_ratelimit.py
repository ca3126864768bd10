"""RateLimit (the local RateLimitBackend), report_failure, and AsyncClient(rate_limit=...).

Pacing tests run on an event loop whose clock is virtual: when nothing is ready, the
loop jumps its clock to the next timer, so waits are exact and take no real time. The
client tests fake HTTP with aioresponses and record what a backend is told.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from _virtual_time import VirtualClock, run_virtual
from aioresponses import aioresponses
from conftest import FakeTime

from proactive_async import AsyncClient, RateLimitError, RetryPolicy
from proactive_async._errors import (
    AuthenticationError,
    BadRequestError,
    ConnectError,
    ProactiveError,
    ReadTimeout,
    ServerError,
    ServiceUnavailableError,
)
from proactive_async.ratelimit import AdaptiveTuning, RateLimit, RateLimitBackend, report_failure
from proactive_async.ratelimit._local import ADAPTIVE_START

BASE = "http://api.test"
URL = BASE + "/api/Conversation/proactive-conversation"
TOKEN = "tok-S3CRET-ratelimit-5b4a3c2d1e"
PHONES = ["+5511910000001", "+5511910000002", "+5511910000003"]
OK_BODY = json.dumps([{"id": i, "messages": [{"to": p}]} for i, p in enumerate(PHONES)]).encode()
POLICY = RetryPolicy(max_attempts=3, deadline=None, backoff_initial=0.5, jitter=0.0)


# -- virtual time --------------------------------------------------------------------------


async def virtual_sleep(seconds: float) -> None:
    """An injected sleep (so the limiter takes its task path); the loop moves the clock."""
    await asyncio.sleep(seconds)


def limit_on(clock: VirtualClock, rate: float | None = None, **kwargs: Any) -> RateLimit:
    return RateLimit(rate, clock=clock, sleep=virtual_sleep, **kwargs)


async def times_of(limit: RateLimit, clock: VirtualClock, weights: list[float]) -> list[float]:
    """When each acquire, made one after the other, was granted."""
    granted = []
    for weight in weights:
        await limit.acquire(weight)
        granted.append(clock())
    return granted


class StillClock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


# -- a recording backend ---------------------------------------------------------------------


class RecordingLimit:
    """A RateLimitBackend that records what it is told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    async def acquire(self, weight: float = 1.0) -> None:
        self.events.append(("acquire", weight))

    async def on_success(self, weight: float) -> None:
        self.events.append(("on_success", weight))

    async def on_throttle(self, weight: float, retry_after: float | None) -> bool:
        self.events.append(("on_throttle", weight, retry_after))
        return True

    async def on_busy(self, seconds: float) -> None:
        self.events.append(("on_busy", seconds))

    async def aclose(self) -> None:
        pass

    @property
    def rate(self) -> float | None:
        return None


# -- the protocol ----------------------------------------------------------------------------


def test_rate_limit_and_a_recording_fake_are_rate_limit_backends() -> None:
    assert isinstance(RateLimit(), RateLimitBackend)
    assert isinstance(RateLimit(10), RateLimitBackend)
    assert isinstance(RecordingLimit(), RateLimitBackend)


def test_an_object_missing_a_method_is_not_a_rate_limit_backend() -> None:
    class OnlyAcquire:
        async def acquire(self, weight: float = 1.0) -> None:
            pass

    assert not isinstance(OnlyAcquire(), RateLimitBackend)


def test_a_backend_without_aclose_is_not_a_rate_limit_backend() -> None:
    """Callers close every limit through the protocol, never by probing for ``aclose``."""

    class NoClose(RecordingLimit):
        aclose = None  # type: ignore[assignment]

    assert not isinstance(NoClose(), RateLimitBackend)


async def test_a_local_rate_limit_closes_as_a_no_op_and_stays_usable() -> None:
    async with RateLimit(1000) as limit:
        await limit.acquire(1.0)
    await limit.aclose()
    await limit.acquire(1.0)  # nothing was released: a closed local limit still paces


def test_the_ratelimit_package_all_is_sorted_and_resolves() -> None:
    import proactive_async.ratelimit as package

    assert package.__all__ == sorted(package.__all__)
    for name in package.__all__:
        assert getattr(package, name) is not None, name


@pytest.mark.parametrize(
    "kwargs",
    [{"rate": -5.0}, {"calls_per_second": -1.0}, {"rate": 10.0, "burst": 0.0}],
    ids=["negative-rate", "negative-calls", "zero-burst"],
)
def test_a_rate_that_is_not_positive_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimit(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"rate": 0.0}, {"calls_per_second": 0.0}], ids=["zero-rate", "zero-calls"]
)
def test_a_zero_rate_is_refused_not_taken_as_no_limit(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimit(**kwargs)


# -- pacing ------------------------------------------------------------------------------------


def test_a_fixed_rate_paces_weights_at_that_rate() -> None:
    async def main(clock: VirtualClock) -> tuple[list[float], RateLimit]:
        limit = limit_on(clock, 10, burst=5)
        return await times_of(limit, clock, [5, 5, 5, 2]), limit

    granted, limit = run_virtual(main)
    # A full bucket of 5, then 5 targets per half second, then 2 targets in 0.2 s.
    assert granted == pytest.approx([0.0, 0.5, 1.0, 1.2])
    assert limit.rate == 10 and not limit.adaptive


def test_a_fixed_rate_with_no_burst_saves_up_one_second() -> None:
    async def main(clock: VirtualClock) -> list[float]:
        limit = limit_on(clock, 4)
        return await times_of(limit, clock, [1, 1, 1, 1, 1, 1])

    assert run_virtual(main) == pytest.approx([0, 0, 0, 0, 0.25, 0.5])


def test_no_rate_is_adaptive_starting_very_high_and_dropping_after_429s() -> None:
    async def main(clock: VirtualClock) -> tuple[float | None, float | None, bool]:
        limit = limit_on(clock)
        before = limit.rate
        # A run of 429s with no success between them: a limit, not noise.
        for _ in range(5):
            await limit.on_throttle(1.0, None)
        return before, limit.rate, limit.adaptive

    before, after, adaptive = run_virtual(main)
    assert adaptive
    assert before == ADAPTIVE_START
    assert after is not None and after < ADAPTIVE_START


def test_a_fixed_rate_stays_put_after_a_throttle() -> None:
    async def main(clock: VirtualClock) -> float | None:
        limit = limit_on(clock, 10)
        await limit.on_throttle(1.0, 1.0)
        return limit.rate

    assert run_virtual(main) == 10


def test_a_rate_with_adaptive_on_is_the_ceiling() -> None:
    async def main(clock: VirtualClock) -> tuple[bool, float | None, float | None]:
        limit = limit_on(clock, 50, adaptive=True)
        start = limit.rate
        # Plenty of accepted calls: the rate would grow, but never past the ceiling.
        for _ in range(40):
            await limit.acquire(5)
            await limit.on_success(5)
        return limit.adaptive, start, limit.rate

    adaptive, start, end = run_virtual(main)
    assert adaptive
    assert start == 50 and end == 50


# -- the shared pause --------------------------------------------------------------------------


def test_a_throttle_with_retry_after_makes_the_next_acquires_wait_it_out() -> None:
    async def main(clock: VirtualClock) -> tuple[float, list[float]]:
        limit = limit_on(clock, 1000)
        await limit.on_throttle(3.0, 2.0)
        paused = limit.paused
        # Two senders sharing the limit both wait for the pause to end.
        granted = await asyncio.gather(times_of(limit, clock, [1.0]), times_of(limit, clock, [1.0]))
        return paused, [t for pair in granted for t in pair]

    paused, granted = run_virtual(main)
    assert paused == pytest.approx(2.0)
    assert granted == pytest.approx([2.0, 2.0])


async def test_paused_counts_down_and_ends_at_zero() -> None:
    clock = StillClock()
    limit = RateLimit(1000, clock=clock)
    assert limit.paused == 0.0
    await limit.on_throttle(1.0, 2.0)
    clock.now += 0.5
    assert limit.paused == pytest.approx(1.5)
    clock.now += 5
    assert limit.paused == 0.0


@pytest.mark.parametrize(
    ("rate", "weight", "pause"),
    [
        (10.0, 1.0, 0.2),  # two calls' worth of tokens
        (10.0, 100.0, 0.25),  # capped
        (1000.0, 1.0, 0.01),  # floored
        (None, 1.0, 0.01),  # adaptive, starting near-unlimited
    ],
)
async def test_a_429_without_retry_after_pauses_a_short_bounded_time(
    rate: float | None, weight: float, pause: float
) -> None:
    clock = StillClock()
    # Every 429 is the limit here (noise has its own test below).
    limit = RateLimit(rate, clock=clock, tuning=AdaptiveTuning(noise_share=0.0))
    assert await limit.on_throttle(weight, None) is True
    assert limit.paused == pytest.approx(pause)


async def test_a_rare_429_is_noise_for_an_adaptive_limit_and_pauses_nobody() -> None:
    clock = StillClock()
    limit = RateLimit(clock=clock)
    for _ in range(100):
        await limit.on_success(1.0)
    assert await limit.on_throttle(1.0, 2.0) is False
    assert limit.paused == 0.0 and limit.rate == ADAPTIVE_START
    fixed = RateLimit(100.0, clock=clock)  # a fixed rate has no noise: every 429 pauses
    assert await fixed.on_throttle(1.0, 2.0) is True
    assert fixed.paused == pytest.approx(2.0)


async def test_a_longer_pause_is_not_shortened_by_a_later_one() -> None:
    clock = StillClock()
    limit = RateLimit(1000, clock=clock)
    await limit.on_throttle(1.0, 5.0)
    await limit.on_throttle(1.0, 1.0)
    await limit.on_busy(0.5)
    assert limit.paused == pytest.approx(5.0)


def test_busy_pauses_every_sender() -> None:
    async def main(clock: VirtualClock) -> tuple[float, list[float]]:
        limit = limit_on(clock, 1000)
        await limit.on_busy(3.0)
        paused = limit.paused
        return paused, await times_of(limit, clock, [1.0, 1.0])

    paused, granted = run_virtual(main)
    assert paused == pytest.approx(3.0)
    assert granted == pytest.approx([3.0, 3.0])


# -- calls per second and start_empty ----------------------------------------------------------


@pytest.mark.parametrize("weight", [1.0, 100.0])
def test_calls_per_second_counts_calls_not_targets(weight: float) -> None:
    async def main(clock: VirtualClock) -> list[float]:
        limit = limit_on(clock, 100_000, calls_per_second=2)
        return await times_of(limit, clock, [weight] * 4)

    # Far below the targets rate either way: the calls bucket (2 a second) decides.
    assert run_virtual(main) == pytest.approx([0.0, 0.0, 0.5, 1.0])


def test_start_empty_empties_a_fixed_rate_bucket() -> None:
    async def main(clock: VirtualClock) -> tuple[list[float], list[float]]:
        full = limit_on(clock, 10)
        empty = limit_on(clock, 10)
        empty.start_empty()
        start = clock()
        full_times = await times_of(full, clock, [5])
        empty_times = await times_of(empty, clock, [5])
        return [t - start for t in full_times], [t - start for t in empty_times]

    full, empty = run_virtual(main)
    assert full == pytest.approx([0.0])
    assert empty == pytest.approx([0.5])


def test_start_empty_leaves_an_adaptive_bucket_alone() -> None:
    async def main(clock: VirtualClock) -> float:
        limit = limit_on(clock, 10, adaptive=True)
        await asyncio.sleep(1.0)  # idle: the bucket refills to its one second's worth
        limit.start_empty()
        start = clock()
        await limit.acquire(5)
        return clock() - start

    assert run_virtual(main) == pytest.approx(0.0)


# -- report_failure ----------------------------------------------------------------------------


def _throttled(retry_after: float | None) -> RateLimitError:
    return RateLimitError("slow down", status=429, retry_after=retry_after)


def _busy(retry_after: float | None) -> ServiceUnavailableError:
    return ServiceUnavailableError("busy", status=503, retry_after=retry_after)


@pytest.mark.parametrize(
    ("exc", "told"),
    [
        pytest.param(_throttled(1.5), [("on_throttle", 3.0, 1.5)], id="429"),
        pytest.param(_throttled(None), [("on_throttle", 3.0, None)], id="429-no-retry-after"),
        pytest.param(_throttled(120.0), [("on_throttle", 3.0, 120.0)], id="429-at-the-cap"),
        pytest.param(_throttled(120.5), [], id="429-past-the-cap"),
        pytest.param(_busy(4.0), [("on_busy", 4.0)], id="503"),
        # No Retry-After: the policy's backoff for attempt 2.
        pytest.param(_busy(None), [("on_busy", 1.0)], id="503-no-retry-after"),
        pytest.param(_busy(600.0), [], id="503-past-the-cap"),
        pytest.param(ConnectError("refused"), [], id="connect"),
        pytest.param(ReadTimeout("no answer"), [], id="read-timeout"),
        pytest.param(ServerError("boom", status=500), [], id="500"),
        pytest.param(BadRequestError("bad", status=400), [], id="400"),
        pytest.param(AuthenticationError("bad token", status=401), [], id="401"),
    ],
)
async def test_report_failure_tells_the_limit_of_429s_and_503s_only(
    exc: ProactiveError, told: list[tuple[Any, ...]]
) -> None:
    limit = RecordingLimit()
    policy = RetryPolicy(max_retry_after=120.0, backoff_initial=0.5, jitter=0.0)
    await report_failure(limit, exc, 3.0, policy, 2)
    assert limit.events == told


async def test_report_failure_pauses_a_real_rate_limit() -> None:
    clock = StillClock()
    limit = RateLimit(1000, clock=clock)
    await report_failure(limit, _throttled(7.0), 1.0, POLICY, 1)
    assert limit.paused == pytest.approx(7.0)
    capped = RateLimit(1000, clock=clock)
    await report_failure(capped, _throttled(POLICY.max_retry_after + 1), 1.0, POLICY, 1)
    assert capped.paused == 0.0


# -- AsyncClient(rate_limit=...) ---------------------------------------------------------------


def _client(
    limit: RateLimitBackend, fake_time: FakeTime, retry: RetryPolicy = POLICY
) -> AsyncClient:
    return AsyncClient(
        BASE, TOKEN, rate_limit=limit, retry=retry, sleep=fake_time.sleep, clock=fake_time.clock
    )


async def test_a_call_with_three_recipients_acquires_weight_three_and_reports_its_success(
    mock_api: aioresponses, fake_time: FakeTime
) -> None:
    mock_api.post(URL, status=201, body=OK_BODY)
    limit = RecordingLimit()
    async with _client(limit, fake_time) as client:
        conversations = await client.create_proactive_conversation(
            channel_id=1, bot_id=2, conversation_template_id=3, recipient=PHONES
        )
    assert len(conversations) == 3
    assert limit.events == [("acquire", 3.0), ("on_success", 3.0)]


async def test_recipients_and_contact_ids_both_weigh_and_an_empty_call_weighs_one(
    mock_api: aioresponses, fake_time: FakeTime
) -> None:
    mock_api.post(URL, status=201, body=b"[]", repeat=True)
    limit = RecordingLimit()
    async with _client(limit, fake_time) as client:
        await client.create_proactive_conversation(
            channel_id=1, recipient=PHONES[:2], contact_ids=[7, 8, 9]
        )
        await client.create_proactive_conversation(channel_id=1)
    assert [e for e in limit.events if e[0] == "acquire"] == [("acquire", 5.0), ("acquire", 1.0)]


async def test_a_429_is_reported_before_the_retry_acquires_again(
    mock_api: aioresponses, fake_time: FakeTime
) -> None:
    mock_api.post(URL, status=429, headers={"Retry-After": "1.5"})
    mock_api.post(URL, status=201, body=OK_BODY)
    limit = RecordingLimit()
    async with _client(limit, fake_time) as client:
        await client.create_proactive_conversation(channel_id=1, recipient=PHONES)
    assert limit.events == [
        ("acquire", 3.0),
        ("on_throttle", 3.0, 1.5),
        ("acquire", 3.0),
        ("on_success", 3.0),
    ]


async def test_a_503_on_the_client_is_reported_as_busy(
    mock_api: aioresponses, fake_time: FakeTime
) -> None:
    mock_api.post(URL, status=503, headers={"Retry-After": "2"})
    mock_api.post(URL, status=201, body=OK_BODY)
    limit = RecordingLimit()
    async with _client(limit, fake_time) as client:
        await client.create_proactive_conversation(channel_id=1, recipient=PHONES)
    assert limit.events == [
        ("acquire", 3.0),
        ("on_busy", 2.0),
        ("acquire", 3.0),
        ("on_success", 3.0),
    ]


async def test_a_client_retry_after_past_the_cap_raises_and_pauses_nobody(
    mock_api: aioresponses, fake_time: FakeTime
) -> None:
    mock_api.post(URL, status=429, headers={"Retry-After": "3600"})
    limit = RecordingLimit()
    async with _client(limit, fake_time) as client:
        with pytest.raises(RateLimitError) as info:
            await client.create_proactive_conversation(channel_id=1, recipient=PHONES)
    assert info.value.retry_after == 3600
    assert limit.events == [("acquire", 3.0)]
    assert fake_time.sleeps == []


async def test_a_failure_that_is_not_429_or_503_tells_the_limit_nothing(
    mock_api: aioresponses, fake_time: FakeTime
) -> None:
    mock_api.post(URL, status=400, body=b'{"title": "bad"}')
    limit = RecordingLimit()
    async with _client(limit, fake_time) as client:
        with pytest.raises(BadRequestError):
            await client.create_proactive_conversation(channel_id=1, recipient=PHONES)
    assert limit.events == [("acquire", 3.0)]


async def test_a_429_on_the_client_pauses_a_shared_rate_limit(
    mock_api: aioresponses, fake_time: FakeTime
) -> None:
    mock_api.post(URL, status=429, headers={"Retry-After": "2"})
    shared = RateLimit(1000, clock=fake_time.clock, sleep=fake_time.sleep)
    async with _client(shared, fake_time, retry=RetryPolicy.never()) as client:
        with pytest.raises(RateLimitError):
            await client.create_proactive_conversation(channel_id=1, recipient=PHONES)
    # Another sender sharing the limit now waits out the server's Retry-After.
    assert shared.paused == pytest.approx(2.0)
    await shared.acquire(1.0)
    assert fake_time.sleeps == pytest.approx([2.0])


async def test_a_backend_hears_only_numbers_never_the_token_or_the_recipients(
    mock_api: aioresponses, fake_time: FakeTime
) -> None:
    """What a (possibly shared, remote) backend is told cannot carry the request's secrets."""
    mock_api.post(URL, status=429, headers={"Retry-After": "0.5"}, body=TOKEN.encode())
    mock_api.post(URL, status=201, body=OK_BODY)
    limit = RecordingLimit()
    shared = RateLimit(1000)
    async with _client(limit, fake_time) as client:
        await client.create_proactive_conversation(channel_id=1, recipient=PHONES)
        assert TOKEN not in repr(client)
    arguments = [argument for event in limit.events for argument in event[1:]]
    assert arguments and all(isinstance(a, float) or a is None for a in arguments)
    assert TOKEN not in repr(shared) and repr(shared) == "RateLimit(rate=1000.0, fixed)"
