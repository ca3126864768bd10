"""The blocking transport (``_transport/_blocking.py``) at the byte level: the sync ``Client``
(and ``SyncTransport`` itself) against raw servers in threads on 127.0.0.1, port 0, that send
exactly the bytes each test names. No event loop is made by any test here (``no_event_loop``).
Every server and every client is closed by its test."""

from __future__ import annotations

import gc
import gzip
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from _redis import free_port as closed_port  # bound, then released: nothing listens
from _requires import unavailable
from test_sync_client import run_script

from proactive_async import (
    ApiResponse,
    AuthenticationError,
    ClientStateError,
    ConnectError,
    ConnectionLostError,
    ConnectTimeout,
    Conversation,
    Limits,
    NameResolutionError,
    ProactiveError,
    ReadTimeout,
    ResponseTooLargeError,
    RetryPolicy,
    ServerError,
    Timeout,
    TLSError,
)
from proactive_async._sync import _RUNTIME, Client, drive
from proactive_async._transport import MAX_ERROR_BODY, SyncTransport, TransportConfig
from proactive_async._transport._http11 import MAX_HEAD, Connection

ROOT = Path(__file__).resolve().parent.parent
PATH = b"/api/Conversation/proactive-conversation"
TOKEN = "tok-SYNC-5eed-0123456789"
OK_BODY = b'[{"id":7,"conversationId":"c-7"}]'
PHONE = "+5511999990000"
NEVER = RetryPolicy.never()


def ok(body: bytes = OK_BODY, *, status: bytes = b"200 OK", fields: bytes = b"") -> bytes:
    """A whole HTTP/1.1 answer framed by its Content-Length; ``fields`` end in CRLF."""
    return b"HTTP/1.1 %b\r\nContent-Type: application/json\r\n%bContent-Length: %d\r\n\r\n%b" % (
        status,
        fields,
        len(body),
        body,
    )


def chunked(
    body: bytes, *, size: int = 10, status: bytes = b"200 OK", fields: bytes = b""
) -> bytes:
    """A whole chunked HTTP/1.1 answer: ``body`` in chunks of ``size`` bytes."""
    chunks = b"".join(
        b"%x\r\n%b\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    )
    return b"HTTP/1.1 %b\r\n%bTransfer-Encoding: chunked\r\n\r\n%b0\r\n\r\n" % (
        status,
        fields,
        chunks,
    )


# --- the raw server -------------------------------------------------------------------


class Peer:
    """One connection the server accepted, served by a thread of its own: it reads whole
    requests (by their Content-Length) and writes exact bytes."""

    def __init__(self, sock: socket.socket, server: RawServer) -> None:
        self.sock = sock
        self.server = server
        self.closed = threading.Event()
        """Set once the client closed this connection (EOF or reset seen)."""
        self.finished = threading.Event()
        """Set once the server's handler ended and the server closed its side."""
        self._buffer = b""

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.closed.set()
            return False
        self._buffer += data
        return True

    def request(self) -> bytes | None:
        """The next whole request; None once the client closed the connection."""
        while b"\r\n\r\n" not in self._buffer:
            if not self._fill():
                return None
        head, _, _ = self._buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        end = len(head) + 4 + length
        while len(self._buffer) < end:
            if not self._fill():
                return None
        raw, self._buffer = self._buffer[:end], self._buffer[end:]
        self.server.received(raw)
        return raw

    def send(self, data: bytes, *, piecewise: bool = False, pause: float = 0.001) -> bool:
        """Write ``data`` at once, or (``piecewise``) a byte a write, ``pause`` s apart;
        False if the client closed the connection meanwhile."""
        try:
            if not piecewise:
                self.sock.sendall(data)
                return True
            for index in range(len(data)):
                self.sock.sendall(data[index : index + 1])
                time.sleep(pause)
        except OSError:
            return False
        return True

    def send_and_close(self, data: bytes) -> None:
        """Write ``data`` and the FIN in one segment (TCP_CORK): the close arrives with the
        answer, so the client's next call always finds it there."""
        with suppress(OSError):
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            self.sock.sendall(data)
            self.sock.shutdown(socket.SHUT_WR)

    def until_closed(self) -> None:
        """Wait for the client to close the connection (or the server's teardown)."""
        while self._fill():
            self._buffer = b""

    def reset(self) -> None:
        """Close with a TCP reset."""
        with suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        self.sock.close()


Handler = Callable[[Peer], None]


@dataclass
class RawServer:
    url: str
    accepted: int = 0
    """TCP connections accepted (a TLS one counts before its handshake)."""
    peers: list[Peer] = field(default_factory=list)
    """One per connection served (after its TLS handshake), in order."""
    requests: list[bytes] = field(default_factory=list)
    """Every request read, on any connection, as its raw bytes."""
    errors: list[BaseException] = field(default_factory=list)
    """What a handler raised that was not the network's doing: re-raised at teardown."""
    changed: threading.Condition = field(default_factory=threading.Condition)

    def received(self, raw: bytes) -> None:
        with self.changed:
            self.requests.append(raw)
            self.changed.notify_all()

    def wait_requests(self, count: int, timeout: float = 5.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.requests) >= count, timeout), (
                f"{len(self.requests)} requests, not {count}"
            )

    def bodies(self) -> list[bytes]:
        return [raw.partition(b"\r\n\r\n")[2] for raw in self.requests]


