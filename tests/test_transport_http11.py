"""The direct transport's HTTP/1.1 (``_transport/_http11.py``, ``_transport/_direct.py``) at
the byte level: ``AsyncClient`` against raw asyncio servers on 127.0.0.1 (or ::1), port 0,
that send exactly the bytes each test names. Every server is closed by its test."""

from __future__ import annotations

import asyncio
import gc
import gzip
import logging
import re
import socket
import ssl
import threading
import time
import traceback
import warnings
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from _redis import free_port as closed_port  # bound, then released: nothing listens
from _requires import unavailable

from proactive_async import (
    AsyncClient,
    BadRequestError,
    ClientStateError,
    ConnectError,
    ConnectionLostError,
    ConnectTimeout,
    Conversation,
    DecodingError,
    Limits,
    NameResolutionError,
    ReadTimeout,
    ResponseTooLargeError,
    RetryPolicy,
    Timeout,
    TLSError,
    __version__,
)
from proactive_async._transport import MAX_ERROR_BODY, user_agent
from proactive_async._transport._direct import DirectTransport

PATH = b"/api/Conversation/proactive-conversation"
TOKEN = "tok-HTTP11-5eed"
OK_BODY = b'[{"id":7,"conversationId":"c-7"}]'
REQUEST_BODY = b'{"channelId":1}'
NEVER = RetryPolicy.never()


def ok(body: bytes = OK_BODY, *, status: bytes = b"200 OK", fields: bytes = b"") -> bytes:
    """A whole HTTP/1.1 answer framed by its Content-Length; ``fields`` end in CRLF."""
    return b"HTTP/1.1 %b\r\nContent-Type: application/json\r\n%bContent-Length: %d\r\n\r\n%b" % (
        status,
        fields,
        len(body),
        body,
    )


