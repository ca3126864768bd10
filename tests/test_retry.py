"""What is retried, how long the client waits, and when it stops. No real sleeps: the waits
are recorded by an injected ``sleep`` that advances an injected ``clock``."""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from conftest import FakeTime

from proactive_async import (
    AsyncClient,
    BadRequestError,
    ClientStateError,
    ConnectError,
    ConnectionLostError,
    ConnectTimeout,
    DecodingError,
    HTTPStatusError,
    ProactiveError,
    RateLimitError,
    ReadTimeout,
    RetryPolicy,
    ServerError,
    ServiceUnavailableError,
    is_safe_to_retry,
    parse_retry_after,
)
from proactive_async._retry import retry_call

BASE = "http://api.test"
URL = BASE + "/api/Conversation/proactive-conversation"
OK_BODY = b'[{"id": 1}]'


def refused() -> aiohttp.ClientConnectorError:
    # A stand-in ConnectionKey: the error reads only host, port and ssl from it.
    key: Any = SimpleNamespace(host="api.test", port=80, ssl=True)
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))


@pytest.fixture
def mocked(mock_api: aioresponses) -> aioresponses:
    return mock_api


@pytest.fixture
async def client(fake_time: FakeTime) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(
        BASE,
        "tok",
        sleep=fake_time.sleep,
        clock=fake_time.clock,
        retry=RetryPolicy(jitter=0.0),
    ) as c:
        yield c


def posts(mocked: Any) -> int:
    return sum(len(calls) for (method, _), calls in mocked.requests.items() if method == "POST")


# --- safe failures are retried by default ---------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        {"exception": refused()},
        {"exception": aiohttp.ConnectionTimeoutError()},
        {"status": 429},
        {"status": 503},
    ],
    ids=["connect-refused", "connect-timeout", "429", "503"],
)
async def test_a_safe_failure_is_retried_by_default(
    mocked: Any, client: AsyncClient, fake_time: FakeTime, failure: dict[str, Any]
) -> None:
    mocked.post(URL, **failure)
    mocked.post(URL, **failure)
    mocked.post(URL, body=OK_BODY)
    response = await client.create_proactive_conversation_with_response(channel_id=1)
    assert response.attempts == 3
    assert [c.id for c in response.value] == [1]
    assert fake_time.sleeps == [0.5, 1.0]
    assert posts(mocked) == 3


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        ({"status": 500}, ServerError),
        ({"status": 502}, ServerError),
        ({"status": 504}, ServerError),
        ({"exception": aiohttp.SocketTimeoutError()}, ReadTimeout),
        ({"exception": TimeoutError()}, ReadTimeout),
        ({"exception": aiohttp.ServerDisconnectedError()}, ConnectionLostError),
        ({"exception": aiohttp.ClientPayloadError("truncated")}, ConnectionLostError),
        ({"body": b"<html>oops</html>"}, DecodingError),
        ({"body": b'{"not": "an array"}'}, DecodingError),
    ],
    ids=[
        "500",
        "502",
        "504",
        "sock-read",
        "total-timeout",
        "disconnected",
        "payload",
        "html-2xx",
        "object-2xx",
    ],
)
async def test_an_ambiguous_failure_is_not_retried_by_default(
    mocked: Any,
    client: AsyncClient,
    fake_time: FakeTime,
    failure: dict[str, Any],
    error: type[ProactiveError],
) -> None:
    mocked.post(URL, **failure)
    mocked.post(URL, body=OK_BODY)
    with pytest.raises(error) as info:
        await client.create_proactive_conversation(channel_id=1)
    assert info.value.may_have_been_processed is True
    assert info.value.attempts == 1
    assert fake_time.sleeps == []
    assert posts(mocked) == 1


