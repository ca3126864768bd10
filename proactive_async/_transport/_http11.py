"""One HTTP/1.1 connection: a request written whole, its answer read by RFC 9112's rules.

The direct transport's wire (``_direct.py``): one ``asyncio.BufferedProtocol`` per
connection, one request at a time on it (no pipelining). Why not aiohttp here: a call
through aiohttp's ``ClientSession.post`` costs about 100 us of CPU (a ClientRequest and a
ClientResponse, a multidict per side, its timers, its tracing hooks, a StreamReader and
four coroutine layers); this protocol parses the same answer in a tenth of that. Measured
(a bare loop, 16k calls, 64 in flight, the fast local server, three rounds): aiohttp
8.2k-9.4k calls/s, this protocol 25.7k-33.6k on asyncio's loop and 32.6k-42.9k on uvloop.
aiohttp stays the transport through a proxy (``_aiohttp.py``).

What is read, and how its end is found (RFC 9112 section 6.3):

- the head: a status line ``HTTP/1.x NNN reason`` and fields, ending with an empty line
  (CRLF; a bare LF is accepted, as the RFC allows); more than ``MAX_HEAD`` bytes of it is a
  bad answer; 1xx answers before the final one are skipped (101 is a bad answer: nothing
  asked to switch protocols);
- the body: none for 204 and 304; chunked if ``Transfer-Encoding`` ends in ``chunked``
  (its trailer fields read and dropped), any other transfer coding is a bad answer;
  else ``Content-Length`` (values that differ, or are not digits, are a bad answer); else
  the body runs until the server closes the connection.

A connection is reused only after a whole answer to HTTP/1.1 without ``Connection: close``,
framed by its length or chunks, with nothing after it. Data that comes when no request is
waiting closes it (a server's ``408`` before it closes an idle connection, say).
"""

from __future__ import annotations

import asyncio
import re
import select
import socket
from typing import Final, Protocol, cast

from multidict import CIMultiDict, CIMultiDictProxy

from .._errors import ResponseTooLargeError

__all__ = [
    "MAX_HEAD",
    "Answer",
    "BadAnswer",
    "Connection",
    "LostConnection",
    "NotSent",
    "Waiter",
]

MAX_HEAD: Final = 64 * 1024
"""Bytes an answer's head may take, status line and fields (aiohttp allows 8 KiB a field)."""

_UNFIT: Final = select.POLLIN | select.POLLPRI | getattr(select, "POLLRDHUP", 0)
_EMPTY_LINE = re.compile(rb"\r?\n\r?\n")
"""The end of a head: its first empty line (CRLF, or a bare LF as RFC 9112 allows)."""
_HEX = frozenset(b"0123456789abcdefABCDEF")
_NO_BODY = (204, 304)
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE, _DONE = range(8)


class BadAnswer(Exception):
    """The bytes that came are not an HTTP/1.1 answer; the message says what is wrong."""


class NotSent(Exception):
    """The connection ended before the request was written: it was certainly not sent."""


class LostConnection(Exception):
    """The connection ended before the whole answer came; the message says how."""


