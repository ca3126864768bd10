"""The blocking transport: the same HTTP/1.1 connections, driven by the calling thread.

``Client`` (the sync client) makes its plain calls here, in the thread that calls, with no
event loop and no hand-off between threads: the request is written with ``sendall`` and the
answer read with ``recv`` into the very parser the event loop's connections use
(``_http11.Connection``, given a socket in place of an asyncio transport). ``post`` is a
coroutine only in form: it never suspends, so the ``AsyncClient`` coroutine above it runs
to its end at its first ``send`` (``_sync.py``: retries, decoding and errors are the async
client's own code, not a copy).

Why (bench 11, one process, the fast local server): driving the shared event loop cost a
sync call 1.26x AsyncClient's time, and 8 threads made 0.50x of 8 tasks' calls/s, the
threads taking turns at one loop; here each thread does its own I/O and the GIL is free
while it waits.

The pool is the event loop's in miniature: idle connections kept per URL (LIFO), each
polled before reuse (a server's close seen then leaves the request certainly unsent), one
request at a time on a connection, ``Limits.max_connections`` calls at once (the rest
wait for a slot). The clocks are ``Timeout``'s: connect; read from the attempt's start
to the head, then between pieces; total; and a call's own ``timeout=`` (``within``).
What each failure means is ``_wire``'s, the same as the event loop's transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import struct
import threading
import time
from typing import Any, Final

from .._errors import ClientStateError, ConnectTimeout
from ._base import (
    CLOSED_BEFORE_SENT,
    MAX_ERROR_BODY,
    RawResponse,
    TransportConfig,
    call_timed_out,
    timed_out,
)
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

__all__ = ["BLOCKED_AFTER", "PROBE_AFTER", "SimulatorBlocked", "SyncTransport"]

PROBE_AFTER: Final = 1.0
"""Seconds an answer from an in-process simulator is awaited before its loop is probed."""
BLOCKED_AFTER: Final = 2.0
"""Seconds without the probe's answer after which the simulator's loop is blocked."""
_LINGER_NOW: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with a reset

_Target = Target[Connection]


class SimulatorBlocked(Exception):
    """The in-process simulator's event loop did not run for ``BLOCKED_AFTER`` seconds."""


class _Expired(Exception):
    """One of the attempt's clocks ran out: ``kind`` is "connect", "read", "total" or
    "call" (the call's own ``timeout=``)."""

    def __init__(self, kind: str, *, sent: bool = True) -> None:
        super().__init__(kind)
        self.kind = kind
        self.sent = sent
        """False when it ran out before the request was written: nothing was sent."""


class _Held:
    """The parser's waiter when nothing awaits: the answer, or why none came."""

    __slots__ = ("answer", "error")

    def __init__(self) -> None:
        self.answer: Answer | None = None
        self.error: BaseException | None = None

    def done(self) -> bool:
        return self.answer is not None or self.error is not None

    def set_result(self, result: Answer, /) -> None:
        self.answer = result

    def set_exception(self, exception: BaseException, /) -> None:
        self.error = exception