def chunked(body: bytes, *, size: int = 10, status: bytes = b"200 OK") -> bytes:
    """A whole chunked HTTP/1.1 answer: ``body`` in chunks of ``size`` bytes."""
    chunks = b"".join(
        b"%x\r\n%b\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    )
    return b"HTTP/1.1 %b\r\nTransfer-Encoding: chunked\r\n\r\n%b0\r\n\r\n" % (status, chunks)


# --- the raw server -------------------------------------------------------------------


class Peer:
    """One connection the server accepted: it reads requests and writes exact bytes."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: list[bytes]
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.requests = requests  # the server's, shared by all its peers
        self.closed = asyncio.Event()
        """Set once the client closed this connection (EOF or reset seen)."""

    async def request(self) -> bytes | None:
        """The next whole request (head and Content-Length body); None once the client closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.set()
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        raw = head + await self.reader.readexactly(length)
        self.requests.append(raw)
        return raw

    async def send(self, data: bytes, *, piecewise: bool = False) -> None:
        """Write ``data`` at once, or (``piecewise``) a byte a write, each read on its own."""
        with suppress(ConnectionError):
            if not piecewise:
                self.writer.write(data)
                await self.writer.drain()
                return
            for index in range(len(data)):
                self.writer.write(data[index : index + 1])
                await self.writer.drain()
                # Two loop turns: the client's socket is read before the next byte is sent.
                await asyncio.sleep(0)
                await asyncio.sleep(0)

    async def until_closed(self) -> None:
        """Wait for the client to close the connection (the server never closes first)."""
        with suppress(ConnectionError):
            while await self.reader.read(65536):
                pass
        self.closed.set()


Handler = Callable[[Peer], Awaitable[None]]


@dataclass
class RawServer:
    url: str
    peers: list[Peer] = field(default_factory=list)
    """One per connection accepted, in order."""
    requests: list[bytes] = field(default_factory=list)
    """Every request read, on any connection, as its raw bytes."""


@asynccontextmanager
async def serve(
    handle: Handler, *, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
) -> AsyncIterator[RawServer]:
    """A TCP server on ``host``, port 0, running ``handle`` per connection (closed after it)."""
    tasks: list[asyncio.Task[Any]] = []
    server: RawServer | None = None

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and server is not None
        tasks.append(task)
        peer = Peer(reader, writer, server.requests)
        server.peers.append(peer)
        try:
            # Ended at teardown: asyncio's start_server logs a handler task left cancelled.
            with suppress(asyncio.CancelledError):
                await handle(peer)
        finally:
            writer.close()
            with suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    listener = await asyncio.start_server(accept, host, 0, ssl=tls)
    port = listener.sockets[0].getsockname()[1]
    authority = f"[{host}]" if ":" in host else host
    server = RawServer(f"{'https' if tls else 'http'}://{authority}:{port}")
    try:
        yield server
    finally:
        listener.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await listener.wait_closed()


def answering(answer: bytes, *, piecewise: bool = False) -> Handler:
    """Answers every request of a connection with ``answer``, until the client closes it."""

    async def handle(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(answer, piecewise=piecewise)

    return handle


def answering_then_closing(answer: bytes, *, piecewise: bool = False) -> Handler:
    """Answers one request with ``answer``, then closes the connection."""

    async def handle(peer: Peer) -> None:
        if await peer.request() is not None:
            await peer.send(answer, piecewise=piecewise)

    return handle


def answering_then_holding(answer: bytes) -> Handler:
    """Answers one request with ``answer``, then keeps the connection until the client closes."""

    async def handle(peer: Peer) -> None:
        if await peer.request() is not None:
            await peer.send(answer)
            await peer.until_closed()

    return handle


def client_for(base: str, **kwargs: Any) -> AsyncClient:
    """A client making one attempt, whose stalls end in 5 s (not the default 30)."""
    kwargs.setdefault("retry", NEVER)
    kwargs.setdefault("timeout", Timeout(read=5.0))
    return AsyncClient(base, TOKEN, **kwargs)


async def call(client: AsyncClient) -> list[Conversation]:
    return await client.create_proactive_conversation(channel_id=1)


def uvloop_module() -> Any:
    """uvloop (the ``fast`` extra, in ``dev``); without it the test skips, and fails under CI."""
    try:
        import uvloop
    except ImportError:
        unavailable("uvloop not installed (the fast extra)")
    return uvloop


def run_on(loop: str, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``scenario()`` in a new event loop: asyncio's, or uvloop's (see uvloop_module)."""
    if loop == "uvloop":
        uvloop_module().run(scenario())
    else:
        asyncio.run(scenario())


def ipv6_unavailable() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return True
    return False


def assert_ok(conversations: list[Conversation]) -> None:
    [conversation] = conversations
    assert conversation.id == 7 and conversation.conversation_id == "c-7"


# --- framing --------------------------------------------------------------------------


async def test_a_content_length_body_is_read() -> None:
    async with serve(answering(ok())) as server, client_for(server.url) as client:
        assert_ok(await call(client))
    assert len(server.requests) == 1


async def test_a_chunked_body_with_extensions_and_trailer_fields_is_read_whole() -> None:
    """Chunk extensions are ignored, trailer fields read and dropped: the connection is then
    clean for the next request (one connection serves both)."""
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;x=y\r\n" + OK_BODY[:5] + b"\r\n"
        b'A ; name="quoted;value"\r\n' + OK_BODY[5:15] + b"\r\n"
        b"1\r\n" + OK_BODY[15:16] + b"\r\n"
        b"%x;last\r\n" % len(OK_BODY[16:]) + OK_BODY[16:] + b"\r\n"
        b"0;end=1\r\nX-Checksum: abc\r\nX-Other: 2\r\n\r\n"
    )
    async with serve(answering(answer)) as server, client_for(server.url) as client:
        assert_ok(await call(client))
        assert_ok(await call(client))
    assert len(server.peers) == 1 and len(server.requests) == 2


@pytest.mark.parametrize(
    "answer",
    [ok(), chunked(OK_BODY, size=7)],
    ids=["content-length", "chunked"],
)
async def test_an_answer_written_a_byte_at_a_time_is_read_whole(
    answer: bytes, reads: list[int]
) -> None:
    async with serve(answering(answer, piecewise=True)) as server, client_for(server.url) as c:
        assert_ok(await call(c))
        assert_ok(await call(c))  # nothing of the first answer was left behind
    assert len(server.peers) == 1
    assert sum(reads) == 2 * len(answer) and max(reads) == 1  # it did come byte by byte


async def test_a_body_until_close_written_a_byte_at_a_time_is_read_whole(
    reads: list[int],
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + OK_BODY
    async with (
        serve(answering_then_closing(answer, piecewise=True)) as server,
        client_for(server.url) as client,
    ):
        assert_ok(await call(client))
    assert sum(reads) == len(answer) and max(reads) == 1


async def test_a_body_until_close_is_read_and_that_connection_is_not_reused() -> None:
    """No Content-Length and no Transfer-Encoding: the body ends when the server closes."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + OK_BODY
    async with serve(answering_then_closing(answer)) as server, client_for(server.url) as client:
        assert_ok(await call(client))
        assert_ok(await call(client))
    assert len(server.peers) == 2


@pytest.mark.parametrize(
    "lengths",
    [b"Content-Length: 33, 33\r\n", b"Content-Length: 33\r\nContent-Length: 33\r\n"],
    ids=["one-field", "two-fields"],
)
async def test_equal_duplicate_content_lengths_are_one_length(lengths: bytes) -> None:
    assert len(OK_BODY) == 33
    answer = b"HTTP/1.1 200 OK\r\n" + lengths + b"\r\n" + OK_BODY
    async with serve(answering(answer)) as server, client_for(server.url) as client:
        assert_ok(await call(client))
        assert_ok(await call(client))
    assert len(server.peers) == 1


async def test_chunked_beside_a_content_length_is_read_by_chunks_and_not_reused() -> None:
    """Both framings (RFC 9112 6.3): chunked wins, and the connection is not trusted after."""
    answer = chunked(OK_BODY).replace(b"\r\n\r\n", b"\r\nContent-Length: 3\r\n\r\n", 1)
    async with serve(answering(answer)) as server, client_for(server.url) as client:
        assert_ok(await call(client))
        assert_ok(await call(client))
    assert len(server.peers) == 2


async def test_a_204_has_no_body_and_leaves_the_connection_reusable() -> None:
    """The answer ends at its head: no wait for a body (that would be a read timeout), and the
    same connection serves the next call."""
    async with (
        serve(answering(b"HTTP/1.1 204 No Content\r\n\r\n")) as server,
        client_for(server.url, timeout=Timeout(read=2.0)) as client,
    ):
        for _ in range(2):
            with pytest.raises(DecodingError) as info:  # an empty body is no conversation list
                await call(client)
            assert info.value.status == 204 and info.value.body == b""
    assert len(server.peers) == 1 and len(server.requests) == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: 33\n\n" + OK_BODY,
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 33\r\n\n" + OK_BODY,
        ),
        pytest.param(
            b'HTTP/1.1 200 OK\nContent-Length: 37\n\n[{"id":7,\r\n\r\n"conversationId":"c-7"}]',
        ),
    ],
    ids=["bare-lf", "crlf-lines-bare-lf-end", "bare-lf-head-crlf-in-body"],
)
async def test_bare_lf_line_endings_are_accepted(answer: bytes) -> None:
    async with serve(answering(answer)) as server, client_for(server.url) as client:
        assert_ok(await call(client))
        assert_ok(await call(client))
    assert len(server.peers) == 1


