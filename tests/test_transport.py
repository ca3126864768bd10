"""The transport against real servers on 127.0.0.1 that misbehave on purpose.

Byte-level faults (a dropped connection, a truncated body) use raw asyncio servers; the rest
use small aiohttp.web apps. Every server binds port 0 and is torn down by its test.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
from aiohttp import web
from conftest import FakeTime

from proactive_async import (
    AsyncClient,
    BadRequestError,
    ConnectError,
    ConnectionLostError,
    Limits,
    NameResolutionError,
    ReadTimeout,
    RedirectError,
    ResponseTooLargeError,
    RetryPolicy,
    ServerError,
    Timeout,
)

PATH = "/api/Conversation/proactive-conversation"
TOKEN = "tok-TRANSPORT-c0ffee"
OK = [{"id": 7, "conversationId": "c-7"}]
RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# --- servers --------------------------------------------------------------------------


@asynccontextmanager
async def raw_server(handle: RawHandler) -> AsyncIterator[str]:
    """A bare TCP server running ``handle`` per connection; yields its base URL."""
    tasks: list[asyncio.Task[None]] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        try:
            await handle(reader, writer)
        finally:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """Read one HTTP request (head and Content-Length body); return the body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return await reader.readexactly(length)


@asynccontextmanager
async def web_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[tuple[str, list[web.Request]]]:
    """An aiohttp.web app answering PATH with ``handler``; yields (base URL, requests seen)."""
    seen: list[web.Request] = []

    async def recording(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recording)
    runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def closed_port() -> int:
    """A port nothing listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def client_for(base: str, fake_time: FakeTime | None = None, **kwargs: Any) -> AsyncClient:
    if fake_time is not None:
        kwargs.setdefault("sleep", fake_time.sleep)
        kwargs.setdefault("clock", fake_time.clock)
    return AsyncClient(base, TOKEN, **kwargs)


async def ok(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.json_response(OK)


# --- the happy path, for real ---------------------------------------------------------


async def test_a_real_call_sends_headers_and_body_and_decodes_the_answer() -> None:
    async with web_server(ok) as (base, seen), client_for(base, headers={"X-Tenant": "9"}) as c:
        response = await c.create_proactive_conversation_with_response(
            channel_id=1, recipient=["+5511999990000"]
        )
    [request] = seen
    assert request.method == "POST" and request.path == PATH
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["User-Agent"].startswith("proactive-async/")
    assert request.headers["X-Tenant"] == "9"
    assert request.headers["Content-Type"] == "application/json"
    assert response.status == 200 and response.attempts == 1
    assert response.value[0].conversation_id == "c-7"
    assert 0.0 <= response.elapsed < 5.0


async def test_a_chunked_body_is_read_whole() -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        body = json.dumps(OK * 50).encode()
        for start in range(0, len(body), 100):
            await response.write(body[start : start + 100])
        await response.write_eof()
        return response

    async with web_server(chunked) as (base, _), client_for(base) as client:
        conversations = await client.create_proactive_conversation(channel_id=1)
    assert len(conversations) == 50


async def test_a_gzip_body_is_decompressed() -> None:
    async def gzipped(request: web.Request) -> web.StreamResponse:
        await request.read()
        body = gzip.compress(json.dumps(OK).encode())
        return web.Response(
            body=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
        )

    async with web_server(gzipped) as (base, _), client_for(base) as client:
        [conversation] = await client.create_proactive_conversation(channel_id=1)
    assert conversation.id == 7


async def test_connections_are_reused_between_calls() -> None:
    peers: list[object] = []

    async def ok_noting_peer(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return await ok(request)

    async with web_server(ok_noting_peer) as (base, _), client_for(base) as client:
        await client.create_proactive_conversation(channel_id=1)
        await client.create_proactive_conversation(channel_id=1)
    assert len(peers) == 2
    assert peers[0] == peers[1]  # same client port: one kept-alive connection


async def test_a_real_problem_details_answer_becomes_a_server_error() -> None:
    async def failing(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.json_response(
            {"title": "Boom", "traceId": "00-1"},
            status=500,
            content_type="application/problem+json",
        )

    async with web_server(failing) as (base, seen), client_for(base) as client:
        with pytest.raises(ServerError) as info:
            await client.create_proactive_conversation(channel_id=1)
    assert info.value.problem is not None and info.value.problem.trace_id == "00-1"
    assert info.value.may_have_been_processed is True
    assert len(seen) == 1  # ambiguous: not retried by default


# --- connection faults ----------------------------------------------------------------


async def test_a_refused_connection_is_a_connect_error_and_is_retried(
    fake_time: FakeTime,
) -> None:
    base = f"http://127.0.0.1:{closed_port()}"
    policy = RetryPolicy(max_attempts=3, jitter=0.0)
    async with client_for(base, fake_time, retry=policy) as client:
        with pytest.raises(ConnectError) as info:
            await client.create_proactive_conversation(channel_id=1)
    assert info.value.may_have_been_processed is False
    assert info.value.attempts == 3
    assert fake_time.sleeps == [0.5, 1.0]
    assert str(info.value).startswith("could not connect to http://127.0.0.1:")


async def test_a_host_name_that_does_not_resolve_is_fatal_and_tried_once(
    fake_time: FakeTime,
) -> None:
    policy = RetryPolicy(max_attempts=5, jitter=0.0)
    async with client_for("http://nohost.invalid:8080", fake_time, retry=policy) as client:
        with pytest.raises(NameResolutionError) as info:
            await client.create_proactive_conversation(channel_id=1)
    error = info.value
    assert isinstance(error, ConnectError) and error.fatal
    assert error.may_have_been_processed is False
    assert error.attempts == 1 and fake_time.sleeps == []
    assert "'nohost.invalid' does not resolve" in error.message


async def test_a_resolver_that_cannot_be_reached_now_is_a_retried_connect_error(
    fake_time: FakeTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EAI_AGAIN (no DNS server answering) may pass: retried like a refused connection."""
    loop = asyncio.get_running_loop()

    async def unreachable_resolver(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(loop, "getaddrinfo", unreachable_resolver)
    policy = RetryPolicy(max_attempts=2, jitter=0.0)
    async with client_for("http://api.example:8080", fake_time, retry=policy) as client:
        with pytest.raises(ConnectError) as info:
            await client.create_proactive_conversation(channel_id=1)
    assert not isinstance(info.value, NameResolutionError) and not info.value.fatal
    assert info.value.attempts == 2


async def test_a_connection_dropped_before_the_request_is_read_is_connection_lost() -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return  # close at once

    async with raw_server(drop) as base, client_for(base) as client:
        with pytest.raises(ConnectionLostError) as info:
            await client.create_proactive_conversation(channel_id=1)
    # Bytes may have left before the drop was seen: treated as ambiguous, never resent.
    assert info.value.may_have_been_processed is True
    assert info.value.attempts == 1


async def test_a_connection_dropped_after_the_request_is_read_is_not_resent(
    fake_time: FakeTime,
) -> None:
    bodies: list[bytes] = []

    async def read_then_drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        bodies.append(await read_request(reader))

    async with raw_server(read_then_drop) as base, client_for(base, fake_time) as client:
        with pytest.raises(ConnectionLostError) as info:
            await client.create_proactive_conversation(channel_id=1)
    assert bodies == [b'{"channelId":1}']  # exactly one: a resend could duplicate a message
    assert info.value.may_have_been_processed is True
    assert fake_time.sleeps == []


async def test_a_connection_dropped_after_reading_is_resent_only_when_opted_in(
    fake_time: FakeTime,
) -> None:
    bodies: list[bytes] = []

    async def drop_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        bodies.append(await read_request(reader))
        if len(bodies) > 1:
            payload = json.dumps(OK).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
            )
            await writer.drain()

    policy = RetryPolicy(retry_ambiguous=True, jitter=0.0)
    async with raw_server(drop_first) as base, client_for(base, fake_time, retry=policy) as c:
        response = await c.create_proactive_conversation_with_response(channel_id=1)
    assert len(bodies) == 2
    assert response.attempts == 2


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n40\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_a_truncated_body_is_connection_lost(head: bytes) -> None:
    async def truncate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(head + b'[{"id": 1}, {"id"')
        await writer.drain()

    async with raw_server(truncate) as base, client_for(base) as client:
        with pytest.raises(ConnectionLostError) as info:
            await client.create_proactive_conversation(channel_id=1)
    assert info.value.may_have_been_processed is True
    assert TOKEN not in repr(info.value) and TOKEN not in str(info.value.__cause__)