class _Socket(asyncio.Transport):
    """A connected socket as the parser's transport: a write goes out at once, blocking."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sock.sendall(data)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True
        self.sock.close()

    def abort(self) -> None:
        """Close with a reset: a request abandoned half-way leaves nothing to end well."""
        self._closing = True
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_NOW)
        self.sock.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default


class _Slots:
    """``Limits.max_connections`` calls at once: a count under a lock, a condition only for
    the calls that find none free (``threading.BoundedSemaphore`` runs its Condition's
    Python code on every acquire and release: about 3 us a call)."""

    __slots__ = ("_cond", "_free", "_waiting")

    def __init__(self, size: int) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._free = size
        self._waiting = 0

    def acquire(self, timeout: float | None = None) -> bool:
        """A slot, or False once ``timeout`` seconds passed without one."""
        with self._cond:
            if self._free:
                self._free -= 1
                return True
            ends = None if timeout is None else time.monotonic() + timeout
            self._waiting += 1
            try:
                while not self._free:
                    left = None if ends is None else ends - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(left)
            finally:
                self._waiting -= 1
            self._free -= 1
            return True

    def release(self) -> None:
        with self._cond:
            self._free += 1
            if self._waiting:
                self._cond.notify()


class _Clock:
    """An attempt's deadlines on the monotonic clock: the read deadline moves with each
    piece of the answer; ``total`` and the call's own stay."""

    __slots__ = ("_read", "fixed", "fixed_kind", "read_at")

    def __init__(
        self, timeout_read: float | None, total: float | None, call_at: float | None
    ) -> None:
        now = time.monotonic()
        self._read = timeout_read
        self.fixed: float | None
        self.fixed_kind: str
        self.read_at = None if timeout_read is None else now + timeout_read
        total_at = None if total is None else now + total
        if call_at is not None and (total_at is None or call_at <= total_at):
            self.fixed, self.fixed_kind = call_at, "call"
        else:
            self.fixed, self.fixed_kind = total_at, "total"

    def progress(self) -> None:
        if self._read is not None:
            self.read_at = time.monotonic() + self._read

    def left(self) -> float | None:
        """Seconds until the nearest deadline (None: none), or _Expired if one passed."""
        read_at, fixed = self.read_at, self.fixed
        if read_at is None and fixed is None:
            return None
        now = time.monotonic()
        if fixed is not None and (read_at is None or fixed <= read_at):
            if fixed <= now:
                raise _Expired(self.fixed_kind)
            return fixed - now
        assert read_at is not None
        if read_at <= now:
            raise _Expired("read")
        return read_at - now