@contextmanager
def serve(handle: Handler, *, tls: ssl.SSLContext | None = None) -> Iterator[RawServer]:
    """A TCP server on 127.0.0.1, port 0: a thread per connection runs ``handle`` (the
    connection is closed after it). At exit, every connection is shut and every thread
    joined."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = RawServer(f"{'https' if tls else 'http'}://127.0.0.1:{port}")
    threads: list[threading.Thread] = []
    sockets: list[socket.socket] = []

    def run(sock: socket.socket) -> None:
        peer: Peer | None = None
        try:
            if tls is not None:
                sock = tls.wrap_socket(sock, server_side=True)
                sockets.append(sock)
            peer = Peer(sock, server)
            server.peers.append(peer)
            handle(peer)
        except OSError:  # a reset, a refused TLS handshake: the client's doing
            pass
        except BaseException as exc:
            server.errors.append(exc)
        finally:
            sock.close()
            if peer is not None:
                peer.finished.set()

    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return  # the listener was shut: teardown
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server.accepted += 1
            sockets.append(sock)
            thread = threading.Thread(target=run, args=(sock,), daemon=True)
            threads.append(thread)
            thread.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield server
    finally:
        with suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept() (Linux)
        acceptor.join(5.0)
        listener.close()
        for sock in list(sockets):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in list(threads):
            thread.join(5.0)
        assert not acceptor.is_alive() and not any(t.is_alive() for t in threads)
        if server.errors:
            raise server.errors[0]


def answering(answer: bytes, *, piecewise: bool = False) -> Handler:
    """Answers every request of a connection with ``answer``, until the client closes it."""

    def handle(peer: Peer) -> None:
        while peer.request() is not None:
            peer.send(answer, piecewise=piecewise)

    return handle


def answering_then_closing(answer: bytes, *, piecewise: bool = False) -> Handler:
    """Answers one request with ``answer``, then closes the connection."""

    def handle(peer: Peer) -> None:
        if peer.request() is not None:
            peer.send(answer, piecewise=piecewise)

    return handle


def answering_then_holding(answer: bytes) -> Handler:
    """Answers one request with ``answer``, then keeps the connection until the client closes."""

    def handle(peer: Peer) -> None:
        if peer.request() is not None:
            peer.send(answer)
            peer.until_closed()

    return handle


def read_then_close(peer: Peer) -> None:
    """Reads the request and closes the connection, unanswered."""
    peer.request()


def read_then_reset(peer: Peer) -> None:
    """Reads the request and resets the connection, unanswered."""
    if peer.request() is not None:
        peer.reset()


def answering_then_resetting(answer: bytes) -> Handler:
    """Answers one request with ``answer`` (its body framed by the close), then resets."""

    def handle(peer: Peer) -> None:
        if peer.request() is not None:
            peer.send(answer)
            time.sleep(0.05)  # the bytes arrive first: the reset ends a body half-read
            peer.reset()

    return handle


def answering_once_three_wait() -> Handler:
    """Holds every answer until three requests have come (three calls in flight at once:
    three connections), then answers each with ``ok()``."""
    release = threading.Event()

    def handle(peer: Peer) -> None:
        while peer.request() is not None:
            if len(peer.server.requests) >= 3:
                release.set()
            release.wait(5.0)
            peer.send(ok())

    return handle


def never_answering(peer: Peer) -> None:
    """Reads the request, never answers, keeps the connection until the client closes it."""
    if peer.request() is not None:
        peer.until_closed()


# --- the client -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call that needed the process's event loop fails its test: every call here is made
    in its calling thread."""

    def forbidden() -> Any:
        raise AssertionError("a blocking call asked for the shared event loop")

    monkeypatch.setattr(_RUNTIME, "shared", forbidden)


def client_for(url: str, **options: Any) -> Client:
    """A Client making one attempt, whose stalls end in 5 s (not the default 30), on its
    blocking pool."""
    options.setdefault("retry", NEVER)
    options.setdefault("timeout", Timeout(read=5.0))
    client = Client(url, TOKEN, **options)
    assert client._direct is not None, "this client's calls would go through the event loop"
    return client


def call(client: Client, recipient: str = PHONE, **kwargs: Any) -> list[Conversation]:
    return client.create_proactive_conversation(
        channel_id=1, bot_id=2, recipient=[recipient], **kwargs
    )


def call_with_response(client: Client, **kwargs: Any) -> ApiResponse[list[Conversation]]:
    return client.create_proactive_conversation_with_response(
        channel_id=1, bot_id=2, recipient=[PHONE], **kwargs
    )


def assert_ok(conversations: list[Conversation]) -> None:
    [conversation] = conversations
    assert conversation.id == 7 and conversation.conversation_id == "c-7"


def pool(client: Client) -> SyncTransport:
    direct = client._direct
    assert direct is not None
    transport = direct._transport
    assert isinstance(transport, SyncTransport)
    return transport


def idle_connections(client: Client) -> list[Connection]:
    return [c for target in pool(client)._targets.values() for c in target.idle]


def wait_readable(connection: Connection, timeout: float = 2.0) -> None:
    """Wait until the server's close (or bytes) reached this idle connection's socket."""
    sock = connection.sock
    assert sock is not None
    readable, _, _ = select.select([sock], [], [], timeout)
    assert readable, "the server's close never reached the client's socket"


def in_thread(function: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``function`` in a new thread; its result or exception, and when, land in the dict."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = function()
        except BaseException as exc:
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


# --- framing --------------------------------------------------------------------------


def test_a_content_length_body_is_read_and_the_request_is_one_exact_post() -> None:
    with serve(answering(ok())) as server, client_for(server.url) as client:
        assert_ok(call(client))
    [raw] = server.requests
    head, _, body = raw.partition(b"\r\n\r\n")
    request_line, *lines = head.split(b"\r\n")
    fields = {name.lower(): value.strip() for name, _, value in (x.partition(b":") for x in lines)}
    assert request_line == b"POST " + PATH + b" HTTP/1.1"
    assert fields[b"host"] == server.url.removeprefix("http://").encode()
    assert fields[b"authorization"] == b"Bearer " + TOKEN.encode()
    assert fields[b"content-length"] == str(len(body)).encode()
    assert json.loads(body) == {"channelId": 1, "botId": 2, "recipient": [PHONE]}
    assert len(lines) == len(fields)  # no field twice


def test_a_chunked_body_with_extensions_and_trailer_fields_is_read_whole() -> None:
    """Chunk extensions are ignored, trailer fields read and dropped: the connection is then
    clean for the next request (one connection serves both)."""
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;x=y\r\n" + OK_BODY[:5] + b"\r\n"
        b'A ; name="quoted;value"\r\n' + OK_BODY[5:15] + b"\r\n"
        b"%x;last\r\n" % len(OK_BODY[15:]) + OK_BODY[15:] + b"\r\n"
        b"0;end\r\nX-Trailer: 1\r\nX-Checksum: abc\r\n\r\n"
    )
    with serve(answering(answer)) as server, client_for(server.url) as client:
        response = call_with_response(client)
        assert_ok(call(client))
    assert_ok(response.value)
    assert "X-Trailer" not in response.headers
    assert len(server.peers) == 1 and len(server.requests) == 2


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n",
    ],
    ids=["http-1.0", "http-1.1-no-length"],
)
def test_a_body_until_close_is_read_and_that_connection_is_not_reused(head: bytes) -> None:
    with (
        serve(answering_then_closing(head + OK_BODY)) as server,
        client_for(server.url) as client,
    ):
        assert_ok(call(client))
        assert idle_connections(client) == []
        assert_ok(call(client))
    assert len(server.peers) == 2 and len(server.requests) == 2