@pytest.mark.parametrize("piecewise", [False, True], ids=["at-once", "byte-by-byte"])
async def test_chunks_ended_by_a_bare_lf_are_accepted(piecewise: bool) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"a\r\n" + OK_BODY[:10] + b"\n"
        b"%x\r\n" % len(OK_BODY[10:]) + OK_BODY[10:] + b"\n"
        b"0\r\n\r\n"
    )
    async with (
        serve(answering(answer, piecewise=piecewise)) as server,
        client_for(server.url) as client,
    ):
        assert_ok(await call(client))
        assert_ok(await call(client))  # and nothing of the first answer was left behind
    assert len(server.peers) == 1


# --- content codings and the caps -----------------------------------------------------


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        ("gzip", gzip.compress(OK_BODY)),
        ("x-gzip", gzip.compress(OK_BODY)),
        ("GZip", gzip.compress(OK_BODY)),
        ("deflate", zlib.compress(OK_BODY)),
        ("deflate", _raw_deflate(OK_BODY)),
        ("identity", OK_BODY),
    ],
    ids=["gzip", "x-gzip", "gzip-mixed-case", "deflate-zlib", "deflate-raw", "identity"],
)
async def test_a_content_coded_body_is_decoded(coding: str, encoded: bytes) -> None:
    answer = ok(encoded, fields=b"Content-Encoding: %b\r\n" % coding.encode())
    async with serve(answering(answer)) as server, client_for(server.url) as client:
        assert_ok(await call(client))


async def test_a_content_coding_not_asked_for_on_a_200_is_a_bad_answer() -> None:
    answer = ok(b"\x1b\x00\x00", fields=b"Content-Encoding: br\r\n")
    async with serve(answering(answer)) as server, client_for(server.url) as client:
        with pytest.raises(ConnectionLostError, match="bad answer") as info:
            await call(client)
    assert info.value.may_have_been_processed is True
    assert "'br'" in str(info.value)


async def test_a_gzip_bomb_past_max_response_bytes_is_refused() -> None:
    bomb = gzip.compress(b"[" + b" " * 5_000_000 + b"]")
    assert len(bomb) < 10_000
    answer = ok(bomb, fields=b"Content-Encoding: gzip\r\n")
    async with (
        serve(answering(answer)) as server,
        client_for(server.url, max_response_bytes=100_000) as client,
    ):
        with pytest.raises(ResponseTooLargeError, match="max_response_bytes=100000") as info:
            await call(client)
    assert info.value.status == 200 and info.value.may_have_been_processed is True