@pytest.mark.parametrize(
    "failure",
    [
        {"status": 500},
        {"status": 502},
        {"status": 504},
        {"exception": aiohttp.SocketTimeoutError()},
        {"exception": aiohttp.ServerDisconnectedError()},
        {"body": b"not json"},
    ],
    ids=["500", "502", "504", "read-timeout", "connection-lost", "undecodable-2xx"],
)
async def test_an_ambiguous_failure_is_retried_when_the_caller_opts_in(
    mocked: Any, client: AsyncClient, fake_time: FakeTime, failure: dict[str, Any]
) -> None:
    mocked.post(URL, **failure)
    mocked.post(URL, body=OK_BODY)
    policy = RetryPolicy(retry_ambiguous=True, jitter=0.0)
    response = await client.create_proactive_conversation_with_response(retry=policy, channel_id=1)
    assert response.attempts == 2
    assert fake_time.sleeps == [0.5]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 418, 422, 301, 307])
@pytest.mark.parametrize("ambiguous", [False, True])
async def test_other_4xx_and_3xx_are_never_retried(
    mocked: Any, client: AsyncClient, fake_time: FakeTime, status: int, ambiguous: bool
) -> None:
    mocked.post(URL, status=status, headers={"Location": "http://elsewhere.test/"})
    mocked.post(URL, body=OK_BODY)
    with pytest.raises(HTTPStatusError) as info:
        await client.create_proactive_conversation(
            retry=RetryPolicy(retry_ambiguous=ambiguous), channel_id=1
        )
    assert info.value.status == status
    assert info.value.may_have_been_processed is False
    assert info.value.attempts == 1
    assert fake_time.sleeps == []
    assert posts(mocked) == 1


# --- Retry-After ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "wait"), [("2", 2.0), ("0.25", 0.25), ("0", 0.0), ("  7 ", 7.0)]
)
@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_seconds_set_the_wait(
    mocked: Any, client: AsyncClient, fake_time: FakeTime, header: str, wait: float, status: int
) -> None:
    mocked.post(URL, status=status, headers={"Retry-After": header})
    mocked.post(URL, body=OK_BODY)
    response = await client.create_proactive_conversation_with_response(channel_id=1)
    assert fake_time.sleeps == [wait]
    assert response.attempts == 2


async def test_retry_after_as_an_http_date_sets_the_wait(
    mocked: Any, client: AsyncClient, fake_time: FakeTime
) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    mocked.post(URL, status=429, headers={"Retry-After": when})
    mocked.post(URL, body=OK_BODY)
    await client.create_proactive_conversation(channel_id=1)
    [wait] = fake_time.sleeps
    assert 28.0 <= wait <= 30.5


async def test_an_unreadable_retry_after_falls_back_to_backoff(
    mocked: Any, client: AsyncClient, fake_time: FakeTime
) -> None:
    mocked.post(URL, status=429, headers={"Retry-After": "soon"})
    mocked.post(URL, body=OK_BODY)
    await client.create_proactive_conversation(channel_id=1)
    assert fake_time.sleeps == [0.5]


async def test_a_retry_after_past_the_cap_stops_and_raises_the_429_with_its_wait(
    mocked: Any, client: AsyncClient, fake_time: FakeTime
) -> None:
    mocked.post(URL, status=429, headers={"Retry-After": "600"})
    mocked.post(URL, body=OK_BODY)
    with pytest.raises(RateLimitError) as info:
        await client.create_proactive_conversation(
            retry=RetryPolicy(max_retry_after=60.0), channel_id=1
        )
    assert info.value.retry_after == 600.0
    assert info.value.attempts == 1
    assert info.value.may_have_been_processed is False
    assert fake_time.sleeps == []
    assert posts(mocked) == 1


async def test_an_http_date_far_ahead_passes_the_cap(
    mocked: Any, client: AsyncClient, fake_time: FakeTime
) -> None:
    mocked.post(URL, status=503, headers={"Retry-After": "Fri, 01 Jan 2100 00:00:00 GMT"})
    with pytest.raises(ServiceUnavailableError) as info:
        await client.create_proactive_conversation(channel_id=1)
    assert info.value.retry_after is not None and info.value.retry_after > 1e9
    assert fake_time.sleeps == []


