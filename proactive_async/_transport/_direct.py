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

import aiohappyeyeballs

from .._errors import ClientStateError, ConnectTimeout, ProactiveError
from ._base import CLOSED_BEFORE_SENT, MAX_ERROR_BODY, RawResponse, Transport, TransportConfig
from ._http11 import Answer, BadAnswer, Connection, LostConnection, NotSent
from ._wire import (
    Target,
    connect_failed,
    decoded,
    exchange_failed,
    header_fields,
    parse_target,
    ssl_context,
)

__all__ = ["DirectTransport"]

HAPPY_EYEBALLS_DELAY = 0.25
"""Seconds before the next address of a name is tried alongside (RFC 8305), as aiohttp."""

CLOSE_WAIT = 0.25
"""Seconds ``aclose`` waits for the connections to end gracefully (a TLS close_notify
answered) before it drops the rest."""

_Target = Target[Connection]


class DirectTransport(Transport):
    """The client's own connections (``_http11.py``); see the module's docstring."""

    def __init__(self, config: TransportConfig) -> None:
        super().__init__(config)
        self._fields = header_fields({**config.headers, **config.request_headers})
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
            answer = await connection.request(target.request(body), self._cap, self._error_cap)
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
        except (NotSent, BadAnswer, LostConnection, OSError) as exc:
            raise exchange_failed(target, exc) from None
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
            payload = decoded(target, status, encoding, payload, self._cap, self._error_cap)
        return RawResponse(status, answer.headers, payload, time.perf_counter() - started)

    # --- the pool -------------------------------------------------------------------------

    def _target(self, url: str) -> _Target:
        """Parse ``url`` once: where to connect, and its requests' fixed head."""
        found: _Target = parse_target(url, self._fields)
        self._targets[url] = found
        return found

    def _idle(self, target: _Target, loop: asyncio.AbstractEventLoop) -> Connection | None:
        """The connection used last that is still fit for a request, if any."""
        idle = target.idle
        while idle:
            connection = idle.pop()
            if connection.fresh(loop.time(), self._keepalive) and connection.fit():
                return connection
            self._drop(connection)
        return None

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
        except (OSError, UnicodeError) as exc:  # ssl.SSLError and socket.gaierror are OSErrors
            error = connect_failed(target, exc)
            assert error is not None
            raise error from None
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
                    ssl=self._ssl or self._tls(),
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
            kept = [c for c in target.idle if c.open and c.fresh(now, self._keepalive)]
            for connection in target.idle:
                if connection not in kept:
                    self._drop(connection)
            target.idle[:] = kept
            waiting = waiting or bool(kept)
        if waiting and not self._closed:
            self._pruner = loop.call_later(self._keepalive / 2, self._prune)

    def _tls(self) -> ssl.SSLContext:
        self._ssl = ssl_context(self._config.verify)
        return self._ssl

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