async def test_a_2xx_content_length_past_the_cap_is_refused_at_its_head() -> None:
    """The head alone says the body is too large: refused before the body comes."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n["
    async with (
        serve(answering_then_holding(head)) as server,
        client_for(server.url, max_response_bytes=1000, timeout=Timeout(read=2.0)) as client,
    ):
        with pytest.raises(ResponseTooLargeError, match="5000 bytes") as info:
            await call(client)
        await asyncio.wait_for(server.peers[0].closed.wait(), 1.0)  # and the connection closed
    assert info.value.status == 200


@pytest.mark.parametrize(
    "framing",
    ["chunked", "until-close"],
)
async def test_a_2xx_body_past_the_cap_is_refused_whatever_its_framing(framing: str) -> None:
    body = b"[" + b" " * 3000 + b"]"
    until_close = b"HTTP/1.1 200 OK\r\n\r\n" + body
    answer = chunked(body, size=100) if framing == "chunked" else until_close
    async with (
        serve(answering_then_closing(answer)) as server,
        client_for(server.url, max_response_bytes=1000) as client,
    ):
        with pytest.raises(ResponseTooLargeError, match="max_response_bytes=1000") as info:
            await call(client)
    assert info.value.status == 200


async def test_one_chunk_larger_than_the_cap_is_refused_before_it_ends() -> None:
    """The cap bounds memory: 4000 bytes of a 1 MiB chunk are already past a 1000-byte cap."""
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n" + b" " * 4000
    async with (
        serve(answering_then_holding(answer)) as server,
        client_for(server.url, max_response_bytes=1000, timeout=Timeout(read=0.3)) as client,
    ):
        with pytest.raises(ResponseTooLargeError):
            await call(client)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("cap", [1000, None], ids=["cap-1000", "cap-default"])
async def test_an_error_status_with_a_huge_body_keeps_its_status_and_a_cut_body(
    framing: str, cap: int | None
) -> None:
    body = b'{"title":"bad"' + b" " * 200_000 + b"}"
    answer = (
        ok(body, status=b"400 Bad Request")
        if framing == "content-length"
        else chunked(body, size=8192, status=b"400 Bad Request")
    )
    options: dict[str, Any] = {} if cap is None else {"max_response_bytes": cap}
    async with (
        serve(answering(answer)) as server,
        client_for(server.url, **options) as client,
    ):
        with pytest.raises(BadRequestError) as info:
            await call(client)
    kept = MAX_ERROR_BODY if cap is None else min(cap, MAX_ERROR_BODY)
    assert info.value.status == 400 and info.value.may_have_been_processed is False
    assert info.value.body == body[:kept]


# --- heads: interim answers and bad answers -------------------------------------------


@pytest.mark.parametrize("piecewise", [False, True], ids=["at-once", "byte-by-byte"])
async def test_interim_1xx_answers_before_the_final_one_are_skipped(piecewise: bool) -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + ok()
    )
    async with (
        serve(answering(answer, piecewise=piecewise)) as server,
        client_for(server.url) as client,
    ):
        response = await client.create_proactive_conversation_with_response(channel_id=1)
        assert_ok(await call(client))
    assert response.status == 200 and "Link" not in response.headers
    assert_ok(response.value)
    assert len(server.peers) == 1


BAD_ANSWERS = {
    "101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "garbage-status-line": b"HTTP/1.1 OK 200\r\nContent-Length: 2\r\n\r\n[]",
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n  b\r\nContent-Length: 2\r\n\r\n[]",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\n[]",
    "differing-content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
    b"Content-Length: 3\r\n\r\n[] ",
    "differing-content-lengths-in-one": b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\n[] ",
    "negative-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\n[]",
    "transfer-encoding-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n[]",
    "chunked-not-last": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n2\r\n[]\r\n",
    "invalid-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n[]\r\n",
    "chunk-without-crlf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]xx",
    "head-over-64-kib": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (65 * 1024) + b"\r\n"
    b"Content-Length: 2\r\n\r\n[]",
    "head-over-64-kib-unended": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (65 * 1024),
}


@pytest.mark.parametrize("answer", list(BAD_ANSWERS.values()), ids=list(BAD_ANSWERS))
async def test_an_answer_that_is_not_http_11_is_a_bad_answer(answer: bytes) -> None:
    """The server keeps the connection: what ends the call is the client's own verdict."""
    async with (
        serve(answering_then_holding(answer)) as server,
        client_for(server.url, timeout=Timeout(read=2.0)) as client,
    ):
        with pytest.raises(ConnectionLostError, match="bad answer") as info:
            await call(client)
        await asyncio.wait_for(server.peers[0].closed.wait(), 1.0)  # the client closed it
    assert info.value.may_have_been_processed is True
    assert info.value.attempts == 1
    assert TOKEN not in str(info.value)


async def test_a_content_length_of_non_ascii_digits_is_a_bad_answer() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n[]"
    async with (
        serve(answering_then_holding(answer)) as server,
        client_for(server.url, timeout=Timeout(read=2.0)) as client,
    ):
        with pytest.raises(ConnectionLostError, match="bad answer"):
            await call(client)


@pytest.mark.parametrize(
    ("status", "digits"),
    [(b"200 OK", 40), (b"500 Internal Server Error", 40), (b"500 Internal Server Error", 5000)],
    ids=["200-40-digits", "500-40-digits", "500-5000-digits"],
)
async def test_a_content_length_of_too_many_digits_is_a_bad_answer_and_nothing_is_logged(
    status: bytes, digits: int, caplog: pytest.LogCaptureFixture
) -> None:
    """ASCII digits all, but no real length: refused as a bad answer, not an exception out of
    the protocol's ``data_received`` (which asyncio logs as a fatal error: ``int()`` refuses
    over 4300 digits)."""
    answer = b"HTTP/1.1 %b\r\nContent-Length: %b\r\n\r\n[]" % (status, b"1" * digits)
    async with (
        serve(answering_then_holding(answer)) as server,
        client_for(server.url, timeout=Timeout(read=2.0)) as client,
    ):
        with pytest.raises(ConnectionLostError, match="bad answer"):
            await call(client)
        await asyncio.wait_for(server.peers[0].closed.wait(), 1.0)
    errors = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert errors == []


# --- keep-alive -----------------------------------------------------------------------


async def test_sequential_calls_reuse_one_connection() -> None:
    async with serve(answering(ok())) as server, client_for(server.url) as client:
        for _ in range(3):
            assert_ok(await call(client))
    assert len(server.peers) == 1 and len(server.requests) == 3