class Answer:
    """One complete answer: status, header fields, body (still content-coded)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: CIMultiDictProxy[str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class Waiter(Protocol):
    """Where an answer (or why none came) goes: an ``asyncio.Future``, or the blocking
    transport's plain holder (``_blocking.py``)."""

    def done(self) -> bool: ...
    def set_result(self, result: Answer, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


READ_SIZE: Final = 16 * 1024
"""Bytes a read may take: the size of each connection's read buffer. An answer is a few
hundred bytes; a larger body takes more reads. Each connection holds one (64 connections:
1 MiB)."""


class Connection(asyncio.BufferedProtocol):
    """One connection's protocol: ``request`` writes a request and returns its answer's
    future. ``total_bytes`` (bytes received) is what a read timeout watches for progress.

    A buffered protocol: the loop reads into the connection's own buffer (``get_buffer``,
    ``buffer_updated``), and only the bytes that came are copied out. With a plain
    protocol, asyncio's loop allocates 256 KiB for every read: past glibc's mmap threshold,
    so each read cost an mmap, an mremap to the size read and a munmap, with their page
    faults, unless something earlier in the process happened to raise the threshold.
    Measured (8 tasks on one AsyncClient, the fast local server, bench 11's rate): 17k
    calls/s in a bare process against 28k in one whose imports had raised it; strace: 1.3
    mmap, munmap and mremap a call.
    """

    __slots__ = (
        "_body",
        "_buffer",
        "_cap",
        "_error_cap",
        "_gone",
        "_headers",
        "_keep_alive",
        "_left",
        "_lost",
        "_poller",
        "_read",
        "_since",
        "_state",
        "_status",
        "_truncated",
        "_waiter",
        "idle_since",
        "keep_for",
        "open",
        "reusable",
        "sock",
        "total_bytes",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.total_bytes = 0
        self.open = True
        """False once the connection is lost or closed: never reused then."""
        self.reusable = False
        """True after a whole answer that leaves the connection fit for the next request."""
        self.idle_since = 0.0
        self.sock: socket.socket | None = None
        """The connected socket, to close when the connection's event loop is gone."""
        self.keep_for: float | None = None
        """Seconds the server said it keeps the connection idle (``Keep-Alive: timeout=``)."""
        self._buffer = bytearray()
        self._waiter: Waiter | None = None
        self._state = _DONE
        self._cap = 0
        self._error_cap = 0
        self._status = 0
        self._headers: CIMultiDictProxy[str] | None = None
        self._keep_alive = False
        self._left = 0
        self._body = bytearray()
        self._truncated = False
        self._lost: asyncio.Future[None] | None = None
        self._gone = False
        self._since = 0  # total_bytes when the request went out
        self._poller: select.poll | None = None
        self._read = memoryview(bytearray(READ_SIZE))

    # --- asyncio.BufferedProtocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._poller = select.poll()
            self._poller.register(sock.fileno(), _UNFIT)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._read[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """``data`` came (the bytes of ``buffer_updated``, or of a blocking read)."""
        self.total_bytes += len(data)
        if self._waiter is None or self._state == _DONE:
            self.close()  # nothing asked for it: the connection's state is unknown
            return
        self._buffer += data
        try:
            self._parse()
        except (BadAnswer, ResponseTooLargeError) as exc:
            self._fail(exc)
        except Exception as exc:  # a parse this module did not foresee: still a bad answer
            self._fail(BadAnswer(f"{type(exc).__name__}: {exc}"))

    def eof_received(self) -> bool:
        # Never reused from now on: over TLS the transport is not "closing" until
        # connection_lost, an iteration later, and a request written between is lost.
        self.open = False
        self.reusable = False
        return False  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.reusable = False
        self._gone = True
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self._waiter is None or self._waiter.done():
            return
        if self._state == _UNTIL_CLOSE and exc is None:  # a reset is no end of the body
            self._finish(bytes(self._body))
            return
        if self._state == _HEAD and self.total_bytes == self._since:
            how = "closed before any answer"
        elif self._state == _HEAD:
            how = "closed in the middle of the answer's head"
        else:
            how = "closed in the middle of the answer's body"
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else how
        self._waiter.set_exception(LostConnection(reason))

    # --- requests -----------------------------------------------------------------------

    def request(self, data: bytes, cap: int, error_cap: int) -> asyncio.Future[Answer]:
        """Write ``data`` (a whole request) and return the future of its answer: a body over
        ``cap`` bytes is a ResponseTooLargeError for a 2xx answer; another status's body is
        cut to ``error_cap`` bytes (the connection then closes)."""
        waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.begin(data, cap, error_cap, waiter)
        return waiter

    def begin(self, data: bytes, cap: int, error_cap: int, waiter: Waiter) -> None:
        """Write ``data`` (a whole request); its answer, or why none came, goes to
        ``waiter`` (the caps as in ``request``)."""
        transport = self.transport
        if transport is None or not self.open or transport.is_closing():
            raise NotSent("the connection closed before the request was written")
        self._waiter = waiter
        self._state = _HEAD
        self._cap, self._error_cap = cap, error_cap
        self.reusable = False
        self._truncated = False
        self._since = self.total_bytes
        transport.write(data)

    def close(self, *, at_once: bool = False) -> None:
        """Close now; an answer still awaited ends as a LostConnection. ``at_once`` drops it
        without a graceful end (a request abandoned half-way: no TLS close_notify)."""
        self.open = False
        self.reusable = False
        if self.transport is not None:
            if at_once:
                self.transport.abort()
            else:
                self.transport.close()

    def fit(self) -> bool:
        """Whether this idle connection can carry a request: open, and nothing readable on
        its socket. An idle connection has nothing to read; if it has, it is the server's
        close (or reset, or bytes nobody asked for) that the loop has not run yet, and a
        request written now would be lost after it may have been read: an ambiguous
        outcome, where dropping the connection leaves the request certainly unsent."""
        transport = self.transport
        if not self.open or transport is None or transport.is_closing():
            return False
        return self._poller is None or not self._poller.poll(0)

    def fresh(self, now: float, ours: float) -> bool:
        """Whether this idle connection may still be used at ``now``: idle less than
        ``ours`` (``Limits.keepalive_timeout``), or less if the server said less (a second
        before its own ``Keep-Alive: timeout=``, so that its close is not met half-way)."""
        said = self.keep_for
        return now - self.idle_since < (ours if said is None else min(ours, said - 1.0))

    def wait_lost(self) -> asyncio.Future[None]:
        """Done once the connection is lost (after ``close``, a TLS goodbye may take a
        while)."""
        if self._lost is None:
            self._lost = asyncio.get_running_loop().create_future()
            if self.transport is None or self._gone:
                self._lost.set_result(None)
        return self._lost

    # --- parsing --------------------------------------------------------------------------

    def _parse(self) -> None:
        buffer = self._buffer
        while True:
            if self._truncated:  # an error answer cut at its cap: the rest is not wanted
                self._finish(bytes(self._body))
                return
            state = self._state
            if state == _HEAD:
                if not self._read_head():
                    return
            elif state == _LENGTH:
                left, have = self._left, len(buffer)
                if have < left:
                    self._take(have)
                    self._left = left - have
                    return
                if not self._body and left <= self._room():  # the whole body at once
                    body = bytes(buffer[:left])
                    del buffer[:left]
                    self._finish(body)
                else:
                    self._take(left)
                    self._finish(bytes(self._body))
            elif state == _CHUNK_SIZE:
                if not self._read_chunk_size():
                    return
            elif state == _CHUNK_DATA:  # taken as it comes: the cap holds within a chunk
                take = min(self._left, len(buffer))
                self._take(take)
                self._left -= take
                if self._left:
                    return
                self._state = _CHUNK_END
            elif state == _CHUNK_END:  # CRLF, or a bare LF as in the head
                end = 1 if buffer[:1] == b"\n" else 2 if buffer[:2] == b"\r\n" else 0
                if end:
                    del buffer[:end]
                    self._state = _CHUNK_SIZE
                elif buffer == b"" or buffer == b"\r":
                    return
                else:
                    raise BadAnswer("a chunk does not end with CRLF")
            elif state == _TRAILER:
                if not self._read_trailer():
                    return
            elif state == _UNTIL_CLOSE:
                self._take(len(buffer))
                return
            else:  # _DONE with bytes left: not ours
                return

    def _take(self, count: int) -> None:
        """Move ``count`` bytes from the buffer into the body, within the caps."""
        buffer = self._buffer
        room = self._room()
        if count > room:
            if 200 <= self._status < 300:
                raise ResponseTooLargeError(
                    f"response passes max_response_bytes={self._cap}", status=self._status
                )
            self._body += buffer[:room]
            self._truncated = True
        else:
            self._body += buffer[:count]
        del buffer[:count]

    def _room(self) -> int:
        cap = self._cap if 200 <= self._status < 300 else self._error_cap
        return max(0, cap - len(self._body))

    def _read_head(self) -> bool:
        buffer = self._buffer
        found = _EMPTY_LINE.search(buffer)
        if found is None:
            if len(buffer) > MAX_HEAD:
                raise BadAnswer(f"the answer's head passes {MAX_HEAD} bytes")
            return False
        end = found.start()
        if end > MAX_HEAD:
            raise BadAnswer(f"the answer's head passes {MAX_HEAD} bytes")
        head = bytes(buffer[:end])
        del buffer[: found.end()]
        status, keep_alive, fields = parse_head(head)
        if 100 <= status < 200:
            if status == 101:
                raise BadAnswer("101 Switching Protocols, which nothing asked for")
            return True  # an interim answer: the final one follows
        headers = CIMultiDictProxy(CIMultiDict(fields))
        self._status, self._headers = status, headers
        self._body = bytearray()
        self._truncated = False
        self._keep_alive = keep_alive and "close" not in _tokens(headers, "Connection")
        if "Keep-Alive" in headers:
            self.keep_for = _keep_alive_timeout(headers)
        self._frame(status, headers)
        return True

    def _frame(self, status: int, headers: CIMultiDictProxy[str]) -> None:
        """Choose how the body's end is found (RFC 9112 section 6.3)."""
        if status in _NO_BODY:
            self._finish(b"")
            return
        if "Transfer-Encoding" in headers:
            codings = _tokens(headers, "Transfer-Encoding")
            if codings != ["chunked"]:
                raise BadAnswer(f"unsupported Transfer-Encoding {', '.join(codings)!r}")
            if "Content-Length" in headers:
                self._keep_alive = False  # both framings: the connection is not trusted after
            self._state = _CHUNK_SIZE
            return
        lengths = headers.getall("Content-Length", [])
        if lengths:
            values = {value.strip() for length in lengths for value in length.split(",")}
            value = next(iter(values))
            if len(values) != 1 or not (value.isascii() and value.isdigit()) or len(value) > 18:
                raise BadAnswer(f"invalid Content-Length {', '.join(lengths)!r}")
            length = int(value)
            if length > self._cap and 200 <= status < 300:
                raise ResponseTooLargeError(
                    f"response of {length} bytes passes max_response_bytes={self._cap}",
                    status=status,
                )
            self._left = length
            self._state = _LENGTH
            if length == 0:
                self._finish(b"")
            return
        self._keep_alive = False
        self._state = _UNTIL_CLOSE

    def _read_chunk_size(self) -> bool:
        buffer = self._buffer
        end = buffer.find(b"\n")
        if end < 0:
            if len(buffer) > 4096:
                raise BadAnswer("a chunk size line passes 4096 bytes")
            return False
        line = bytes(buffer[:end]).rstrip(b"\r")
        del buffer[: end + 1]
        digits = line.split(b";", 1)[0].strip(b" \t")
        if not digits or not _HEX.issuperset(digits) or len(digits) > 16:
            raise BadAnswer(f"invalid chunk size {line[:40]!r}")
        size = int(digits, 16)
        if size == 0:
            self._state = _TRAILER
        else:
            self._left = size
            self._state = _CHUNK_DATA
        return True

    def _read_trailer(self) -> bool:
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    raise BadAnswer(f"the answer's trailer passes {MAX_HEAD} bytes")
                return False
            line = bytes(buffer[:end]).rstrip(b"\r")
            del buffer[: end + 1]
            if not line:
                self._finish(bytes(self._body))
                return True

    def _finish(self, body: bytes) -> None:
        self._state = _DONE
        waiter, self._waiter = self._waiter, None
        self.reusable = self._keep_alive and not self._truncated and not self._buffer and self.open
        if not self.reusable:
            self.close()
        assert self._headers is not None
        if waiter is not None and not waiter.done():
            waiter.set_result(Answer(self._status, self._headers, body))

    def _fail(self, exc: Exception) -> None:
        self._state = _DONE
        waiter, self._waiter = self._waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


def parse_head(head: bytes) -> tuple[int, bool, list[tuple[str, str]]]:
    """An answer's head: its status, whether HTTP/1.1 keeps the connection, its fields."""
    text = head.replace(b"\r\n", b"\n")
    if b"\r" in text or b"\x00" in text:
        raise BadAnswer("a bare CR or a NUL in the answer's head")
    lines = text.split(b"\n")
    first = lines[0]
    if (
        len(first) < 12
        or not first.startswith(b"HTTP/1.")
        or first[7:8] not in (b"0", b"1")
        or first[8:9] != b" "
        or not first[9:12].isdigit()
        or (len(first) > 12 and first[12:13] != b" ")
    ):
        raise BadAnswer(f"not an HTTP/1.x status line: {first[:40]!r}")
    status = int(first[9:12])
    if status < 100:
        raise BadAnswer(f"invalid status {status}")
    fields: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name[-1:] in (b" ", b"\t") or line[:1] in (b" ", b"\t"):
            raise BadAnswer(f"invalid header line {line[:40]!r}")
        fields.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return status, first[7:8] == b"1", fields


def _keep_alive_timeout(headers: CIMultiDictProxy[str]) -> float | None:
    """The ``timeout=N`` of a ``Keep-Alive`` field (RFC 2068's, still sent), if any."""
    for token in _tokens(headers, "Keep-Alive"):
        name, _, value = token.partition("=")
        if name.strip() == "timeout" and value.strip().isascii() and value.strip().isdigit():
            return float(value.strip()[:9])
    return None


def _tokens(headers: CIMultiDictProxy[str], name: str) -> list[str]:
    """A list-valued field's tokens, lowercased (``Connection: keep-alive, Close``)."""
    return [
        token.strip().lower()
        for value in headers.getall(name, [])
        for token in value.split(",")
        if token.strip()
    ]