async def test_a_malformed_status_line_is_connection_lost_and_hides_the_token() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    async with raw_server(garbage) as base, client_for(base) as client:
        with pytest.raises(ConnectionLostError) as info:
            await client.create_proactive_conversation(channel_id=1)
    assert info.value.may_have_been_processed is True
    chain = [info.value.__cause__, info.value.__context__]
    assert all(TOKEN not in repr(getattr(e, "__dict__", {})) for e in chain if e is not None)


# --- timeouts -------------------------------------------------------------------------


@asynccontextmanager
async def stalling_server() -> AsyncIterator[tuple[str, list[web.Request], asyncio.Event]]:
    """Answers only at teardown: a server slower than any timeout. Yields (base, seen, arrived),
    ``arrived`` being set once a request body has been read."""
    release, arrived = asyncio.Event(), asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        await request.read()
        arrived.set()
        await release.wait()
        return web.json_response(OK)

    async with web_server(stall) as (base, seen):
        try:
            yield base, seen, arrived
        finally:
            release.set()


@pytest.mark.parametrize(
    "timeouts",
    [{"timeout": Timeout(read=0.2)}, {"timeout": Timeout(total=0.2)}],
    ids=["read", "total"],
)
async def test_a_server_slower_than_the_timeout_is_a_read_timeout_not_retried(
    fake_time: FakeTime, timeouts: dict[str, float]
) -> None:
    async with stalling_server() as (base, seen, _), client_for(base, fake_time, **timeouts) as c:
        with pytest.raises(ReadTimeout) as info:
            await c.create_proactive_conversation(channel_id=1)
    assert info.value.may_have_been_processed is True
    assert info.value.attempts == 1
    assert len(seen) == 1
    assert fake_time.sleeps == []