def test_a_204_has_no_body_and_leaves_the_connection_reusable() -> None:
    """Through ``SyncTransport.post``, run without a loop as the Client runs it (the Client
    would refuse an empty 2xx body)."""
    answer = b"HTTP/1.1 204 No Content\r\nX-Seen: 1\r\n\r\n"
    with serve(answering(answer)) as server:
        transport = SyncTransport(TransportConfig(timeout=Timeout(read=5.0)))
        try:
            first = drive(transport.post(server.url + PATH.decode(), b"{}"))
            second = drive(transport.post(server.url + PATH.decode(), b"{}"))
        finally:
            transport.close()
    assert (first.status, first.body, first.headers["X-Seen"]) == (204, b"", "1")
    assert (second.status, second.body) == (204, b"")
    assert len(server.peers) == 1 and len(server.requests) == 2


@pytest.mark.parametrize("piecewise", [False, True], ids=["at-once", "byte-by-byte"])
def test_interim_1xx_answers_before_the_final_one_are_skipped(piecewise: bool) -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + ok()
    )
    with (
        serve(answering(answer, piecewise=piecewise)) as server,
        client_for(server.url) as client,
    ):
        response = call_with_response(client)
        assert_ok(call(client))
    assert response.status == 200 and "Link" not in response.headers
    assert_ok(response.value)
    assert len(server.peers) == 1


def test_a_101_switching_protocols_is_refused_as_a_bad_answer() -> None:
    answer = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    with serve(answering_then_holding(answer)) as server, client_for(server.url) as client:
        with pytest.raises(ConnectionLostError, match="101 Switching Protocols") as info:
            call(client)
        assert server.peers[0].closed.wait(1.0)
    assert info.value.may_have_been_processed is True


@pytest.mark.parametrize(
    "answer",
    [
        ok(),
        chunked(OK_BODY, size=4),
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + OK_BODY,
    ],
    ids=["content-length", "chunked", "until-close"],
)
def test_an_answer_written_a_byte_at_a_time_is_read_whole(answer: bytes, reads: list[int]) -> None:
    with (
        serve(answering_then_closing(answer, piecewise=True)) as server,
        client_for(server.url) as client,
    ):
        assert_ok(call(client))
    assert len(reads) > len(answer) // 4, reads  # it did come in pieces
    assert len(server.requests) == 1


# --- bad answers ----------------------------------------------------------------------


BAD_ANSWERS = {
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "garbage-status-line": b"HTTP/1.1 OK 200\r\nContent-Length: 2\r\n\r\n[]",
    "content-length-letters": b"HTTP/1.1 200 OK\r\nContent-Length: two\r\n\r\n[]",
    "content-length-negative": b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\n[]",
    "content-lengths-differing": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
    b"Content-Length: 3\r\n\r\n[] ",
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n[]\r\n",
    "chunk-without-crlf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]xx",
    "transfer-encoding-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n[]",
    "head-over-max-head": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_HEAD + 1024) + b"\r\n"
    b"Content-Length: 2\r\n\r\n[]",
    "head-over-max-head-unended": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_HEAD + 1024),
}


@pytest.mark.parametrize("answer", list(BAD_ANSWERS.values()), ids=list(BAD_ANSWERS))
def test_an_answer_that_is_not_http_11_is_a_bad_answer(answer: bytes) -> None:
    """The server keeps the connection: what ends the call is the client's own verdict, and
    the client closes that connection."""
    with (
        serve(answering_then_holding(answer)) as server,
        client_for(server.url, timeout=Timeout(read=2.0)) as client,
    ):
        started = time.monotonic()
        with pytest.raises(ConnectionLostError, match="bad answer") as info:
            call(client)
        assert time.monotonic() - started < 1.5  # not the read timeout
        assert server.peers[0].closed.wait(1.0)
        assert idle_connections(client) == []
    assert "may have been processed" in str(info.value)
    assert info.value.may_have_been_processed is True and info.value.attempts == 1
    assert len(server.requests) == 1
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize(
    ("handler", "how"),
    [
        (read_then_close, "closed before any answer"),
        (
            answering_then_closing(b"HTTP/1.1 200 OK\r\nContent-Le"),
            "in the middle of the answer's head",
        ),
        (answering_then_closing(ok()[:-5]), "in the middle of the answer's body"),
        (answering_then_closing(chunked(OK_BODY)[:-2]), "in the middle of the answer's body"),
        (read_then_reset, "ConnectionResetError"),
        (
            answering_then_resetting(b"HTTP/1.1 200 OK\r\n\r\n" + OK_BODY[:-3]),
            "ConnectionResetError",
        ),
    ],
    ids=[
        "read-then-closed",
        "in-the-head",
        "content-length",
        "chunked",
        "reset",
        "reset-until-close",
    ],
)
def test_a_connection_ending_before_the_whole_answer_is_lost(handler: Handler, how: str) -> None:
    with (
        serve(handler) as server,
        client_for(server.url) as client,
        pytest.raises(ConnectionLostError, match=re.escape(how)) as info,
    ):
        call(client)
    assert info.value.may_have_been_processed is True
    assert "may have been processed" in str(info.value)
    assert len(server.requests) == 1


# --- caps and content codings ---------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n",  # the head alone: refused at it
        chunked(b" " * 2000, size=300),
        b"HTTP/1.1 200 OK\r\n\r\n" + b" " * 2000,
    ],
    ids=["content-length-head", "chunked", "until-close"],
)
def test_a_2xx_body_past_max_response_bytes_is_refused(answer: bytes) -> None:
    with (
        serve(answering_then_holding(answer)) as server,
        client_for(server.url, max_response_bytes=1000) as client,
    ):
        with pytest.raises(ResponseTooLargeError, match="max_response_bytes=1000") as info:
            call(client)
        assert server.peers[0].closed.wait(1.0)
    assert info.value.status == 200 and info.value.may_have_been_processed is True


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize(
    ("cap", "kept"), [(None, MAX_ERROR_BODY), (1000, 1000)], ids=["cap-default", "cap-1000"]
)
def test_an_error_body_is_cut_at_its_cap_and_that_connection_is_not_reused(
    framing: str, cap: int | None, kept: int
) -> None:
    body = b"x" * (MAX_ERROR_BODY + 5000)
    status = b"500 Internal Server Error"
    answer = (
        ok(body, status=status)
        if framing == "content-length"
        else chunked(body, size=4096, status=status)
    )
    options = {} if cap is None else {"max_response_bytes": cap}
    with serve(answering(answer)) as server, client_for(server.url, **options) as client:
        with pytest.raises(ServerError) as info:
            call(client)
        assert idle_connections(client) == []
        assert server.peers[0].closed.wait(1.0)
    assert info.value.status == 500 and info.value.body == b"x" * kept


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        (b"gzip", gzip.compress(OK_BODY)),
        (b"x-gzip", gzip.compress(OK_BODY)),
        (b"deflate", zlib.compress(OK_BODY)),
        (b"deflate", _raw_deflate(OK_BODY)),
    ],
    ids=["gzip", "x-gzip", "deflate-zlib", "deflate-raw"],
)
def test_a_content_coded_body_is_decoded(coding: bytes, encoded: bytes) -> None:
    answer = ok(encoded, fields=b"Content-Encoding: %b\r\n" % coding)
    with serve(answering(answer)) as server, client_for(server.url) as client:
        assert_ok(call(client))
        assert_ok(call(client))
    assert len(server.peers) == 1
    assert b"accept-encoding: gzip, deflate" in server.requests[0].lower()


