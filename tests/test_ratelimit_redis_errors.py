"""A shared limit's Redis that answers with an error stops at once; one that is away is
waited for (or paced locally at a share, from the first second), and says so (issue 18)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from proactive_async import ProactiveError
from proactive_async.ratelimit import SharedLimitError, SharedRateLimit

PASSWORD = "s3cret-pass"


def configure(url: str, *command: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.execute_command(*command)
    finally:
        client.close()


class NotRedis:
    """A TCP server that answers every connection as an HTTP server would."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        self.url = f"redis://127.0.0.1:{self._sock.getsockname()[1]}/0"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def not_redis() -> Iterator[NotRedis]:
    server = NotRedis()
    yield server
    server.close()


async def refused(url: str) -> SharedLimitError:
    """The error the first acquire raises, within a few seconds (never a wait)."""
    limit = SharedRateLimit(url, key="test:errors", rate=100.0)
    started = time.monotonic()
    try:
        with pytest.raises(SharedLimitError) as caught:
            await asyncio.wait_for(limit.acquire(1.0), 10)
        assert time.monotonic() - started < 5
        # Latched: every later acquire raises it too, at once, and reports are no crash.
        with pytest.raises(SharedLimitError):
            await limit.acquire(1.0)
        await limit.on_success(1.0)
        assert await limit.on_throttle(1.0, 1.0) is False
        assert limit.problem is None  # not an outage: the error says why
    finally:
        await limit.aclose()
    error = caught.value
    assert isinstance(error, ProactiveError)
    assert error.fatal and not error.may_have_been_processed
    assert "Redis" in error.message and PASSWORD not in str(error)
    return error


async def test_a_missing_password_is_fatal_at_once_and_says_so(own_redis: Any) -> None:
    configure(own_redis.url, "CONFIG", "SET", "requirepass", PASSWORD)
    error = await refused(own_redis.url)
    assert "asks for a password" in error.message


async def test_a_wrong_password_is_fatal_and_never_shown(own_redis: Any) -> None:
    configure(own_redis.url, "CONFIG", "SET", "requirepass", "the-right-one")
    url = own_redis.url.replace("redis://", f"redis://:{PASSWORD}@")
    error = await refused(url)
    assert "refused the password" in error.message
    assert ":***@" in error.message  # the URL is named, its password hidden


async def test_a_redis_out_of_memory_is_fatal(own_redis: Any) -> None:
    configure(own_redis.url, "CONFIG", "SET", "maxmemory-policy", "noeviction")
    configure(own_redis.url, "CONFIG", "SET", "maxmemory", "1")
    error = await refused(own_redis.url)
    assert "out of memory" in error.message


async def test_a_read_only_replica_is_fatal(own_redis: Any, redis_server: Any) -> None:
    configure(own_redis.url, "REPLICAOF", "127.0.0.1", str(redis_server.port))
    error = await refused(own_redis.url)
    assert "read-only replica" in error.message


async def test_a_url_naming_something_that_is_not_redis_is_fatal(not_redis: NotRedis) -> None:
    error = await refused(not_redis.url)
    assert "does not answer as Redis does" in error.message


async def test_while_redis_is_away_problem_says_the_limit_waits_for_it(own_redis: Any) -> None:
    url = own_redis.url.replace("redis://", f"redis://:{PASSWORD}@")
    configure(own_redis.url, "CONFIG", "SET", "requirepass", PASSWORD)
    limit = SharedRateLimit(url, key="test:away", rate=1000.0)
    try:
        await limit.acquire(1.0)
        assert limit.problem is None
        own_redis.stop()
        waiter = asyncio.create_task(limit.acquire(1.0))
        await asyncio.sleep(0.5)
        assert not waiter.done()  # never unpaced
        problem = limit.problem
        assert problem is not None
        assert "unreachable (connection refused)" in problem and "waiting for it" in problem
        assert PASSWORD not in problem and ":***@" in problem
        # Back with its password from the first moment (a CONFIG SET after the start raced
        # the waiting acquire, which met a Redis without a password: fatal, rightly).
        own_redis.extra = ("--requirepass", PASSWORD)
        await asyncio.to_thread(own_redis.start)
        await asyncio.wait_for(waiter, 10)
        assert limit.problem is None
    finally:
        await limit.aclose()


async def test_the_local_fallback_keeps_to_its_share_from_the_first_second(
    own_redis: Any,
) -> None:
    """Redis stopped, 200 targets/s for 2 processes: this one grants 100 in its first second
    (it granted 201: its bucket started full), and says it paces locally."""
    own_redis.stop()
    limit = SharedRateLimit(
        own_redis.url, key="test:fallback", rate=200.0, on_redis_error="local", processes=2
    )
    grants: list[float] = []

    async def sender() -> None:
        while True:
            await limit.acquire(1.0)
            grants.append(time.monotonic())

    try:
        started = time.monotonic()
        senders = [asyncio.create_task(sender()) for _ in range(32)]
        await asyncio.sleep(1.5)
        problem = limit.problem
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
    finally:
        await limit.aclose()
    first_second = sum(1 for stamp in grants if stamp < started + 1.0)
    assert 80 <= first_second <= 102, first_second
    assert problem is not None and "pacing locally at 100 targets/s" in problem