async def test_a_wait_past_the_deadline_stops_and_raises_the_429(
    mocked: Any, client: AsyncClient, fake_time: FakeTime
) -> None:
    """deadline=10, Retry-After 4: attempts at t=0, 4, 8; the next would start at 12."""
    mocked.post(URL, status=429, headers={"Retry-After": "4"}, repeat=True)
    with pytest.raises(RateLimitError) as info:
        await client.create_proactive_conversation(
            retry=RetryPolicy(deadline=10.0, max_attempts=10), channel_id=1
        )
    assert fake_time.sleeps == [4.0, 4.0]
    assert info.value.attempts == 3
    assert info.value.retry_after == 4.0
    assert posts(mocked) == 3


async def test_without_a_deadline_only_max_attempts_stops(
    mocked: Any, client: AsyncClient, fake_time: FakeTime
) -> None:
    mocked.post(URL, status=429, headers={"Retry-After": "100"}, repeat=True)
    with pytest.raises(RateLimitError) as info:
        await client.create_proactive_conversation(
            retry=RetryPolicy(deadline=None, max_attempts=4), channel_id=1
        )
    assert fake_time.sleeps == [100.0] * 3
    assert info.value.attempts == 4


# --- backoff and attempt budget -------------------------------------------------------


async def test_max_attempts_bounds_the_attempts_and_the_error_counts_them(
    mocked: Any, client: AsyncClient, fake_time: FakeTime
) -> None:
    mocked.post(URL, status=503, repeat=True)
    with pytest.raises(ServiceUnavailableError) as info:
        await client.create_proactive_conversation(
            retry=RetryPolicy(max_attempts=3, jitter=0.0), channel_id=1
        )
    assert info.value.attempts == 3
    assert posts(mocked) == 3
    assert fake_time.sleeps == [0.5, 1.0]


async def test_backoff_doubles_up_to_its_maximum(
    mocked: Any, client: AsyncClient, fake_time: FakeTime
) -> None:
    mocked.post(URL, exception=refused(), repeat=True)
    policy = RetryPolicy(max_attempts=7, deadline=None, backoff_max=5.0, jitter=0.0)
    with pytest.raises(ConnectError) as info:
        await client.create_proactive_conversation(retry=policy, channel_id=1)
    assert fake_time.sleeps == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert info.value.attempts == 7
    assert info.value.may_have_been_processed is False


def test_backoff_adds_jitter_within_its_bound() -> None:
    policy = RetryPolicy(backoff_initial=1.0, backoff_max=100.0, jitter=0.5)
    waits = [policy.backoff(3) for _ in range(200)]
    assert all(4.0 <= w <= 4.5 for w in waits)
    assert len(set(waits)) > 100  # random, not a constant


def test_a_never_policy_makes_one_attempt() -> None:
    assert RetryPolicy.never().max_attempts == 1


async def test_a_never_policy_does_not_retry_a_safe_failure(
    mocked: Any, client: AsyncClient, fake_time: FakeTime
) -> None:
    mocked.post(URL, status=503)
    mocked.post(URL, body=OK_BODY)
    with pytest.raises(ServiceUnavailableError) as info:
        await client.create_proactive_conversation(retry=RetryPolicy.never(), channel_id=1)
    assert info.value.attempts == 1
    assert fake_time.sleeps == []


async def test_the_client_default_policy_applies_when_the_call_names_none(
    mocked: Any, fake_time: FakeTime
) -> None:
    mocked.post(URL, status=503)
    mocked.post(URL, body=OK_BODY)
    async with AsyncClient(
        BASE, "tok", retry=RetryPolicy.never(), sleep=fake_time.sleep, clock=fake_time.clock
    ) as client:
        with pytest.raises(ServiceUnavailableError):
            await client.create_proactive_conversation(channel_id=1)


async def test_a_retry_is_logged_at_warning_with_the_error_kind(
    mocked: Any, client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    mocked.post(URL, status=503)
    mocked.post(URL, body=OK_BODY)
    with caplog.at_level(logging.WARNING, logger="proactive_async"):
        await client.create_proactive_conversation(channel_id=1)
    assert any(
        "attempt 1 failed (ServiceUnavailableError); retrying in 0.50s" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"deadline": 0.0}, {"deadline": -1.0}])
def test_an_invalid_policy_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


# --- the classification, directly -----------------------------------------------------