def test_an_undecodable_gzip_2xx_is_a_lost_connection_that_may_have_been_processed() -> None:
    answer = ok(b"\x1f\x8b not gzip at all", fields=b"Content-Encoding: gzip\r\n")
    with (
        serve(answering(answer)) as server,
        client_for(server.url) as client,
        pytest.raises(ConnectionLostError, match="undecodable body") as info,
    ):
        call(client)
    assert info.value.may_have_been_processed is True


def test_an_undecodable_gzip_error_answer_keeps_its_status_and_bytes() -> None:
    answer = ok(b"not gzip", status=b"502 Bad Gateway", fields=b"Content-Encoding: gzip\r\n")
    with (
        serve(answering(answer)) as server,
        client_for(server.url) as client,
        pytest.raises(ServerError) as info,
    ):
        call(client)
    assert info.value.status == 502 and info.value.body == b"not gzip"


def test_a_gzip_bomb_past_max_response_bytes_is_refused_once_decoded() -> None:
    bomb = gzip.compress(b"[" + b" " * 100_000 + b"]")
    answer = ok(bomb, fields=b"Content-Encoding: gzip\r\n")
    assert len(bomb) < 1000
    with (
        serve(answering(answer)) as server,
        client_for(server.url, max_response_bytes=1000) as client,
        pytest.raises(ResponseTooLargeError, match="once decoded"),
    ):
        call(client)


# --- keep-alive -----------------------------------------------------------------------


def test_sequential_calls_reuse_one_connection() -> None:
    with serve(answering(ok())) as server, client_for(server.url) as client:
        for _ in range(3):
            assert_ok(call(client))
    assert server.accepted == 1 and len(server.requests) == 3


@pytest.mark.parametrize(
    "answer",
    [
        ok(fields=b"Connection: close\r\n"),
        ok(fields=b"Connection: keep-alive, Close\r\n"),
        ok().replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        chunked(OK_BODY, fields=b"Content-Length: 33\r\n"),  # both framings: not trusted after
    ],
    ids=["connection-close", "close-among-tokens", "http-1.0", "chunked-and-content-length"],
)
def test_an_answer_that_does_not_keep_the_connection_gets_a_new_one_next(answer: bytes) -> None:
    """The server keeps its side open: the client alone decides not to reuse it, and closes
    it at once."""
    with serve(answering(answer)) as server, client_for(server.url) as client:
        assert_ok(call(client))
        assert server.peers[0].closed.wait(1.0)
        assert_ok(call(client))
    assert server.accepted == 2 and len(server.requests) == 2


@pytest.mark.parametrize("how", ["fin", "reset", "408-then-fin"])
def test_an_idle_connection_the_server_closed_is_replaced_and_the_call_succeeds(
    how: str,
) -> None:
    """The server ends the kept-alive connection while it is idle (a FIN, a reset, or a 408
    nobody asked for then a FIN), with no ``Connection: close``: the close is on the client's
    socket before the next call, which polls before reuse and goes on a new connection. With
    ``RetryPolicy.never()``, no lost call is hidden by a retry."""
    timeout_408 = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

    went_idle = threading.Event()

    def handle(peer: Peer) -> None:
        if peer.request() is None:
            return
        peer.send(ok())
        if len(peer.server.peers) > 1:
            peer.until_closed()
            return
        went_idle.wait(5.0)
        if how == "reset":
            peer.reset()
        elif how == "408-then-fin":
            peer.send_and_close(timeout_408)

    with serve(handle) as server, client_for(server.url) as client:
        assert_ok(call(client))
        went_idle.set()
        assert server.peers[0].finished.wait(1.0)
        [idle] = idle_connections(client)
        wait_readable(idle)
        assert_ok(call(client))
        assert idle_connections(client) != [idle]
    assert server.accepted == 2 and len(server.requests) == 2


def test_a_server_closing_right_after_each_answer_costs_no_call() -> None:
    """Each answer (Content-Length, no ``Connection: close``) comes with the server's FIN in
    the same segment: the answer is whole, so the connection is kept, and the next call at
    once finds it closed when it polls."""

    def answer_and_close(peer: Peer) -> None:
        if peer.request() is not None:
            peer.send_and_close(ok())

    with serve(answer_and_close) as server, client_for(server.url) as client:
        for _ in range(20):
            assert_ok(call(client))
    assert len(server.requests) == 20 and server.accepted == 20


def test_an_idle_connection_past_the_keepalive_timeout_is_not_reused() -> None:
    limits = Limits(keepalive_timeout=0.2)
    with serve(answering(ok())) as server, client_for(server.url, limits=limits) as client:
        assert_ok(call(client))
        assert_ok(call(client))
        assert server.accepted == 1
        time.sleep(0.25)
        assert_ok(call(client))
        assert server.peers[0].closed.wait(1.0)  # dropped by the client
    assert server.accepted == 2 and len(server.requests) == 3