@pytest.mark.parametrize(
    "answer",
    [
        ok(fields=b"Connection: close\r\n"),
        ok(fields=b"Connection: keep-alive, Close\r\n"),
        ok().replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        ok(fields=b"Connection: keep-alive\r\n").replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    ],
    ids=["connection-close", "close-among-tokens", "http-1.0", "http-1.0-keep-alive"],
)
async def test_an_answer_that_does_not_keep_the_connection_gets_a_new_one_next(
    answer: bytes,
) -> None:
    """The server keeps its side open: the client alone decides not to reuse it."""
    async with serve(answering(answer)) as server, client_for(server.url) as client:
        assert_ok(await call(client))
        await asyncio.wait_for(server.peers[0].closed.wait(), 1.0)
        assert_ok(await call(client))
    assert len(server.peers) == 2 and len(server.requests) == 2


async def test_a_kept_connection_the_server_closed_while_idle_is_replaced() -> None:
    async with (
        serve(answering_then_closing(ok())) as server,
        client_for(server.url) as client,
    ):
        assert_ok(await call(client))
        await asyncio.sleep(0.05)  # the client's loop sees the close
        assert_ok(await call(client))
    assert len(server.peers) == 2


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_loop_reads_into_the_connection_s_own_buffer(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A buffered protocol: each read fills the connection's buffer (no 256 KiB allocated
    by the loop for every read), and an answer written a byte at a time is still whole."""
    from proactive_async._transport._http11 import Connection

    filled: list[int] = []
    original = Connection.buffer_updated

    def spy(self: Connection, nbytes: int) -> None:
        filled.append(nbytes)
        original(self, nbytes)

    monkeypatch.setattr(Connection, "buffer_updated", spy)

    async def scenario() -> None:
        async with (
            serve(answering(ok(), piecewise=True)) as server,
            client_for(server.url) as client,
        ):
            assert_ok(await call(client))
            assert_ok(await call(client))

    run_on(loop, scenario)
    assert len(filled) > 2 and sum(filled) == 2 * len(ok())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_server_closing_right_after_each_answer_costs_no_call(loop: str) -> None:
    """It answers (Content-Length, no ``Connection: close``) and closes at once: the next call
    may start before the client's loop has run that close, and the idle connection is
    polled before reuse, so no request is written to a closed connection."""

    async def scenario() -> None:
        async with (
            serve(answering_then_closing(ok())) as server,
            client_for(server.url) as client,
        ):
            for _ in range(20):
                assert_ok(await call(client))
        assert len(server.requests) == 20 and len(server.peers) == 20

    run_on(loop, scenario)


@pytest.mark.parametrize("when", ["with-the-answer", "while-idle"])
async def test_bytes_nobody_asked_for_close_the_connection(when: str) -> None:
    """A 408 sent after a whole answer (as servers do before closing an idle connection):
    the client closes that connection itself, and the next call gets a new one."""
    timeout_408 = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    idle = asyncio.Event()

    async def answer_then_408(peer: Peer) -> None:
        if await peer.request() is None:
            return
        if len(peer.requests) > 1:
            await peer.send(ok())
            await peer.until_closed()
            return
        if when == "with-the-answer":
            await peer.send(ok() + timeout_408)
        else:
            await peer.send(ok())
            await idle.wait()
            await peer.send(timeout_408)
        await peer.until_closed()

    async with serve(answer_then_408) as server, client_for(server.url) as client:
        assert_ok(await call(client))
        idle.set()
        await asyncio.wait_for(server.peers[0].closed.wait(), 1.0)
        assert_ok(await call(client))
    assert len(server.peers) == 2


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout() -> None:
    async with (
        serve(answering(ok())) as server,
        client_for(server.url, limits=Limits(keepalive_timeout=0.1)) as client,
    ):
        assert_ok(await call(client))
        started = time.monotonic()
        await asyncio.wait_for(server.peers[0].closed.wait(), 1.0)
        assert time.monotonic() - started >= 0.05
        assert_ok(await call(client))
    assert len(server.peers) == 2


@pytest.mark.parametrize(
    ("fields", "connections"),
    [(b"Keep-Alive: timeout=2\r\n", 2), (b"", 1)],
    ids=["keep-alive-timeout-2", "no-keep-alive-field"],
)
async def test_a_keep_alive_timeout_from_the_server_shortens_the_idle_time(
    fields: bytes, connections: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Keep-Alive: timeout=2`` (our keepalive_timeout is 15 s): reused at once, but not
    once idle for more than a second (the loop's clock moved 1.5 s on); without the field,
    still reused then."""
    loop = asyncio.get_running_loop()
    clock = SimpleNamespace(shift=0.0)
    time_of_loop = loop.time
    monkeypatch.setattr(loop, "time", lambda: time_of_loop() + clock.shift)
    async with serve(answering(ok(fields=fields))) as server, client_for(server.url) as client:
        assert_ok(await call(client))
        assert_ok(await call(client))
        assert len(server.peers) == 1
        clock.shift = 1.5
        assert_ok(await call(client))
    assert len(server.peers) == connections and len(server.requests) == 3


# --- lost connections and connect errors ----------------------------------------------