@pytest.mark.parametrize(
    ("error", "safe"),
    [
        (ConnectError("x"), True),
        (ConnectTimeout("x"), True),
        (RateLimitError("x", status=429), True),
        (ServiceUnavailableError("x", status=503), True),
        (ServerError("x", status=500), False),
        (ReadTimeout("x"), False),
        (ConnectionLostError("x"), False),
        (DecodingError("x"), False),
        (BadRequestError("x", status=400), False),
        (ClientStateError("x"), False),
    ],
)
def test_is_safe_to_retry_names_only_certainly_unprocessed_failures(
    error: ProactiveError, safe: bool
) -> None:
    assert is_safe_to_retry(error) is safe
    assert RetryPolicy().should_retry(error) is safe


def test_should_retry_refuses_foreign_exceptions_and_client_misuse() -> None:
    policy = RetryPolicy(retry_ambiguous=True)
    assert policy.should_retry(RuntimeError("bug")) is False
    assert policy.should_retry(ClientStateError("closed")) is False
    assert policy.should_retry(BadRequestError("x", status=400)) is False
    assert policy.should_retry(ReadTimeout("x")) is True


async def test_retry_call_lets_a_foreign_exception_through_unretried(
    fake_time: FakeTime,
) -> None:
    calls: list[int] = []

    async def attempt(number: int) -> int:
        calls.append(number)
        raise RuntimeError("a bug, not a failure")

    with pytest.raises(RuntimeError):
        await retry_call(attempt, RetryPolicy(), sleep=fake_time.sleep, clock=fake_time.clock)
    assert calls == [1]


async def test_retry_call_numbers_the_attempts(fake_time: FakeTime) -> None:
    calls: list[int] = []

    async def attempt(number: int) -> str:
        calls.append(number)
        if number < 3:
            raise ConnectError("refused")
        return "done"

    result = await retry_call(
        attempt, RetryPolicy(jitter=0.0), sleep=fake_time.sleep, clock=fake_time.clock
    )
    assert result == "done"
    assert calls == [1, 2, 3]


async def test_a_failure_after_a_retry_keeps_the_last_error_and_its_count(
    fake_time: FakeTime,
) -> None:
    """503 then 400: the 400 is raised (not retried) with attempts=2."""

    async def attempt(number: int) -> str:
        if number == 1:
            raise ServiceUnavailableError("busy", status=503)
        raise BadRequestError("bad", status=400)

    with pytest.raises(BadRequestError) as info:
        await retry_call(attempt, RetryPolicy(), sleep=fake_time.sleep, clock=fake_time.clock)
    assert info.value.attempts == 2


# --- parse_retry_after ----------------------------------------------------------------

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("3", 3.0),
        ("1.5", 1.5),
        ("-4", None),  # invalid: backoff applies, never "retry now"
        ("-0.5", None),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        (email.utils.formatdate(NOW + 90, usegmt=True), 90.0),
        (email.utils.formatdate(NOW - 90, usegmt=True), 0.0),
        (email.utils.formatdate(NOW + 60), 60.0),  # numeric zone (-0000)
        ("Tue, 14 Nov 2023 22:13:20", 0.0),  # no zone: read as UTC (NOW + 0)
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_uses_the_wall_clock_by_default() -> None:
    ahead = parse_retry_after(email.utils.formatdate(time.time() + 100, usegmt=True))
    assert ahead is not None and 98.0 <= ahead <= 100.5


@pytest.mark.parametrize(
    "fields",
    [
        {"stop_unreachable_after": 0.0},
        {"stop_unreachable_after": -1.0},
        {"stop_ambiguous_after": 0},
        {"max_retry_after": -1.0},
    ],
)
def test_the_breaker_limits_are_checked(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**fields)  # type: ignore[arg-type]


def test_the_breaker_limits_default_to_a_minute_and_fifty_and_none_turns_them_off() -> None:
    policy = RetryPolicy()
    assert (policy.stop_unreachable_after, policy.stop_ambiguous_after) == (60.0, 50)
    off = RetryPolicy(stop_unreachable_after=None, stop_ambiguous_after=None)
    assert off.stop_unreachable_after is None and off.stop_ambiguous_after is None