@pytest.mark.parametrize(
    ("said", "idle", "reused"),
    [
        (b"timeout=5", 0.0, True),
        (b"timeout=5", 3.9, True),
        (b"timeout=5", 4.1, False),
        (b"timeout=1", 0.0, False),
        (b"timeout=1, max=100", 1.5, False),
        (b"max=100", 10.0, True),
    ],
    ids=["5s-fresh", "5s-idle-3.9s", "5s-idle-4.1s", "1s-fresh", "1s-idle-1.5s", "no-timeout"],
)
def test_a_keep_alive_timeout_from_the_server_is_honoured_a_second_early(
    said: bytes, idle: float, reused: bool
) -> None:
    """``Keep-Alive: timeout=N`` (our keepalive_timeout is 15 s): a connection idle N - 1 s
    or longer is not reused (a second before the server's own timeout, so that its close is
    not met half-way). The idle time is made by moving the connection's idle start back."""
    answer = ok(fields=b"Keep-Alive: %b\r\n" % said)
    with serve(answering(answer)) as server, client_for(server.url) as client:
        assert_ok(call(client))
        if said.startswith(b"timeout=1"):  # no time to keep it at all: closed at once
            assert idle_connections(client) == []
        else:
            [connection] = idle_connections(client)
            connection.idle_since -= idle
        assert_ok(call(client))
        if not reused:
            assert server.peers[0].closed.wait(1.0)
    assert server.accepted == (1 if reused else 2) and len(server.requests) == 2


def test_connections_idle_past_the_keepalive_timeout_are_closed_by_the_next_call() -> None:
    """Three calls at once leave three idle connections; the two older ones then pass the
    keep-alive timeout (their idle start moved back) while the newest stays fresh. The next
    call reuses the fresh one and closes the two stale ones."""
    with serve(answering_once_three_wait()) as server, client_for(server.url) as client:
        workers = [in_thread(lambda: call(client)) for _ in range(3)]
        for thread, outcome in workers:
            thread.join(5.0)
            assert_ok(outcome["result"])
        oldest, older, newest = idle_connections(client)
        oldest.idle_since -= 20.0
        older.idle_since -= 20.0
        assert_ok(call(client))
        assert idle_connections(client) == [newest]
        closed = [peer.closed.wait(0.5) for peer in server.peers]
    assert sorted(closed) == [False, True, True]
    assert server.accepted == 3 and len(server.requests) == 4


# --- timeouts -------------------------------------------------------------------------


def test_a_server_that_never_answers_is_a_read_timeout_after_the_read_timeout() -> None:
    with (
        serve(never_answering) as server,
        client_for(server.url, timeout=Timeout(read=0.2)) as client,
    ):
        started = time.monotonic()
        with pytest.raises(
            ReadTimeout, match=r"nothing from http://127\.0\.0\.1:\d+ for 0\.2 s"
        ) as info:
            call(client)
        elapsed = time.monotonic() - started
        assert server.peers[0].closed.wait(1.0)  # abandoned: closed by the client
    assert 0.2 <= elapsed < 1.0
    assert info.value.may_have_been_processed is True and info.value.attempts == 1
    assert "(timeout); the request may have been processed" in str(info.value)
    assert len(server.requests) == 1


def dripping(body: bytes, every: float) -> Handler:
    """Answers with a Content-Length head at once, then ``body`` a byte every ``every`` s."""

    def handle(peer: Peer) -> None:
        if peer.request() is None:
            return
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for index in range(len(body)):
            time.sleep(every)
            if not peer.send(body[index : index + 1]):
                return
        peer.until_closed()

    return handle


def test_a_body_dripping_past_the_total_timeout_is_a_read_timeout_in_total_seconds() -> None:
    with (
        serve(dripping(b"[" + b" " * 18 + b"]", 0.1)) as server,
        client_for(server.url, timeout=Timeout(read=5.0, total=0.3)) as client,
    ):
        started = time.monotonic()
        with pytest.raises(ReadTimeout, match=r"no complete answer from .* in 0\.3 s") as info:
            call(client)
        elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 0.8
    assert info.value.may_have_been_processed is True


def test_a_body_dripping_a_byte_every_tenth_of_a_second_is_no_read_timeout() -> None:
    """The read timeout runs between pieces of the answer: 0.8 s of answer, never 0.3 s
    without a byte."""
    with (
        serve(dripping(b"   [   ]", 0.1)) as server,
        client_for(server.url, timeout=Timeout(read=0.3)) as client,
    ):
        started = time.monotonic()
        assert call(client) == []
        assert time.monotonic() - started >= 0.75


def test_a_calls_own_timeout_passing_is_a_read_timeout_naming_it() -> None:
    with serve(never_answering) as server, client_for(server.url) as client:
        started = time.monotonic()
        with pytest.raises(ReadTimeout, match=r"in 0\.2 s \(the call's timeout\)") as info:
            call(client, timeout=0.2)
        elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 1.0
    assert info.value.may_have_been_processed is True and len(server.requests) == 1


def test_a_call_finding_no_free_connection_in_its_timeout_is_a_connect_timeout() -> None:
    """``max_connections=1``: a slow answer holds the only connection; another call with
    ``timeout=0.2`` gets none in time: nothing was sent. The slow one then succeeds."""
    release = threading.Event()

    def slow(peer: Peer) -> None:
        while peer.request() is not None:
            release.wait(5.0)
            peer.send(ok())

    with (
        serve(slow) as server,
        client_for(server.url, limits=Limits(max_connections=1)) as client,
    ):
        holder, outcome = in_thread(lambda: call(client))
        try:
            server.wait_requests(1)
            started = time.monotonic()
            with pytest.raises(ConnectTimeout, match=r"no connection to .* free") as info:
                call(client, timeout=0.2)
            elapsed = time.monotonic() - started
            assert len(server.requests) == 1
        finally:
            release.set()
            holder.join(5.0)
        assert_ok(outcome["result"])
        assert_ok(call(client))
    assert "nothing was sent" in str(info.value)
    assert info.value.may_have_been_processed is False
    assert 0.2 <= elapsed < 1.0
    assert server.accepted == 1 and len(server.requests) == 2


