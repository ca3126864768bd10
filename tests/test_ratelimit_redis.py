"""SharedRateLimit against a real redis-server: the script's arithmetic, processes sharing
one key, the shared pause, Redis going away, and no token in Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from proactive_async import AdaptiveTuning, RateLimitBackend
from proactive_async.ratelimit import SharedRateLimit, default_limit_key
from proactive_async.ratelimit._redis import SHARED_START


@pytest.fixture
def key() -> str:
    return f"test:{uuid.uuid4().hex}"


@pytest.fixture
async def shared(redis_server: Any, key: str) -> AsyncIterator[SharedRateLimit]:
    limit = SharedRateLimit(redis_server.url, key=key, rate=100.0, burst=5.0)
    yield limit
    await limit.aclose()


def test_the_default_key_names_the_host_and_channel_and_nothing_else() -> None:
    key = default_limit_key("https://user:secret@api.example.com:8443/x", 7)
    assert key == "proactive-async:limit:api.example.com:channel:7"
    assert default_limit_key("http://127.0.0.1:9", None).endswith(":channel:any")


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        SharedRateLimit("redis://127.0.0.1:1/0", key="k", rate=0)
    with pytest.raises(ValueError, match="on_redis_error"):
        SharedRateLimit("redis://127.0.0.1:1/0", key="k", on_redis_error="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="processes"):
        SharedRateLimit("redis://127.0.0.1:1/0", key="k", processes=0)


async def test_it_is_a_rate_limit_backend(shared: SharedRateLimit) -> None:
    assert isinstance(shared, RateLimitBackend)
    assert "fixed" in repr(shared)


async def slot(shared: SharedRateLimit, start: float, weight: float) -> float:
    """When a reservation of ``weight`` may go, in seconds from ``start``: the wait the
    script gives plus the time already gone, so a slow machine between calls does not
    show as a shorter wait."""
    sent = time.monotonic() - start
    granted, wait = await shared._call("acquire", weight)
    assert granted  # a reservation, not a pause
    return sent + wait


async def test_reservations_are_spaced_by_weight_over_rate_and_a_new_key_starts_empty(
    shared: SharedRateLimit,
) -> None:
    """Without sleeping: each reservation's slot is weight / rate after the last."""
    start = time.monotonic()
    slots = [await slot(shared, start, 1.0) for _ in range(6)]
    # An empty bucket of 5 at 100/s: the first slot is 1/100 s away, then 1/100 s apart.
    for index, at in enumerate(slots):
        assert at == pytest.approx(0.01 * (index + 1), abs=0.004)
    heavy = await slot(shared, start, 10.0)
    assert heavy == pytest.approx(0.06 + 0.10 - 0.05, abs=0.006)


async def test_a_weight_above_the_burst_waits_for_a_full_bucket_then_leaves_debt(
    shared: SharedRateLimit,
) -> None:
    start = time.monotonic()
    first = await slot(shared, start, 50.0)  # burst is 5
    assert first == pytest.approx(0.05, abs=0.004)  # until the empty bucket is full
    after = await slot(shared, start, 1.0)
    assert after == pytest.approx(0.05 + 0.50 - 0.05 + 0.01, abs=0.006)  # paid back first


async def test_a_429_pauses_every_instance_on_the_key_and_empties_the_bucket(
    redis_server: Any, key: str
) -> None:
    first = SharedRateLimit(redis_server.url, key=key, rate=10.0)
    second = SharedRateLimit(redis_server.url, key=key, rate=10.0)
    try:
        await first.on_throttle(1.0, 0.3)
        granted, wait = await second._call("acquire", 1.0)
        assert not granted and wait == pytest.approx(0.3, abs=0.05)
        started = time.monotonic()
        await second.acquire(1.0)
        # The pause, then one slot of an empty bucket (1/10 s), not a burst.
        assert time.monotonic() - started >= 0.35
        _, wait = await second._call("acquire", 1.0)
        assert wait == pytest.approx(0.1, abs=0.03)
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_503_pauses_every_instance(redis_server: Any, key: str) -> None:
    first = SharedRateLimit(redis_server.url, key=key, rate=1000.0)
    second = SharedRateLimit(redis_server.url, key=key, rate=1000.0)
    try:
        await first.on_busy(0.2)
        granted, wait = await second._call("acquire", 1.0)
        assert not granted and 0.1 < wait <= 0.2
    finally:
        await first.aclose()
        await second.aclose()


async def test_one_congestion_event_cuts_a_shared_adaptive_rate_once(
    redis_server: Any, key: str
) -> None:
    tuning = AdaptiveTuning(noise_share=0.0)
    limits = [SharedRateLimit(redis_server.url, key=key, tuning=tuning) for _ in range(3)]
    try:
        for limit in limits:
            for _ in range(50):
                await limit._call("acquire", 1.0)
        await limits[0].on_throttle(1.0, 0.05)
        cut_once = limits[0].rate
        assert cut_once is not None and cut_once < SHARED_START
        for limit in limits[1:]:  # the same event, heard by the other processes
            await limit.on_throttle(1.0, 0.05)
            assert limit.rate == cut_once
    finally:
        for limit in limits:
            await limit.aclose()


async def test_rare_429s_do_not_cut_a_shared_adaptive_rate(redis_server: Any, key: str) -> None:
    limit = SharedRateLimit(redis_server.url, key=key)
    try:
        await limit._tell("report", 500.0, 500)  # 500 accepted calls in the window
        assert await limit.on_throttle(1.0, 0.01) is False
        assert limit.rate == SHARED_START
    finally:
        await limit.aclose()