@pytest.mark.parametrize("answered", [0, 1], ids=["new-connection", "kept-alive-connection"])
async def test_a_request_read_and_never_answered_is_a_lost_connection(answered: int) -> None:
    """The server reads the request and closes, after ``answered`` whole answers."""

    async def answer_then_read_and_close(peer: Peer) -> None:
        for _ in range(answered):
            await peer.request()
            await peer.send(ok())
        await peer.request()

    async with (
        serve(answer_then_read_and_close) as server,
        client_for(server.url) as client,
    ):
        for _ in range(answered):
            assert_ok(await call(client))
        with pytest.raises(ConnectionLostError, match="closed before any answer") as info:
            await call(client)
    assert info.value.may_have_been_processed is True
    assert len(server.peers) == 1 and len(server.requests) == answered + 1


@pytest.mark.parametrize(
    "partial",
    [
        b"HTTP/1.1 200 OK\r\nContent-Le",
        ok()[:-5],
        chunked(OK_BODY)[:-12],
        chunked(OK_BODY)[:-2],  # the last chunk came, the trailer's end never did
    ],
    ids=["in-the-head", "content-length", "chunked", "chunked-before-the-trailer"],
)
async def test_a_connection_closed_in_the_middle_of_an_answer_is_lost(partial: bytes) -> None:
    async with (
        serve(answering_then_closing(partial)) as server,
        client_for(server.url) as client,
    ):
        with pytest.raises(ConnectionLostError, match="closed in the middle") as info:
            await call(client)
    assert info.value.may_have_been_processed is True


async def test_a_refused_connection_is_a_connect_error_nothing_sent() -> None:
    async with client_for(f"http://127.0.0.1:{closed_port()}") as client:
        with pytest.raises(ConnectError) as info:
            await call(client)
    assert not isinstance(info.value, NameResolutionError)
    assert info.value.may_have_been_processed is False


async def test_a_host_name_that_does_not_resolve_is_a_name_resolution_error() -> None:
    async with client_for("http://nonexistent.invalid") as client:
        with pytest.raises(NameResolutionError, match=r"'nonexistent\.invalid'") as info:
            await call(client)
    assert info.value.may_have_been_processed is False


@pytest.mark.parametrize(
    "host",
    ["a" * 64 + ".example.com", "a..b.example.com"],
    ids=["a-64-character-label", "an-empty-label"],
)
async def test_a_host_name_with_an_invalid_label_is_a_client_state_error(host: str) -> None:
    """yarl accepts them; the resolver's IDNA encoding does not: a ClientStateError naming
    the host (no UnicodeError from below), nothing sent."""
    async with client_for(f"http://{host}:8080") as client:
        with pytest.raises(ClientStateError, match=re.escape(repr(host))) as info:
            await call(client)
    assert info.value.may_have_been_processed is False


# --- the request's bytes --------------------------------------------------------------


def fields_of(request: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """A raw request's request line, its fields (name lowercased, value stripped), its body."""
    head, _, body = request.partition(b"\r\n\r\n")
    line, *lines = head.split(b"\r\n")
    fields = []
    for text in lines:
        name, colon, value = text.partition(b":")
        assert colon and name == name.strip(), text
        fields.append((name.lower(), value.strip()))
    return line, fields, body


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        pytest.param(
            "::1", marks=pytest.mark.skipif(ipv6_unavailable(), reason="no IPv6 loopback")
        ),
    ],
)
async def test_the_request_is_one_post_with_exactly_its_framing_and_credentials(
    host: str,
) -> None:
    async with serve(answering(ok()), host=host) as server, client_for(server.url) as client:
        assert_ok(await call(client))
    [request] = server.requests
    line, fields, body = fields_of(request)
    assert line == b"POST " + PATH + b" HTTP/1.1"
    names = [name for name, _ in fields]
    assert len(names) == len(set(names)), names  # every field once
    values = dict(fields)
    port = server.url.rsplit(":", 1)[1]
    assert values[b"host"] == (f"[{host}]" if ":" in host else host).encode() + b":" + port.encode()
    assert body == REQUEST_BODY and values[b"content-length"] == b"%d" % len(body)
    assert values[b"authorization"] == b"Bearer " + TOKEN.encode()
    assert values[b"accept-encoding"] == b"gzip, deflate"
    assert values[b"user-agent"] == user_agent(__version__).encode()
    assert values[b"content-type"] == b"application/json"
    assert b"transfer-encoding" not in values


async def test_caller_headers_cannot_duplicate_the_framing_fields() -> None:
    headers = {
        "Host": "other.example",
        "content-length": "999",
        "Transfer-Encoding": "chunked",
        "Connection": "close",
        "X-Tenant": "9",
    }
    async with (
        serve(answering(ok())) as server,
        client_for(server.url, headers=headers) as client,
    ):
        assert_ok(await call(client))
        assert_ok(await call(client))
    assert len(server.peers) == 1  # no "Connection: close" was sent either
    _, fields, body = fields_of(server.requests[0])
    names = [name for name, _ in fields]
    assert names.count(b"host") == 1 and names.count(b"content-length") == 1
    values = dict(fields)
    assert values[b"host"] == server.url.removeprefix("http://").encode()
    assert values[b"content-length"] == b"%d" % len(REQUEST_BODY) and body == REQUEST_BODY
    assert b"transfer-encoding" not in values and b"connection" not in values
    assert values[b"x-tenant"] == b"9"