class LateSlots:
    """The pool's connection slots, handing each slot out only once the caller's wait for
    it has run out (a slot freed at the very end of a call's timeout)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def acquire(self, timeout: float | None = None) -> bool:
        self.inner.acquire()
        if timeout is not None and timeout > 0:
            time.sleep(timeout + 0.001)
        return True

    def release(self) -> None:
        self.inner.release()


def test_a_call_whose_timeout_ends_as_it_gets_its_slot_says_nothing_was_sent() -> None:
    """An idle connection is ready, but the slot comes just after the call's timeout: the
    request is never written, so the error must say that it was not processed (a
    ConnectTimeout, as for no slot at all), and the idle connection stays usable."""
    with serve(answering(ok())) as server, client_for(server.url) as client:
        assert_ok(call(client))
        transport = pool(client)
        transport._slots = LateSlots(transport._slots)  # type: ignore[assignment]
        with pytest.raises(ProactiveError) as info:
            call(client, timeout=0.1)
        reset = server.peers[0].closed.wait(0.2)
    assert len(server.requests) == 1  # nothing was written
    assert info.value.may_have_been_processed is False, info.value
    assert isinstance(info.value, ConnectTimeout)
    assert not reset


def test_a_refused_connection_is_a_connect_error_nothing_sent() -> None:
    with (
        client_for(f"http://127.0.0.1:{closed_port()}") as client,
        pytest.raises(ConnectError, match=r"could not connect to http://127\.0\.0\.1") as info,
    ):
        call(client)
    assert type(info.value) is ConnectError
    assert info.value.may_have_been_processed is False


@pytest.fixture
def slow_resolver(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names under ``.slow.test`` take 3 s to resolve (to 127.0.0.1); ``missing.test`` does
    not exist; the rest resolve as usual. The names asked for are recorded."""
    asked: list[str] = []
    original = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(str(host))
        if str(host).endswith(".slow.test"):
            time.sleep(3.0)
            return original("127.0.0.1", port, *args, **kwargs)
        if host == "missing.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return original(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_a_resolver_slower_than_the_connect_timeout_is_a_connect_timeout(
    slow_resolver: list[str],
) -> None:
    """``getaddrinfo`` has no timeout: the connect timeout still bounds it (nothing sent)."""
    started = time.monotonic()
    with (
        client_for(f"http://api.slow.test:{closed_port()}", timeout=Timeout(connect=0.2)) as client,
        pytest.raises(ConnectTimeout) as info,
    ):
        call(client)
    assert time.monotonic() - started < 1.5
    assert info.value.may_have_been_processed is False
    assert slow_resolver == ["api.slow.test"]


def test_a_calls_own_timeout_bounds_resolving_too(slow_resolver: list[str]) -> None:
    started = time.monotonic()
    with (
        client_for(f"http://api.slow.test:{closed_port()}", timeout=Timeout(connect=None)) as c,
        pytest.raises(ConnectTimeout),
    ):
        call(c, timeout=0.2)
    assert time.monotonic() - started < 1.5


def test_a_name_that_does_not_resolve_is_a_name_resolution_error(slow_resolver: list[str]) -> None:
    with (
        client_for("http://missing.test:8080") as client,
        pytest.raises(NameResolutionError, match=r"missing\.test") as info,
    ):
        call(client)
    assert info.value.may_have_been_processed is False


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """``socket.socket.connect`` times out at once; the timeout each socket had is recorded."""
    budgets: list[float | None] = []

    def connect(self: socket.socket, address: Any) -> None:
        budgets.append(self.gettimeout())
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket.socket, "connect", connect)
    return budgets


def test_the_connect_timeout_bounds_connecting(connects: list[float | None]) -> None:
    timeout = Timeout(connect=0.5, read=5.0)
    with (
        client_for(f"http://127.0.0.1:{closed_port()}", timeout=timeout) as client,
        pytest.raises(ConnectTimeout, match=r"connecting to http://127\.0\.0\.1:\d+ timed out"),
    ):
        call(client)
    [budget] = connects
    assert budget is not None and 0.4 < budget <= 0.5


def test_a_calls_own_timeout_shorter_than_the_connect_timeout_bounds_connecting(
    connects: list[float | None],
) -> None:
    timeout = Timeout(connect=5.0, read=5.0)
    with (
        client_for(f"http://127.0.0.1:{closed_port()}", timeout=timeout) as client,
        pytest.raises(ConnectTimeout, match="took the whole timeout; nothing was sent") as info,
    ):
        call(client, timeout=0.3)
    [budget] = connects
    assert budget is not None and 0.2 < budget <= 0.3
    assert info.value.may_have_been_processed is False


def test_a_read_timeout_shorter_than_the_connect_timeout_bounds_connecting(
    connects: list[float | None],
) -> None:
    """The read timeout runs from the attempt's start (``Timeout``'s docstring)."""
    timeout = Timeout(connect=5.0, read=0.4)
    with (
        client_for(f"http://127.0.0.1:{closed_port()}", timeout=timeout) as client,
        pytest.raises(ConnectTimeout, match="nothing was sent"),
    ):
        call(client)
    [budget] = connects
    assert budget is not None and 0.3 < budget <= 0.4


def test_with_no_timeouts_at_all_connecting_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    budgets: list[float | None] = []

    def connect(self: socket.socket, address: Any) -> None:
        budgets.append(self.gettimeout())
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket.socket, "connect", connect)
    timeout = Timeout(connect=None, read=None, total=None)
    with (
        client_for(f"http://127.0.0.1:{closed_port()}", timeout=timeout) as client,
        pytest.raises(ConnectError, match="Connection refused"),
    ):
        call(client)
    assert budgets == [None]


# --- threads --------------------------------------------------------------------------


def calls_from_threads(url: str, threads: int, calls: int) -> list[BaseException]:
    """``threads`` threads making ``calls`` calls each (each to a recipient of its own)
    through one Client with three connections, closed after; what the calls raised."""
    failures: list[BaseException] = []
    with client_for(url, limits=Limits(max_connections=3)) as client:

        def work(number: int) -> None:
            try:
                for i in range(calls):
                    assert_ok(call(client, f"+55119{number:04d}{i:04d}"))
            except BaseException as exc:
                failures.append(exc)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60.0)
        assert not any(worker.is_alive() for worker in workers)
    return failures


def test_eight_threads_share_three_connections_and_every_call_is_answered() -> None:
    threads, calls = 8, 50
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with serve(answering(ok())) as server:
            failures = calls_from_threads(server.url, threads, calls)
            assert all(peer.closed.wait(1.0) for peer in server.peers)  # closed by close()
        gc.collect()
    assert failures == []
    assert len(server.requests) == threads * calls
    assert 1 <= server.accepted <= 3
    recipients = {json.loads(body)["recipient"][0] for body in server.bodies()}
    assert len(recipients) == threads * calls
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


# --- closing --------------------------------------------------------------------------


def test_close_closes_every_idle_connection() -> None:
    with serve(answering_once_three_wait()) as server:
        client = client_for(server.url)
        workers = [in_thread(lambda: call(client)) for _ in range(3)]
        for thread, outcome in workers:
            thread.join(5.0)
            assert_ok(outcome["result"])
        assert server.accepted == 3 and len(idle_connections(client)) == 3
        assert not any(peer.closed.is_set() for peer in server.peers)
        client.close()
        assert all(peer.closed.wait(1.0) for peer in server.peers)