_WORKER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from proactive_async.ratelimit import SharedRateLimit

    async def main():
        url, key, count, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
        limit = SharedRateLimit(url, key=key, rate=100.0, burst=10.0)
        while time.time() < start:
            await asyncio.sleep(0.001)
        stamps = []
        for _ in range(count):
            await limit.acquire(1.0)
            stamps.append(time.time())
        await limit.aclose()
        print(json.dumps(stamps))

    asyncio.run(main())
    """
)


def test_three_processes_on_one_key_share_one_rate(redis_server: Any, key: str) -> None:
    """3 x 60 grants at 100/s for all: ~1.8 s in all, no 1 s window above rate + burst."""
    start = time.time() + 1.0
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, redis_server.url, key, "60", repr(start)],
            stdout=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    stamps: list[float] = []
    per_process = []
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0
        mine = json.loads(out)
        per_process.append(mine)
        stamps.extend(mine)
    stamps.sort()
    assert len(stamps) == 180
    assert stamps[-1] - stamps[0] >= (180 - 10) / 100 * 0.95
    for index, stamp in enumerate(stamps):
        in_window = sum(1 for other in stamps[index:] if other < stamp + 1.0)
        assert in_window <= 100 + 10 + 2, f"{in_window} grants within 1 s"
    # Fair enough: no process finished long before the others (none starved).
    ends = sorted(mine[-1] for mine in per_process)
    assert ends[-1] - ends[0] < 0.5


async def test_with_redis_gone_acquire_waits_and_resumes_when_it_is_back(
    redis_server: Any, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    limit = SharedRateLimit(redis_server.url, key=key, rate=1000.0)
    try:
        await limit.acquire(1.0)
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="proactive_async"):
            waiter = asyncio.create_task(limit.acquire(1.0))
            await asyncio.sleep(0.5)
            assert not waiter.done()  # never unpaced
            await asyncio.to_thread(redis_server.start)
            await asyncio.wait_for(waiter, 10)
        messages = [r.getMessage() for r in caplog.records]
        assert any("Redis unavailable" in m and "waiting" in m for m in messages)
        assert any("Redis is back" in m for m in messages)
    finally:
        if redis_server._process is None:
            redis_server.start()
        await limit.aclose()


async def test_with_redis_gone_the_local_fallback_paces_at_a_share_of_the_rate(
    redis_server: Any, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    limit = SharedRateLimit(
        redis_server.url, key=key, rate=40.0, on_redis_error="local", processes=4
    )
    try:
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="proactive_async"):
            started = time.monotonic()
            for _ in range(6):  # 10/s locally, bucket of 10 starting full
                await limit.acquire(1.0)
            assert time.monotonic() - started < 5
        assert limit._fallback is not None and limit._fallback.rate == 10.0
        assert any("pacing locally at 1/4" in r.getMessage() for r in caplog.records)
    finally:
        redis_server.start()
        await limit.aclose()


async def test_a_campaign_through_a_shared_limit_writes_no_token_to_redis(
    redis_server: Any, key: str, tmp_path: Path
) -> None:
    from proactive_async import AsyncClient, Campaign, ProactiveConversationRequest
    from proactive_async.simulator import Simulator, SimulatorConfig

    token = "sk-live-" + uuid.uuid4().hex
    config = SimulatorConfig(token=token)
    numbers = [f"+55119{index:08d}" for index in range(40)]
    limit = SharedRateLimit(redis_server.url, key=key, rate=2000.0)
    async with Simulator(config) as sim, AsyncClient(sim.url, token) as client:
        campaign = Campaign(
            client,
            template=ProactiveConversationRequest(
                channel_id=1, bot_id=2, conversation_template_id=3
            ),
            targets=numbers,
            chunk_size=4,
            rate_limit=limit,
        )
        summary = await campaign.run()
    await limit.aclose()
    assert summary.targets_sent == 40
    client_redis = aioredis.Redis.from_url(redis_server.url)
    try:
        dump = b""
        async for name in client_redis.scan_iter("*"):
            dump += (
                name
                + json.dumps(
                    {k.decode(): v.decode() for k, v in (await client_redis.hgetall(name)).items()}
                ).encode()
            )
    finally:
        await client_redis.aclose()
    assert key.encode() in dump
    assert token.encode() not in dump and token[8:20].encode() not in dump


async def test_a_new_adaptive_group_starts_modest_and_doubles_at_most_every_quarter_second(
    redis_server: Any, key: str
) -> None:
    clock = _Clock()
    limit = SharedRateLimit(redis_server.url, key=key, clock=clock)
    try:
        for _ in range(60):  # the group is using its rate: slow start may double it
            await limit._call("acquire", 1.0)
        clock.now += 0.3
        await limit._tell("report", 60.0, 60)
        assert limit.rate == 2 * SHARED_START
        clock.now += 0.1
        await limit._tell("report", 1.0, 1)
        assert limit.rate == 2 * SHARED_START  # not again within a quarter second
    finally:
        await limit.aclose()


class _Clock:
    """Seconds that move only when told (the script reads them instead of Redis TIME)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_an_adaptive_state_this_version_cannot_read_starts_the_law_again(
    redis_server: Any, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = _Clock()
    limit = SharedRateLimit(redis_server.url, key=key, clock=clock)
    try:
        await limit._call("acquire", 1.0)
        await limit._redis.hset(key, "law", '{"rate": "not a number"}')
        clock.now += 0.1
        with caplog.at_level("WARNING", logger="proactive_async"):
            await limit._tell("report", 1.0, 1)
        assert "starting again" in caplog.text
        law = msgspec.json.decode(await limit._redis.hget(key, "law"))
        assert law["rate"] == SHARED_START  # a fresh state, committed
    finally:
        await limit.aclose()