async def test_a_caller_header_replaces_a_default_whatever_its_case() -> None:
    headers = {"user-agent": "mine/1.0", "content-type": "application/json; charset=utf-8"}
    async with (
        serve(answering(ok())) as server,
        client_for(server.url, headers=headers) as client,
    ):
        assert_ok(await call(client))
    _, fields, _ = fields_of(server.requests[0])
    assert [value for name, value in fields if name == b"user-agent"] == [b"mine/1.0"]
    assert [value for name, value in fields if name == b"content-type"] == [
        b"application/json; charset=utf-8"
    ]


async def lost_call(client: AsyncClient) -> ConnectionLostError:
    """The error of a call whose request the server read before it closed (this frame's
    locals hold nothing of the request: only ``client`` and ``info``)."""
    with pytest.raises(ConnectionLostError) as info:
        await call(client)
    return info.value


async def test_the_token_is_in_no_repr_of_the_targets_nor_in_a_tracebacks_locals() -> None:
    """The request head (with the token) is neither in a target's repr nor a frame's local:
    a traceback rendered with its locals (as Sentry, rich or ``pytest -l`` do) leaks none."""

    async def read_and_close(peer: Peer) -> None:
        await peer.request()

    async with serve(read_and_close) as server, client_for(server.url) as client:
        error = await lost_call(client)
        transport = client._transport
        assert isinstance(transport, DirectTransport)
        targets = repr(transport._targets)
    assert server.url in targets and TOKEN not in targets
    rendered = traceback.TracebackException.from_exception(error, capture_locals=True)
    text = "".join(rendered.format())
    assert "ConnectionLostError" in text and "target = " in text
    assert TOKEN not in text


# --- TLS ------------------------------------------------------------------------------


async def test_tls_verified_with_the_ca_file_works_and_reuses_the_connection(
    tls_ca: SimpleNamespace,
) -> None:
    async with (
        serve(answering(ok()), tls=tls_ca.server_context) as server,
        client_for(server.url, verify=tls_ca.ca_file) as client,
    ):
        assert_ok(await call(client))
        assert_ok(await call(client))
    assert len(server.peers) == 1 and len(server.requests) == 2


async def test_tls_against_a_private_ca_fails_default_verification(
    tls_ca: SimpleNamespace,
) -> None:
    async with (
        serve(answering(ok()), tls=tls_ca.server_context) as server,
        client_for(server.url) as client,
    ):
        with pytest.raises(TLSError, match=re.escape(server.url)) as info:
            await call(client)
    assert info.value.may_have_been_processed is False
    assert server.requests == []


async def test_tls_with_verification_off_works(tls_ca: SimpleNamespace) -> None:
    async with (
        serve(answering(ok()), tls=tls_ca.server_context) as server,
        client_for(server.url, verify=False) as client,
    ):
        assert_ok(await call(client))
    assert len(server.requests) == 1


async def test_tls_a_connection_dropped_while_another_answers_is_not_reused(
    tls_ca: SimpleNamespace,
) -> None:
    """Two idle TLS connections. The server answers call 1 on one (``Connection: close``)
    and at the same moment drops the other's TCP without a TLS close_notify: the client reads
    both in one loop iteration, and call 2 must not be written to the dropped one."""
    both = asyncio.Event()

    async def handle(peer: Peer) -> None:
        while await peer.request() is not None:
            count = len(peer.requests)
            if count <= 2:  # two calls at once: two connections
                if count == 2:
                    both.set()
                await both.wait()
                await peer.send(ok())
            elif count == 3:
                peer.writer.write(ok(fields=b"Connection: close\r\n"))
                [other] = [p for p in server.peers if p is not peer]
                # A TCP FIN, no close_notify, sent with the answer before the loop turns.
                other.writer.get_extra_info("socket").shutdown(socket.SHUT_WR)
                await peer.writer.drain()
            else:
                await peer.send(ok())

    async with (
        serve(handle, tls=tls_ca.server_context) as server,
        client_for(server.url, verify=tls_ca.ca_file) as client,
    ):
        for conversations in await asyncio.gather(call(client), call(client)):
            assert_ok(conversations)
        assert len(server.peers) == 2
        assert_ok(await call(client))
        assert_ok(await call(client))
    assert len(server.peers) == 3 and len(server.requests) == 4


@pytest.mark.parametrize(
    "timeouts",
    [Timeout(total=0.5), Timeout(connect=None, read=0.5)],
    ids=["total", "read-with-no-connect-timeout"],
)
async def test_a_timeout_passing_in_a_hung_tls_handshake_is_a_connect_timeout(
    timeouts: Timeout,
) -> None:
    """The server accepts TCP and never answers the ClientHello: no connection was ever
    made, so whichever timeout passes, nothing was sent."""
    async with serve(Peer.until_closed) as server:
        url = server.url.replace("http://", "https://")
        async with client_for(url, timeout=timeouts, verify=False) as client:
            started = time.monotonic()
            with pytest.raises(ConnectTimeout, match="nothing was sent") as info:
                await call(client)
    assert info.value.may_have_been_processed is False
    assert time.monotonic() - started < 2.0 and server.requests == []


# --- the read timeout -----------------------------------------------------------------