def test_close_from_another_thread_ends_a_call_waiting_for_its_answer() -> None:
    with serve(never_answering) as server:
        client = client_for(server.url, timeout=Timeout(read=30.0))
        thread, outcome = in_thread(lambda: call(client))
        server.wait_requests(1)
        time.sleep(0.05)  # the call is in recv by now
        closing = time.monotonic()
        client.close()
        thread.join(5.0)
        assert server.peers[0].closed.wait(1.0)
    error = outcome["error"]
    assert isinstance(error, ConnectionLostError), error
    assert outcome["at"] - closing < 2.0
    assert error.may_have_been_processed is True


def test_close_fails_the_calls_waiting_for_a_slot_and_they_send_nothing() -> None:
    """``max_connections=1``: one call holds the connection (never answered), two wait for
    it. After ``close`` the holder's call is lost, the waiting ones send nothing."""
    with serve(never_answering) as server:
        client = client_for(server.url, limits=Limits(max_connections=1), timeout=Timeout(read=30))
        holder = in_thread(lambda: call(client))
        server.wait_requests(1)
        waiters = [in_thread(lambda: call(client)) for _ in range(2)]
        slots = pool(client)._slots
        deadline = time.monotonic() + 5.0
        while slots._waiting < 2:
            assert time.monotonic() < deadline, "the calls never waited for the slot"
            time.sleep(0.005)
        closing = time.monotonic()
        client.close()
        for thread, _ in [holder, *waiters]:
            thread.join(5.0)
    assert isinstance(holder[1]["error"], ConnectionLostError), holder[1]
    for _, outcome in waiters:
        error = outcome["error"]
        assert isinstance(error, ClientStateError), error
        assert "nothing was sent" in str(error) and error.may_have_been_processed is False
        assert outcome["at"] - closing < 2.0
    assert len(server.requests) == 1 and server.accepted == 1


def test_a_closed_client_refuses_calls_and_sends_nothing() -> None:
    with serve(answering(ok())) as server:
        client = client_for(server.url)
        assert_ok(call(client))
        client.close()
        client.close()  # idempotent
        with pytest.raises(ClientStateError, match="the client is closed"):
            call(client)
        with pytest.raises(ClientStateError, match="the client is closed"):
            call_with_response(client)
        assert server.peers[0].closed.wait(1.0)
    assert len(server.requests) == 1 and server.accepted == 1


