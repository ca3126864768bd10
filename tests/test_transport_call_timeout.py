"""A call's own ``timeout=`` on the SDK's transport, against real local servers: the time
spent before the request could be sent (a connection slot of the pool, a connection being
made) ends in ConnectTimeout, not processed; after it, in ReadTimeout, ambiguous."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from aiohttp import web
from test_transport import OK, TOKEN, stalling_server, web_server

from proactive_async import (
    AsyncClient,
    ConnectTimeout,
    Limits,
    ReadTimeout,
    RetryPolicy,
    Timeout,
)

ONCE = RetryPolicy(max_attempts=1)


async def test_a_call_timeout_spent_waiting_for_a_pool_slot_is_a_connect_timeout() -> None:
    release, arrived = asyncio.Event(), asyncio.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        await request.read()
        arrived.set()
        await release.wait()
        return web.json_response(OK)

    async with (
        web_server(held) as (base, seen),
        AsyncClient(base, TOKEN, limits=Limits(max_connections=1)) as client,
    ):
        first = asyncio.create_task(client.create_proactive_conversation(channel_id=1))
        await arrived.wait()
        started = time.monotonic()
        with pytest.raises(ConnectTimeout, match="free within the call's timeout") as info:
            await client.create_proactive_conversation(channel_id=1, timeout=0.2, retry=ONCE)
        assert 0.2 <= time.monotonic() - started < 1.0
        assert info.value.may_have_been_processed is False
        release.set()
        assert len(await first) == 1
    assert len(seen) == 1  # the second request never left


@contextmanager
def unanswered_port() -> Iterator[int]:
    """A port whose accept queue is full: a connection to it is never made (SYNs dropped)."""
    with socket.socket() as server, socket.socket() as filler:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port: int = server.getsockname()[1]
        filler.connect(("127.0.0.1", port))  # takes the queue's one place, never accepted
        yield port


async def test_a_call_timeout_spent_making_the_connection_is_a_connect_timeout() -> None:
    with unanswered_port() as port:
        # The client's connect timeout is long: the call's own is what runs out.
        timeout = Timeout(connect=30.0)
        async with AsyncClient(f"http://127.0.0.1:{port}", TOKEN, timeout=timeout) as client:
            started = time.monotonic()
            with pytest.raises(ConnectTimeout) as info:
                await client.create_proactive_conversation(channel_id=1, timeout=0.3, retry=ONCE)
            assert 0.3 <= time.monotonic() - started < 2.0
    assert info.value.may_have_been_processed is False


async def test_a_call_timeout_after_the_request_was_sent_is_a_read_timeout() -> None:
    async with stalling_server() as (base, seen, arrived), AsyncClient(base, TOKEN) as client:
        started = time.monotonic()
        with pytest.raises(ReadTimeout, match=r"in 0\.3 s \(the call's timeout\)") as info:
            await client.create_proactive_conversation(channel_id=1, timeout=0.3, retry=ONCE)
        assert 0.3 <= time.monotonic() - started < 2.0
        assert arrived.is_set()
    assert info.value.may_have_been_processed is True
    assert len(seen) == 1


async def test_a_call_timeout_leaves_the_pool_usable_and_the_task_not_cancelling() -> None:
    async with stalling_server() as (base, _, _), AsyncClient(base, TOKEN) as client:
        with pytest.raises(ReadTimeout):
            await client.create_proactive_conversation(channel_id=1, timeout=0.1, retry=ONCE)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
