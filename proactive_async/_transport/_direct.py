"""The default transport: the client's own HTTP/1.1 connections to the API's origin.

A pool of ``_http11.Connection``\\s, one request at a time on each, kept alive between calls
(LIFO: the connection used last is the one least likely to have been closed by the server)
and closed after ``Limits.keepalive_timeout`` seconds idle. What each failure means:

- before any byte was written (the connection slot, name resolution, connecting, TLS): the
  request was certainly not processed: ``ConnectTimeout``, ``ConnectError``,
  ``NameResolutionError``, ``TLSError``;
- after: ``ConnectionLostError`` (closed or reset, or an answer that is not HTTP) and
  ``ReadTimeout``: the request may have been processed. A kept-alive connection that the
  server closed just as the request went out is one of these too: the endpoint has no
  idempotency key, so nothing tells it apart from a crash after processing.

Each request is one write: the head's fixed part (request line, ``Host``, the session's
headers, the token) is built once per URL, and the body's length and the body are joined to
it. Bodies come back decoded from ``gzip`` or ``deflate`` (the only codings asked for),
within ``max_response_bytes`` once decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
import zlib
from dataclasses import dataclass, field

import aiohappyeyeballs
import yarl

from .._errors import (
    ClientStateError,
    ConnectError,
    ConnectionLostError,
    ConnectTimeout,
    ProactiveError,
    ResponseTooLargeError,
)
from ._base import (
    CLOSED_BEFORE_SENT,
    MAX_ERROR_BODY,
    RawResponse,
    Transport,
    TransportConfig,
    origin,
    tls_failed,
    unresolved,
)
from ._http11 import Answer, BadAnswer, Connection, LostConnection, NotSent

__all__ = ["DirectTransport"]

HAPPY_EYEBALLS_DELAY = 0.25
"""Seconds before the next address of a name is tried alongside (RFC 8305), as aiohttp."""

CLOSE_WAIT = 0.25
"""Seconds ``aclose`` waits for the connections to end gracefully (a TLS close_notify
answered) before it drops the rest."""

_ACCEPT_ENCODING = "gzip, deflate"
_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection"})


@dataclass(slots=True, eq=False)
class _Target:
    """One URL's origin and the fixed part of every request's head to it."""

    host: str
    port: int
    tls: bool
    prefix: bytes = field(repr=False)  # holds the token
    name: str
    idle: list[Connection] = field(default_factory=list)


class DirectTransport(Transport):
    """The client's own connections (``_http11.py``); see the module's docstring."""

    def __init__(self, config: TransportConfig) -> None:
        super().__init__(config)
        self._fields = _fields({**config.headers, **config.request_headers})
        self._targets: dict[str, _Target] = {}
        self._connections: set[Connection] = set()
        self._ssl: ssl.SSLContext | None = None
        self._pruner: asyncio.TimerHandle | None = None
        self._keepalive = config.limits.keepalive_timeout
        self._cap = config.max_response_bytes
        self._error_cap = min(self._cap, MAX_ERROR_BODY)

    async def post(self, url: str, body: bytes, *, deadline: float | None = None) -> RawResponse:
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._closed:
            self._bind()
        target = self._targets.get(url) or self._target(url)
        slots = self._slots
        if deadline is None:
            await slots.acquire()
        else:
            await self._slot_by(slots, deadline, url)
        if self._closed:  # closed while this call waited for its slot
            slots.release()
            raise ClientStateError(CLOSED_BEFORE_SENT)
        deadlines = self._deadlines
        watch = deadlines.watch() if deadlines is not None else None
        started = time.perf_counter()
        connection: Connection | None = None
        answer: Answer | None = None
        try:
            connection = self._idle(target, loop) or await self._connect(target, loop, deadline)
            if watch is not None:
                watch.stream, watch.seen = connection, connection.total_bytes
            # The request is built in the call: no frame's local holds the token.
            answer = await connection.request(
                b"%b%d\r\n\r\n%b" % (target.prefix, len(body), body), self._cap, self._error_cap
            )
        except asyncio.CancelledError:
            if watch is not None and watch.settle():
                if connection is None:  # still connecting: nothing was sent
                    raise ConnectTimeout(
                        f"connecting to {target.name} took the whole timeout; nothing was sent"
                    ) from None
                raise self._timed_out(url, watch) from None
            raise
        except ProactiveError:
            raise
        except NotSent as exc:
            raise ConnectError(f"{exc} to {target.name}; nothing was sent") from None
        except BadAnswer as exc:
            raise ConnectionLostError(
                f"bad answer from {target.name} ({exc}); the request may have been processed"
            ) from None
        except (LostConnection, OSError) as exc:
            raise ConnectionLostError(
                f"connection to {target.name} lost ({exc}); the request may have been processed"
            ) from None
        finally:
            slots.release()
            if deadlines is not None and watch is not None:
                deadlines.forget(watch)
                watch.settle()
            if connection is not None:
                self._release(target, connection, loop, done=answer is not None)
        status = answer.status
        payload = answer.body
        encoding = answer.headers.get("Content-Encoding")
        if encoding is not None:
            payload = self._decoded(target, status, encoding, payload)
        return RawResponse(status, answer.headers, payload, time.perf_counter() - started)

    # --- the pool -------------------------------------------------------------------------

    def _target(self, url: str) -> _Target:
        """Parse ``url`` once: where to connect, and its requests' fixed head."""
        try:
            parsed = yarl.URL(url)
        except (TypeError, ValueError) as exc:
            raise ClientStateError(f"invalid URL: {exc}") from None
        host = parsed.raw_host
        if parsed.scheme not in ("http", "https") or not host or parsed.port is None:
            raise ClientStateError(f"invalid URL: {origin(url)} (http or https, and a host)")
        try:
            host.encode("idna")  # what the resolver will do: a label too long or empty
        except UnicodeError as exc:
            raise ClientStateError(f"invalid host name {host!r} in {url!r}: {exc}") from None
        authority = f"[{host}]" if ":" in host else host
        if not parsed.is_default_port():
            authority = f"{authority}:{parsed.port}"
        head = f"POST {parsed.raw_path_qs or '/'} HTTP/1.1\r\nHost: {authority}\r\n"
        target = _Target(
            host=host,
            port=parsed.port,
            tls=parsed.scheme == "https",
            prefix=head.encode("ascii") + self._fields + b"Content-Length: ",
            name=origin(url),
        )
        self._targets[url] = target
        return target

    def _idle(self, target: _Target, loop: asyncio.AbstractEventLoop) -> Connection | None:
        """The connection used last that is still fit for a request, if any."""
        idle = target.idle
        while idle:
            connection = idle.pop()
            if loop.time() - connection.idle_since < self._keep_for(connection) and (
                connection.fit()
            ):
                return connection
            self._drop(connection)
        return None

    def _keep_for(self, connection: Connection) -> float:
        """Seconds ``connection`` may stay idle: ours, or less if the server said less (a
        second before its own timeout, so that a close is not met half-way)."""
        said = connection.keep_for
        return self._keepalive if said is None else min(self._keepalive, said - 1.0)

    async def _connect(
        self, target: _Target, loop: asyncio.AbstractEventLoop, deadline: float | None
    ) -> Connection:
        """A new connection, or the reason none was made: nothing was sent."""
        timeout = self._config.timeout.connect
        if deadline is not None:
            left = max(0.0, deadline - loop.time())
            timeout = left if timeout is None else min(timeout, left)
        try:
            async with asyncio.timeout(timeout):
                connection = await self._open_connection(target, loop)
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {target.name} timed out") from None
        except ssl.SSLError as exc:
            raise tls_failed(target.name, exc) from None
        except socket.gaierror as exc:
            raise unresolved(target.host, exc) from None
        except UnicodeError as exc:
            raise ClientStateError(f"invalid host name {target.host!r}: {exc}") from None
        except OSError as exc:
            raise ConnectError(f"could not connect to {target.name}: {exc}") from None
        if self._closed:  # closed while this call connected
            connection.close(at_once=True)
            raise ClientStateError(CLOSED_BEFORE_SENT)
        self._connections.add(connection)
        return connection

    async def _open_connection(
        self, target: _Target, loop: asyncio.AbstractEventLoop
    ) -> Connection:
        """Resolve, connect (RFC 8305's happy eyeballs across the addresses, on any loop:
        aiohappyeyeballs, as aiohttp, which closes a socket won by a cancelled race), then
        the TLS handshake."""
        infos = await loop.getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        sock = await aiohappyeyeballs.start_connection(
            infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, interleave=1
        )
        try:
            if target.tls:
                _, connection = await loop.create_connection(
                    Connection,
                    sock=sock,
                    ssl=self._ssl or self._ssl_context(),
                    server_hostname=target.host,
                )
            else:
                _, connection = await loop.create_connection(Connection, sock=sock)
        except BaseException:
            sock.close()
            raise
        connection.sock = sock
        return connection

    def _release(
        self,
        target: _Target,
        connection: Connection,
        loop: asyncio.AbstractEventLoop,
        *,
        done: bool,
    ) -> None:
        """Back to the idle pool after a whole answer that leaves it reusable; else closed
        (a request abandoned half-way leaves the connection's state unknown)."""
        if done and connection.reusable and not self._closed:
            connection.idle_since = loop.time()
            target.idle.append(connection)
            if self._pruner is None:
                self._pruner = loop.call_later(self._keepalive, self._prune)
            return
        if not done:
            connection.close(at_once=True)
        self._drop(connection)

    def _drop(self, connection: Connection) -> None:
        connection.close()
        self._connections.discard(connection)

    def _prune(self) -> None:
        """Close the connections idle for ``keepalive_timeout``; again later while any are."""
        self._pruner = None
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        waiting = False
        for target in self._targets.values():
            kept = [c for c in target.idle if c.open and now - c.idle_since < self._keep_for(c)]
            for connection in target.idle:
                if connection not in kept:
                    self._drop(connection)
            target.idle[:] = kept
            waiting = waiting or bool(kept)
        if waiting and not self._closed:
            self._pruner = loop.call_later(self._keepalive / 2, self._prune)

    def _ssl_context(self) -> ssl.SSLContext:
        verify = self._config.verify
        if isinstance(verify, ssl.SSLContext):
            context = verify
        elif verify:
            context = ssl.create_default_context()
        else:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._ssl = context
        return context

    def _decoded(self, target: _Target, status: int, encoding: str, body: bytes) -> bytes:
        """The body decoded from its ``Content-Encoding``, within the caps. An error answer
        that cannot be decoded keeps its bytes: its status is what matters."""
        coding = encoding.strip().lower()
        if coding in ("", "identity"):
            return body
        ok = 200 <= status < 300
        cap = self._cap if ok else self._error_cap
        try:
            if coding in ("gzip", "x-gzip"):
                decoded = _inflate(body, 16 + zlib.MAX_WBITS, cap)
            elif coding == "deflate":
                try:
                    decoded = _inflate(body, zlib.MAX_WBITS, cap)
                except zlib.error:  # a raw deflate stream, as some servers send
                    decoded = _inflate(body, -zlib.MAX_WBITS, cap)
            else:
                raise BadAnswer(f"Content-Encoding {encoding!r}, which was not asked for")
        except (zlib.error, BadAnswer) as exc:
            if not ok:
                return body[:cap]
            raise ConnectionLostError(
                f"bad answer from {target.name} (undecodable body: {exc}); the request may"
                " have been processed"
            ) from None
        if len(decoded) > cap:
            if ok:
                raise ResponseTooLargeError(
                    f"response passes max_response_bytes={cap} once decoded", status=status
                )
            return decoded[:cap]
        return decoded

    async def _close(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            self._pruner = None
        for target in self._targets.values():
            target.idle.clear()
        connections, self._connections = self._connections, set()
        if not connections:
            return
        if self._loop is not asyncio.get_running_loop() or self._loop.is_closed():
            for connection in connections:  # its loop is gone: close the sockets themselves
                with contextlib.suppress(RuntimeError):
                    connection.close(at_once=True)
                if connection.sock is not None:
                    connection.sock.close()
            return
        for connection in connections:
            connection.close()
        lost = [connection.wait_lost() for connection in connections]
        await asyncio.wait(lost, timeout=CLOSE_WAIT)
        for connection in connections:
            if not connection.wait_lost().done():
                connection.close(at_once=True)
        await asyncio.sleep(0)  # the aborted ones' connection_lost


def _inflate(body: bytes, wbits: int, cap: int) -> bytes:
    """``body`` decompressed, at most ``cap + 1`` bytes of it (one more tells it is over)."""
    inflater = zlib.decompressobj(wbits)
    decoded = inflater.decompress(body, cap + 1)
    if len(decoded) <= cap and not inflater.eof and not inflater.unconsumed_tail:
        decoded += inflater.flush()
    return decoded


def _fields(headers: dict[str, str]) -> bytes:
    """The header fields every request carries, in wire form (UTF-8, as aiohttp writes
    them): ``Accept-Encoding`` added unless given; the framing's own fields (``Host``,
    ``Content-Length``, ...) are the transport's to write, never a second time."""
    if not any(name.lower() == "accept-encoding" for name in headers):
        headers = {**headers, "Accept-Encoding": _ACCEPT_ENCODING}
    return "".join(
        f"{name}: {value}\r\n" for name, value in headers.items() if name.lower() not in _FRAMING
    ).encode("utf-8")