# --- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A server context with a certificate for 127.0.0.1, and ``ca_file`` to trust it:
    trustme's private CA, else a self-signed certificate made by ``openssl req``."""
    folder = tmp_path_factory.mktemp("tls")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca_file = folder / "ca.pem"
    try:
        import trustme
    except ImportError:
        key, cert = folder / "key.pem", folder / "cert.pem"
        try:
            subprocess.run(
                [
                    *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                    *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
                    *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            unavailable(f"neither trustme nor a working openssl: {exc}")
        server_context.load_cert_chain(cert, key)
        ca_file.write_bytes(cert.read_bytes())
    else:
        ca = trustme.CA()
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
        ca.cert_pem.write_to_path(str(ca_file))
    return SimpleNamespace(server_context=server_context, ca_file=str(ca_file))


def test_tls_verified_with_the_ca_file_works_and_reuses_the_connection(
    tls_files: SimpleNamespace,
) -> None:
    with (
        serve(answering(ok()), tls=tls_files.server_context) as server,
        client_for(server.url, verify=tls_files.ca_file) as client,
    ):
        assert_ok(call(client))
        assert_ok(call(client))
    assert server.accepted == 1 and len(server.requests) == 2


def test_tls_against_an_untrusted_certificate_fails_default_verification(
    tls_files: SimpleNamespace,
) -> None:
    with (
        serve(answering(ok()), tls=tls_files.server_context) as server,
        client_for(server.url) as client,
        pytest.raises(TLSError, match=re.escape(server.url)) as info,
    ):
        call(client)
    assert info.value.may_have_been_processed is False and info.value.fatal is True
    assert "certificate" in str(info.value)
    assert server.requests == [] and server.accepted == 1


def test_tls_with_verification_off_works(tls_files: SimpleNamespace) -> None:
    with (
        serve(answering(ok()), tls=tls_files.server_context) as server,
        client_for(server.url, verify=False) as client,
    ):
        assert_ok(call(client))
    assert len(server.requests) == 1


def test_tls_an_idle_connection_the_server_closed_is_replaced(tls_files: SimpleNamespace) -> None:
    def handle(peer: Peer) -> None:
        if peer.request() is not None:
            peer.send(ok())
            if len(peer.server.peers) > 1:
                peer.until_closed()

    with (
        serve(handle, tls=tls_files.server_context) as server,
        client_for(server.url, verify=tls_files.ca_file) as client,
    ):
        assert_ok(call(client))
        assert server.peers[0].finished.wait(1.0)
        [idle] = idle_connections(client)
        wait_readable(idle)
        assert_ok(call(client))
    assert server.accepted == 2 and len(server.requests) == 2


def test_tls_a_hung_handshake_is_a_connect_timeout() -> None:
    """The server accepts TCP and never answers the ClientHello: nothing was sent."""
    with serve(Peer.until_closed) as server:
        url = server.url.replace("http://", "https://")
        with client_for(url, timeout=Timeout(total=0.4), verify=False) as client:
            started = time.monotonic()
            with pytest.raises(ConnectTimeout, match="nothing was sent") as info:
                call(client)
    assert info.value.may_have_been_processed is False
    assert time.monotonic() - started < 2.0 and server.requests == []


def test_tls_close_from_another_thread_ends_a_call_waiting_for_its_answer(
    tls_files: SimpleNamespace,
) -> None:
    with serve(never_answering, tls=tls_files.server_context) as server:
        client = client_for(server.url, verify=tls_files.ca_file, timeout=Timeout(read=30.0))
        thread, outcome = in_thread(lambda: call(client))
        server.wait_requests(1)
        time.sleep(0.05)
        closing = time.monotonic()
        client.close()
        thread.join(5.0)
    assert isinstance(outcome.get("error"), ConnectionLostError), outcome
    assert outcome["at"] - closing < 2.0


# --- secrets --------------------------------------------------------------------------


def _echoing_401(peer: Peer) -> None:
    raw = peer.request()
    if raw is None:
        return
    authorization = next(
        line.partition(b":")[2].strip()
        for line in raw.split(b"\r\n")
        if line.lower().startswith(b"authorization:")
    )
    problem = json.dumps(
        {"title": "Unauthorized", "detail": f"bad credentials: {authorization.decode()}"}
    ).encode()
    peer.send(
        ok(
            problem,
            status=b"401 Unauthorized",
            fields=b"Content-Type: application/problem+json\r\nX-Echo: %b\r\n" % authorization,
        )
    )
    peer.until_closed()


SECRET_CASES: dict[str, tuple[Handler, dict[str, Any], type[ProactiveError]]] = {
    "bad-answer": (answering_then_holding(BAD_ANSWERS["not-http"]), {}, ConnectionLostError),
    "read-timeout": (never_answering, {"timeout": Timeout(read=0.2)}, ReadTimeout),
    "lost": (read_then_reset, {}, ConnectionLostError),
    "401-echoing-the-token": (_echoing_401, {}, AuthenticationError),
    "too-large": (
        answering_then_holding(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"),
        {"max_response_bytes": 1000},
        ResponseTooLargeError,
    ),
}


LOCALS_LEAKS: dict[str, pytest.MarkDecorator] = {}


def failed_call(client: Client, expected: type[ProactiveError]) -> ProactiveError:
    """The error of a call (this frame's locals hold nothing of the request)."""
    with pytest.raises(expected) as info:
        call(client)
    return info.value


@pytest.mark.parametrize("case", list(SECRET_CASES), ids=list(SECRET_CASES))
def test_the_token_is_in_no_message_nor_repr_of_an_error(case: str) -> None:
    handler, options, expected = SECRET_CASES[case]
    with serve(handler) as server, client_for(server.url, **options) as client:
        error = failed_call(client, expected)
    shown = [str(error), repr(error), repr(error.args), error.message]
    shown += [repr(vars(error))]  # body, headers, problem of a status error
    for text in shown:
        assert TOKEN not in text, text
    if isinstance(error, AuthenticationError):
        assert b"[redacted]" in error.body and "[redacted]" in error.headers["X-Echo"]
        assert "Unauthorized" in str(error)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(case, marks=LOCALS_LEAKS[case]) if case in LOCALS_LEAKS else case
        for case in SECRET_CASES
    ],
)
def test_the_token_is_in_no_local_of_an_errors_traceback(case: str) -> None:
    """A traceback rendered with its locals (as Sentry, rich or ``pytest -l`` do) shows no
    token: no frame the error passed through holds the request's head."""
    handler, options, expected = SECRET_CASES[case]
    with serve(handler) as server, client_for(server.url, **options) as client:
        error = failed_call(client, expected)
    rendered = traceback.TracebackException.from_exception(error, capture_locals=True)
    text = "".join(rendered.format())
    assert expected.__name__ in text and "client = " in text  # the locals were rendered
    assert TOKEN not in text


# --- retries --------------------------------------------------------------------------


def test_a_503_then_200_is_retried_by_the_default_policy_sleeping_in_the_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unavailable_503 = ok(b"", status=b"503 Service Unavailable", fields=b"Retry-After: 0.05\r\n")
    answers = iter([unavailable_503, ok()])

    def handle(peer: Peer) -> None:
        while peer.request() is not None:
            peer.send(next(answers))

    caller = threading.get_ident()
    sleeps: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if threading.get_ident() == caller:
            sleeps.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    with serve(handle) as server, client_for(server.url, retry=RetryPolicy()) as client:
        response = call_with_response(client)
    assert response.attempts == 2 and response.status == 200
    assert_ok(response.value)
    assert sleeps == [0.05]
    assert len(server.requests) == 2 and server.accepted == 1


RETRY_SCRIPT = """
import json, sys, threading
from proactive_async import Client, Timeout
from proactive_async._sync import _RUNTIME

with Client(sys.argv[1], sys.argv[2], timeout=Timeout(read=5.0)) as client:
    response = client.create_proactive_conversation_with_response(
        channel_id=1, bot_id=2, recipient=["+5511999990000"]
    )
    again = client.create_proactive_conversation(
        channel_id=1, bot_id=2, recipient=["+5511999990001"]
    )
print(json.dumps({
    "attempts": response.attempts,
    "ids": [c.id for c in response.value + again],
    "no_loop": _RUNTIME._shared is None,
    "threads": threading.active_count(),
}))
"""


def test_a_script_with_a_retry_makes_no_event_loop_and_no_thread() -> None:
    unavailable_503 = ok(b"", status=b"503 Service Unavailable", fields=b"Retry-After: 0.05\r\n")
    answers = iter([unavailable_503, ok(), ok()])

    def handle(peer: Peer) -> None:
        while peer.request() is not None:
            peer.send(next(answers))

    with serve(handle) as server:
        done = run_script(RETRY_SCRIPT, server.url, TOKEN)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert json.loads(done.stdout) == {"attempts": 2, "ids": [7, 7], "no_loop": True, "threads": 1}
    assert len(server.requests) == 3


# --- Ctrl-C ---------------------------------------------------------------------------


CTRL_C_SCRIPT = """
import sys
from proactive_async import Client, RetryPolicy, Timeout

client = Client(sys.argv[1], sys.argv[2], retry=RetryPolicy.never(), timeout=Timeout(read=30.0))
if sys.argv[3] == "with":
    with client:
        client.create_proactive_conversation(channel_id=1, bot_id=2, recipient=["+5511999990000"])
else:  # left open: closed at exit
    client.create_proactive_conversation(channel_id=1, bot_id=2, recipient=["+5511999990000"])
"""


@pytest.mark.parametrize("closing", ["with", "at-exit"])
def test_ctrl_c_stops_a_call_waiting_for_its_answer_promptly_and_cleanly(closing: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONWARNINGS", None)
    with serve(never_answering) as server:
        process = subprocess.Popen(
            [sys.executable, "-W", "error", "-c", CTRL_C_SCRIPT, server.url, TOKEN, closing],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        try:
            server.wait_requests(1, timeout=30.0)
            time.sleep(0.1)  # blocked in recv by now
            interrupted = time.monotonic()
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=10.0)
            elapsed = time.monotonic() - interrupted
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert server.peers[0].closed.wait(1.0)
    assert process.returncode == -signal.SIGINT, err
    assert elapsed < 2.0
    assert out == ""
    assert err.count("Traceback") == 1 and err.rstrip().splitlines()[-1] == "KeyboardInterrupt"
    assert "Warning" not in err and "Exception ignored" not in err
    assert len(server.requests) == 1