class SyncTransport:
    """The client's own connections, used from the calling threads; see the module's
    docstring. Safe to share between threads; ``post`` never suspends."""

    def __init__(self, config: TransportConfig) -> None:
        self._config = config
        self._fields = header_fields({**config.headers, **config.request_headers})
        self._targets: dict[str, _Target] = {}
        self._lock = threading.Lock()
        self._in_use: set[Connection] = set()
        limits = config.limits
        per_host = limits.max_connections_per_host
        size = min(limits.max_connections, per_host) if per_host else limits.max_connections
        self._slots = _Slots(size)
        self._keepalive = limits.keepalive_timeout
        self._cap = config.max_response_bytes
        self._error_cap = min(self._cap, MAX_ERROR_BODY)
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def post(
        self,
        url: str,
        body: bytes,
        *,
        within: float | None = None,
        serving: asyncio.AbstractEventLoop | None = None,
    ) -> RawResponse:
        """POST ``body`` once, blocking (a coroutine that never suspends).

        ``within``: the call's own timeout, from now (a slot or a connection not had by
        then is a ConnectTimeout: nothing was sent). ``serving``: the loop of an in-process
        simulator answering this URL, watched while its answer is awaited.
        """
        target = self._targets.get(url) or self._target(url)
        call_at = None if within is None else time.monotonic() + within
        self._take_slot(target, call_at)
        try:
            if self._closed:  # closed while this call waited for its slot
                raise ClientStateError(CLOSED_BEFORE_SENT)
            started = time.perf_counter()
            timeout = self._config.timeout
            clock = _Clock(timeout.read, timeout.total, call_at)
            answer = self._attempt(target, body, clock, within, serving)
        finally:
            self._slots.release()
        status, payload = answer.status, answer.body
        encoding = answer.headers.get("Content-Encoding")
        if encoding is not None:
            payload = decoded(target, status, encoding, payload, self._cap, self._error_cap)
        return RawResponse(status, answer.headers, payload, time.perf_counter() - started)

    def _attempt(
        self,
        target: _Target,
        body: bytes,
        clock: _Clock,
        within: float | None,
        serving: asyncio.AbstractEventLoop | None,
    ) -> Answer:
        connection = self._idle(target) or self._connect(target, clock)
        answer: Answer | None = None
        unused = False
        try:
            answer = _exchange(connection, target, body, self._cap, self._error_cap, clock, serving)
        except _Expired as expired:
            if not expired.sent:  # the time ran out before the request was written
                unused = True
                raise ConnectTimeout(
                    f"no time left to send to {target.name} within the timeout; nothing was sent"
                ) from None
            if expired.kind == "call":
                assert within is not None
                raise call_timed_out(target.name, within) from None
            raise timed_out(target.name, self._config.timeout, expired.kind == "total") from None
        except (NotSent, BadAnswer, LostConnection, OSError) as exc:
            raise exchange_failed(target, exc) from None
        finally:
            self._release(target, connection, done=answer is not None or unused)
        return answer

    def _take_slot(self, target: _Target, call_at: float | None) -> None:
        if call_at is None:
            self._slots.acquire()
        elif not self._slots.acquire(max(0.0, call_at - time.monotonic())):
            raise ConnectTimeout(
                f"no connection to {target.name} free within the call's timeout; nothing was sent"
            )

    # --- the pool -------------------------------------------------------------------------

    def _target(self, url: str) -> _Target:
        """``url``'s target, the same one for every thread (its idle list is the pool)."""
        parsed: _Target = parse_target(url, self._fields)
        with self._lock:
            return self._targets.setdefault(url, parsed)

    def _idle(self, target: _Target) -> Connection | None:
        """The connection used last that is still fit for a request, if any."""
        idle = target.idle
        while True:
            with self._lock:
                if not idle:
                    return None
                connection = idle.pop()
                self._in_use.add(connection)
            if connection.fresh(time.monotonic(), self._keepalive) and _fit(connection):
                return connection
            self._drop(connection)

    def _connect(self, target: _Target, clock: _Clock) -> Connection:
        """A new connection, or the reason none was made: nothing was sent."""
        limit = self._config.timeout.connect
        try:
            left = clock.left()
        except _Expired:
            left = 0.0
        own = limit is not None and (left is None or limit <= left)  # the connect timeout's
        budget = limit if own else left
        try:
            sock = self._open(target, budget)
        except TimeoutError:
            if own:
                raise ConnectTimeout(f"connecting to {target.name} timed out") from None
            raise ConnectTimeout(
                f"connecting to {target.name} took the whole timeout; nothing was sent"
            ) from None
        except (OSError, UnicodeError) as exc:  # ssl.SSLError and socket.gaierror are OSErrors
            raise connect_failed(target, exc) from None
        connection = Connection()
        connection.sock = sock
        connection.connection_made(_Socket(sock))
        with self._lock:
            if self._closed:  # closed while this call connected
                sock.close()
                raise ClientStateError(CLOSED_BEFORE_SENT)
            self._in_use.add(connection)
        return connection

    def _open(self, target: _Target, budget: float | None) -> socket.socket:
        """Resolve, connect to each address in turn within ``budget``, then TLS."""
        if budget is not None and budget <= 0:
            raise TimeoutError
        ends = None if budget is None else time.monotonic() + budget
        infos = _resolve(target.host, target.port, budget)
        errors: list[OSError] = []
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(None if ends is None else max(1e-3, ends - time.monotonic()))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.connect(address)
                if target.tls:
                    if ends is not None:
                        sock.settimeout(max(1e-3, ends - time.monotonic()))
                    sock = (self._ssl or self._tls()).wrap_socket(sock, server_hostname=target.host)
                return sock
            except (TimeoutError, ssl.SSLError):  # the time is spent; TLS said no: no other
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                errors.append(exc)
            except BaseException:
                sock.close()
                raise
        if not errors:
            raise OSError(f"no address for {target.host!r}")
        raise (
            errors[0]
            if len(errors) == 1
            else OSError(f"every address failed: {'; '.join(str(error) for error in errors)}")
        )

    def _tls(self) -> ssl.SSLContext:
        self._ssl = ssl_context(self._config.verify)
        return self._ssl

    def _release(self, target: _Target, connection: Connection, *, done: bool) -> None:
        """Back to the idle pool after a whole answer that leaves it reusable; else closed
        (a request abandoned half-way leaves the connection's state unknown)."""
        stale: list[Connection] = []
        with self._lock:
            self._in_use.discard(connection)
            kept = done and connection.reusable and not self._closed
            if kept:
                now = connection.idle_since = time.monotonic()
                idle = target.idle
                idle.append(connection)
                # No timer thread: the connections idle longest (the list's start) past
                # their time are closed as others come back.
                while idle and not idle[0].fresh(now, self._keepalive):
                    stale.append(idle.pop(0))
        if not kept:
            connection.close(at_once=not done)
        for old in stale:
            old.close()

    def _drop(self, connection: Connection) -> None:
        with self._lock:
            self._in_use.discard(connection)
        connection.close()

    async def aclose(self) -> None:
        """``close``, as a coroutine that never suspends."""
        self.close()

    def close(self) -> None:
        """Close the pool: idle connections now; the calls in flight end as their
        connection is shut (ConnectionLostError: they were sent), and calls waiting for a
        slot send nothing (ClientStateError). Idempotent; holds its lock briefly, and
        none while a socket is closed. (A collected client's finalizer calls it too: nothing
        can hold the lock then, as no thread can still use an unreachable client.)"""
        with self._lock:
            self._closed = True
            idle = [c for target in self._targets.values() for c in target.idle]
            for target in self._targets.values():
                target.idle.clear()
            busy = list(self._in_use)
        for connection in idle:
            connection.close()
        for connection in busy:
            if connection.sock is not None:  # wakes the thread blocked reading it
                with contextlib.suppress(OSError):
                    connection.sock.shutdown(socket.SHUT_RDWR)