async def test_a_head_then_nothing_is_a_read_timeout_after_about_the_read_timeout() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n["
    async with (
        serve(answering_then_holding(head)) as server,
        client_for(server.url, timeout=Timeout(read=0.3)) as client,
    ):
        started = time.monotonic()
        with pytest.raises(ReadTimeout, match=r"for 0\.3 s") as info:
            await call(client)
        elapsed = time.monotonic() - started
        await asyncio.wait_for(server.peers[0].closed.wait(), 1.0)  # abandoned: closed
    assert 0.3 <= elapsed < 1.0
    assert info.value.may_have_been_processed is True


async def test_a_body_dripping_a_byte_every_tenth_of_a_second_is_no_read_timeout() -> None:
    body = b"   [   ]"  # 8 bytes: 0.8 s of answer, never 0.3 s without a byte

    async def drip(peer: Peer) -> None:
        if await peer.request() is None:
            return
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for index in range(len(body)):
            await asyncio.sleep(0.1)
            await peer.send(body[index : index + 1])
        await peer.until_closed()

    async with serve(drip) as server, client_for(server.url, timeout=Timeout(read=0.3)) as c:
        started = time.monotonic()
        assert await call(c) == []
        assert time.monotonic() - started >= 0.75


# --- closing --------------------------------------------------------------------------


async def test_aclose_closes_every_connection() -> None:
    arrived = asyncio.Event()

    async def answer_when_three_wait(peer: Peer) -> None:
        while await peer.request() is not None:
            if len(peer.requests) >= 3:
                arrived.set()
            await arrived.wait()
            await peer.send(ok())

    async with serve(answer_when_three_wait) as server:
        client = client_for(server.url)
        for conversations in await asyncio.gather(*(call(client) for _ in range(3))):
            assert_ok(conversations)
        assert len(server.peers) == 3
        assert not any(peer.closed.is_set() for peer in server.peers)
        await client.aclose()
        await asyncio.wait_for(asyncio.gather(*(peer.closed.wait() for peer in server.peers)), 1.0)


async def test_aclose_while_calls_wait_for_the_slot_fails_them_with_nothing_sent() -> None:
    """``max_connections=1``: one call holds the connection (never answered), two wait for
    it. After ``aclose`` the waiting ones send nothing: a ClientStateError each."""
    first = asyncio.Event()

    async def never_answering(peer: Peer) -> None:
        while await peer.request() is not None:
            first.set()

    async with serve(never_answering) as server:
        client = client_for(server.url, limits=Limits(max_connections=1), timeout=Timeout(read=1.0))
        calls = [asyncio.create_task(call(client)) for _ in range(3)]
        await asyncio.wait_for(first.wait(), 1.0)
        await client.aclose()
        sent = len(server.requests)
        _, *waiting = await asyncio.gather(*calls, return_exceptions=True)
    assert sent == 1 and len(server.requests) == 1
    for outcome in waiting:
        assert isinstance(outcome, ClientStateError), outcome
        assert "nothing was sent" in str(outcome)


def aclose_in_a_second_event_loop(patience: float) -> bool:
    """A call in one ``asyncio.run``, ``aclose`` in another (the first loop closed by
    then): whether the server saw the connection closed within ``patience`` seconds of
    ``aclose``. A socket left open is then collected here (its ResourceWarning with it), not
    in a later test."""
    closed = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve_one() -> None:
            connection, _ = listener.accept()
            with connection:
                request = b""
                while not request.endswith(REQUEST_BODY):
                    request += connection.recv(65536)
                connection.sendall(ok())
                while connection.recv(65536):
                    pass
            closed.set()

        server = threading.Thread(target=serve_one, daemon=True)
        server.start()
        client = client_for(f"http://127.0.0.1:{listener.getsockname()[1]}")
        assert_ok(asyncio.run(call(client)))
        asyncio.run(client.aclose())
        seen = closed.wait(patience)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always", ResourceWarning)
            del client
            gc.collect()
        server.join(1.0)
    return seen


def test_aclose_in_a_second_event_loop_raises_nothing() -> None:
    aclose_in_a_second_event_loop(patience=0.0)


def test_aclose_in_a_second_event_loop_closes_the_connection() -> None:
    assert aclose_in_a_second_event_loop(patience=1.0)


async def test_calls_cancelled_while_connecting_leave_no_unclosed_socket() -> None:
    """Cancelled at each of its first dozen loop iterations (a whole call takes about 20:
    resolving, connecting, ...): no socket is left for the garbage collector to close."""
    cancelled = 0
    async with serve(answering(ok())) as server:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            for index in range(96):
                async with client_for(server.url) as client:
                    task = asyncio.create_task(call(client))
                    for _ in range(index % 12):
                        await asyncio.sleep(0)
                    task.cancel()
                    with suppress(asyncio.CancelledError):
                        await task
                    cancelled += task.cancelled()
            gc.collect()
    assert cancelled >= 48, cancelled
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_a_call_and_aclose_under_uvloop() -> None:
    uvloop = uvloop_module()

    async def scenario() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        async with serve(answering(ok())) as server:
            client = client_for(server.url)
            assert_ok(await call(client))
            assert_ok(await call(client))
            assert len(server.peers) == 1
            await client.aclose()
            await asyncio.wait_for(server.peers[0].closed.wait(), 1.0)

    uvloop.run(scenario())