def dripping_server(pieces: int, every: float) -> RawHandler:
    """Sends its head at once, then a JSON body of ``pieces`` spaces and ``[]``, one piece
    every ``every`` seconds: an answer that keeps coming, slowly."""

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        body = b" " * pieces + b"[]"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        writer.write(b"Content-Length: %d\r\n\r\n" % len(body))
        await writer.drain()
        for index in range(pieces):
            await asyncio.sleep(every)
            writer.write(body[index : index + 1])
            await writer.drain()
        writer.write(b"[]")
        await writer.drain()

    return drip


async def test_an_answer_that_keeps_coming_is_no_read_timeout_however_long() -> None:
    # 0.6 s of answer, a piece every 40 ms: never 0.2 s without one.
    timeout = Timeout(read=0.2, total=None)
    async with (
        raw_server(dripping_server(15, 0.04)) as base,
        client_for(base, timeout=timeout) as client,
    ):
        assert await client.create_proactive_conversation(channel_id=1) == []


async def test_an_answer_that_keeps_coming_is_cut_by_the_total_timeout() -> None:
    loop = asyncio.get_running_loop()
    timeout = Timeout(read=0.2, total=0.5)
    async with (
        raw_server(dripping_server(50, 0.04)) as base,
        client_for(base, timeout=timeout) as client,
    ):
        started = loop.time()
        with pytest.raises(ReadTimeout) as info:
            await client.create_proactive_conversation(channel_id=1)
        assert loop.time() - started >= 0.5  # never early
    assert "in 0.5 s" in str(info.value) and info.value.may_have_been_processed