_Address = tuple[Any, ...]  # getaddrinfo's (family, type, proto, canonname, sockaddr)


def _resolve(host: str, port: int, budget: float | None) -> list[_Address]:
    """``host``'s addresses, within ``budget`` seconds: ``getaddrinfo`` has no timeout of its
    own, so a name is resolved in a daemon thread of its own (one a new connection, never
    joined: exit does not wait for a resolver that hangs) while the call waits at most
    ``budget``; then TimeoutError (nothing was sent). The event loop's transport bounds its
    resolution the same way (its executor, within the connect timeout). An address given
    as such needs no resolver: resolved here, at once."""
    if budget is None or _is_address(host):
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    done = threading.Event()
    box: list[list[_Address] | BaseException] = []

    def resolve() -> None:
        try:
            box.append(
                socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
            )
        except BaseException as exc:  # handed to the caller, raised there
            box.append(exc)
        finally:
            done.set()

    threading.Thread(target=resolve, name="proactive-async-resolve", daemon=True).start()
    if not done.wait(budget):
        raise TimeoutError(f"resolving {host!r} took the whole connect timeout")
    found = box[0]
    if isinstance(found, BaseException):
        raise found
    return found


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _fit(connection: Connection) -> bool:
    """``Connection.fit``, and no decrypted bytes waiting inside the TLS layer."""
    sock = connection.sock
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False
    return connection.fit()


def _exchange(
    connection: Connection,
    target: _Target,
    body: bytes,
    cap: int,
    error_cap: int,
    clock: _Clock,
    serving: asyncio.AbstractEventLoop | None,
) -> Answer:
    """Write the request of ``body`` and read its answer into the parser, within the
    clock. The request is built in the call that writes it: no local holds the token."""
    sock = connection.sock
    assert sock is not None
    held = _Held()
    try:
        sock.settimeout(clock.left())
    except _Expired as expired:
        raise _Expired(expired.kind, sent=False) from None
    try:
        connection.begin(target.request(body), cap, error_cap, held)
    except TimeoutError:  # part of the request may be out: ambiguous, as a read timeout
        raise _Expired(clock.fixed_kind if clock.fixed is not None else "read") from None
    buffer = connection.get_buffer(-1)  # read into, as the loop does: nothing allocated
    while not held.done():
        wait = clock.left()
        if serving is not None:
            wait = PROBE_AFTER if wait is None else min(wait, PROBE_AFTER)
        sock.settimeout(wait)
        try:
            size = sock.recv_into(buffer)
        except TimeoutError:
            if serving is not None:
                _probe(serving)
            continue  # the clock tells which deadline passed, if one did
        except OSError as exc:
            connection.connection_lost(exc)
            break
        if size:
            clock.progress()
            connection.buffer_updated(size)
        else:
            connection.eof_received()
            connection.connection_lost(None)
    if held.error is not None:
        raise held.error
    assert held.answer is not None
    return held.answer


def _probe(serving: asyncio.AbstractEventLoop) -> None:
    """SimulatorBlocked if ``serving`` (another thread's loop) does not run a callback
    within ``BLOCKED_AFTER`` seconds; a closed loop fails the call on its own."""
    pong = threading.Event()
    try:
        serving.call_soon_threadsafe(pong.set)
    except RuntimeError:
        return
    if not pong.wait(BLOCKED_AFTER):
        raise SimulatorBlocked