async def test_a_head_then_silence_is_a_read_timeout_and_the_task_is_not_left_cancelling() -> None:
    async def head_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[")
        await writer.drain()
        await asyncio.sleep(30)

    async with (
        raw_server(head_only) as base,
        client_for(base, timeout=Timeout(read=0.2), retry=RetryPolicy(max_attempts=3)) as client,
    ):
        with pytest.raises(ReadTimeout) as info:
            await client.create_proactive_conversation(channel_id=1)
        assert "for 0.2 s" in str(info.value) and info.value.attempts == 1  # not retried
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        async with asyncio.timeout(0.05):  # a timeout of the caller's still works after it
            await asyncio.sleep(0)


async def test_waiting_for_a_connection_slot_is_not_counted_in_the_timeouts() -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await request.read()
        await asyncio.sleep(0.15)
        return web.json_response(OK)

    # One connection, four calls: the last waits 0.45 s for the slot, past read and total.
    timeout = Timeout(read=0.3, total=0.3)
    async with (
        web_server(slow) as (base, seen),
        client_for(base, timeout=timeout, limits=Limits(max_connections=1)) as client,
    ):
        answers = await asyncio.gather(
            *(client.create_proactive_conversation(channel_id=1) for _ in range(4))
        )
    assert len(answers) == 4 and len(seen) == 4


async def test_the_callers_own_timeout_is_the_callers_not_a_read_timeout() -> None:
    async with (
        stalling_server() as (base, _, _),
        client_for(base, timeout=Timeout(read=5.0)) as client,
    ):
        with pytest.raises(TimeoutError) as info:
            async with asyncio.timeout(0.1):
                await client.create_proactive_conversation(channel_id=1)
    assert not isinstance(info.value, ReadTimeout)


async def test_cancelling_a_call_mid_request_leaves_nothing_unclosed() -> None:
    """filterwarnings=error turns an "Unclosed client session" or socket warning into a failure."""
    async with stalling_server() as (base, _, arrived):
        client = client_for(base)
        task = asyncio.create_task(client.create_proactive_conversation(channel_id=1))
        await arrived.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.aclose()
        assert client.closed
    gc.collect()


async def test_aclose_completes_even_when_the_closer_is_cancelled() -> None:
    async with web_server(ok) as (base, _):
        client = client_for(base)
        await client.create_proactive_conversation(channel_id=1)
        connections = set(client._transport._connections)
        assert connections
        closer = asyncio.create_task(client.aclose())
        await asyncio.sleep(0)
        closer.cancel()
        with suppress(asyncio.CancelledError):
            await closer
        assert not any(connection.open for connection in connections)
        assert client.closed
    gc.collect()


async def test_cancelling_inside_async_with_closes_the_session() -> None:
    async with stalling_server() as (base, _, arrived):
        client = client_for(base)

        async def use() -> None:
            async with client:
                await client.create_proactive_conversation(channel_id=1)

        task = asyncio.create_task(use())
        await arrived.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.closed
    gc.collect()


# --- redirects ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_never_followed_and_the_token_stays_put(status: int) -> None:
    async with web_server(ok) as (other_base, other_seen):

        async def redirect(request: web.Request) -> web.StreamResponse:
            await request.read()
            return web.Response(status=status, headers={"Location": other_base + PATH})

        async with web_server(redirect) as (base, seen), client_for(base) as client:
            with pytest.raises(RedirectError) as info:
                await client.create_proactive_conversation(channel_id=1)
    assert other_seen == []  # the other port never saw a request, let alone the token
    assert len(seen) == 1
    assert info.value.status == status
    assert info.value.headers["Location"] == other_base + PATH
    # 303 See Other answers a POST the server processed (issue 7); the others did not.
    assert info.value.may_have_been_processed is (status == 303)


# --- the response size cap ------------------------------------------------------------

BIG = json.dumps([{"id": i, "conversationSummary": "x" * 100} for i in range(200)]).encode()


async def _big_with_length(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.Response(body=BIG, content_type="application/json")


async def _big_chunked(request: web.Request) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for start in range(0, len(BIG), 1000):
        await response.write(BIG[start : start + 1000])
    await response.write_eof()
    return response


async def _big_gzipped(request: web.Request) -> web.StreamResponse:
    """A small compressed body that inflates past the cap: Content-Length says ~1 KB."""
    await request.read()
    return web.Response(
        body=gzip.compress(BIG),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )


@pytest.mark.parametrize(
    "handler",
    [_big_with_length, _big_chunked, _big_gzipped],
    ids=["content-length", "chunked", "gzip"],
)
async def test_a_body_past_max_response_bytes_is_refused(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> None:
    cap = len(BIG) // 2
    async with web_server(handler) as (base, _), client_for(base, max_response_bytes=cap) as c:
        with pytest.raises(ResponseTooLargeError, match="max_response_bytes") as info:
            await c.create_proactive_conversation(channel_id=1)
    assert info.value.may_have_been_processed is True
    assert info.value.status == 200
    assert info.value.attempts == 1


@pytest.mark.parametrize(
    "handler",
    [_big_with_length, _big_chunked, _big_gzipped],
    ids=["content-length", "chunked", "gzip"],
)
async def test_a_body_exactly_at_the_cap_is_accepted(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> None:
    async with (
        web_server(handler) as (base, _),
        client_for(base, max_response_bytes=len(BIG)) as client,
    ):
        conversations = await client.create_proactive_conversation(channel_id=1)
    assert len(conversations) == 200


# --- logs on real failures ------------------------------------------------------------


async def test_no_log_line_carries_the_token_on_real_failures(
    caplog: pytest.LogCaptureFixture, fake_time: FakeTime
) -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    policy = RetryPolicy(retry_ambiguous=True, max_attempts=2)
    with caplog.at_level(logging.DEBUG):
        async with raw_server(drop) as base, client_for(base, fake_time, retry=policy) as c:
            with pytest.raises(ConnectionLostError):
                await c.create_proactive_conversation(channel_id=1)
        async with web_server(ok) as (base, _), client_for(base) as c:
            await c.create_proactive_conversation(channel_id=1)
    assert caplog.records
    assert TOKEN not in caplog.text


async def test_an_oversized_error_body_is_cut_to_the_cap_and_keeps_its_status() -> None:
    """A 400 with a huge body is still a BadRequestError (not processed), its body cut."""

    async def huge_400(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=400, body=b'{"title": "bad"' + b" " * 200_000 + b"}")

    async with (
        web_server(huge_400) as (base, _),
        client_for(base, max_response_bytes=1000) as client,
    ):
        with pytest.raises(BadRequestError) as info:
            await client.create_proactive_conversation(channel_id=1)
    assert info.value.may_have_been_processed is False
    assert len(info.value.body) == 1000


def test_an_origin_in_a_message_never_carries_a_user_or_password() -> None:
    from proactive_async._transport import origin

    assert origin("https://user:pw@api.example:8443/base") == "https://api.example:8443"
    assert origin("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
