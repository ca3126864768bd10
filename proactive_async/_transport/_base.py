"""What the client's own transports share: settings, the raw answer, the pool's loop binding,
connection slots and timeouts (see the package's docstring)."""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

from .._config import Limits, Timeout
from .._deadlines import Deadlines, Watch
from .._errors import (
    ClientStateError,
    ConnectError,
    ConnectTimeout,
    NameResolutionError,
    ReadTimeout,
    TLSError,
)

__all__ = [
    "CLOSED_BEFORE_SENT",
    "DEADLINE_GRACE",
    "MAX_ERROR_BODY",
    "RawResponse",
    "Transport",
    "TransportConfig",
    "call_timed_out",
    "origin",
    "split_headers",
    "timed_out",
    "tls_failed",
    "tls_verify",
    "unresolved",
    "user_agent",
]

MAX_ERROR_BODY = 64 * 1024
"""Bytes of an error answer's body kept (``exc.body``): the status is what matters."""

CLOSED_BEFORE_SENT = "the client was closed before this call was sent; nothing was sent"
"""A call that waited for a connection slot, or connected, while the client closed."""

DEADLINE_GRACE = 0.05
"""Seconds after a call's deadline at which its caller cuts the whole POST: the slot's and
the connection's own cut at the deadline itself come first (a ConnectTimeout: nothing was
sent), whichever timer the loop runs first when both are due."""


def user_agent(version: str) -> str:
    """``proactive-async/<v> Python/<v>``: the SDK writes its own requests (aiohttp, which
    only carries them through a proxy, is not imported before one is used)."""
    return f"proactive-async/{version} Python/{platform.python_version()}"


def split_headers(
    defaults: Mapping[str, str], given: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """The SDK's default headers the caller did not give, and the caller's own (never an
    ``Authorization``: that is the token's). Names are case-insensitive: a caller's
    ``user-agent`` replaces ``User-Agent``, and no header goes out twice."""
    names = {name.lower() for name in given}
    kept = {name: value for name, value in defaults.items() if name.lower() not in names}
    own = {name: value for name, value in given.items() if name.lower() != "authorization"}
    return kept, own


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Pool, timeout and TLS settings of one client's connection pool."""

    limits: Limits = field(default_factory=Limits)
    timeout: Timeout = field(default_factory=Timeout)
    verify: bool | ssl.SSLContext = True
    proxy: str | None = field(default=None, repr=False)  # may hold the proxy's credentials
    max_response_bytes: int = 32 * 1024 * 1024
    headers: Mapping[str, str] = field(default_factory=dict)
    """Headers that may go to a proxy too (aiohttp sends a session's defaults there)."""
    request_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    """The Bearer token and the caller's headers, for the API's origin only."""


@dataclass(slots=True)  # not frozen: one is built per call, and frozen __init__ costs more
class RawResponse:
    """What came back for one attempt, before decoding."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    elapsed: float


class Transport:
    """A client's own connection pool, bound to the event loop it is first used in.

    Subclasses make the POST (``post``) and open and close what they hold (``_open``,
    ``_close``); the loop's binding, the connection slots, the shared timeouts and the
    messages of a timeout live here, once.
    """

    def __init__(self, config: TransportConfig) -> None:
        self._config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._deadlines: Deadlines | None = None
        self._slots = asyncio.Semaphore()  # replaced with the pool's size once bound

    @property
    def closed(self) -> bool:
        return self._closed

    async def post(self, url: str, body: bytes, *, deadline: float | None = None) -> RawResponse:
        """POST ``body`` once; redirects are never followed. Raises our TransportErrors.

        ``deadline`` (the loop's clock), a call's own timeout: passed while waiting for a
        connection slot or making the connection, it is a ConnectTimeout (nothing was sent).
        What comes after is the caller's to cut (``asyncio.timeout_at`` a little later, see
        ``DEADLINE_GRACE``): then the request may have been sent.
        """
        raise NotImplementedError

    def _bind(self) -> asyncio.AbstractEventLoop:
        """The running loop, bound on first use (slots, timeouts, ``_open``); or why not."""
        loop = asyncio.get_running_loop()
        if self._closed:
            raise ClientStateError("the client is closed; create a new AsyncClient")
        if self._loop is not None:
            if loop is not self._loop:
                raise ClientStateError(
                    "this AsyncClient is bound to the event loop it was first used in; "
                    "create one client per event loop (for example one per asyncio.run())"
                )
            return loop
        limits, timeout = self._config.limits, self._config.timeout
        # Read and total are kept by one timer for all calls (``_deadlines``).
        self._deadlines = (
            None
            if timeout.read is None and timeout.total is None
            else Deadlines(loop, timeout.read, timeout.total)
        )
        # A call's clocks start once it has its connection slot: the wait for one (more
        # calls than connections) is not the server's delay, and nothing was sent in it.
        per_host = limits.max_connections_per_host
        self._slots = asyncio.Semaphore(
            min(limits.max_connections, per_host) if per_host else limits.max_connections
        )
        self._open(loop)
        self._loop = loop
        return loop

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make what the pool holds, inside its loop."""

    async def _close(self) -> None:
        """Close what the pool holds."""

    async def _slot_by(self, slots: asyncio.Semaphore, deadline: float, url: str) -> None:
        """A connection slot before ``deadline``, or ConnectTimeout: nothing was sent."""
        if not slots.locked():
            await slots.acquire()
            return
        try:
            async with asyncio.timeout_at(deadline):
                await slots.acquire()
        except TimeoutError:
            raise ConnectTimeout(
                f"no connection to {origin(url)} free within the call's timeout; nothing was sent"
            ) from None

    def _timed_out(self, url: str, watch: Watch) -> ReadTimeout:
        return timed_out(origin(url), self._config.timeout, watch.expired == "total")

    async def aclose(self) -> None:
        """Close the pool; idempotent, and completes even if the caller is cancelled."""
        self._closed = True
        if self._deadlines is not None:
            self._deadlines.close()
        close = asyncio.ensure_future(self._close())
        try:
            await asyncio.shield(close)
        except asyncio.CancelledError:
            await asyncio.wait([close])
            raise


def timed_out(where: str, timeout: Timeout, total: bool) -> ReadTimeout:
    """A read (``total`` False) or total timeout after the request went out to ``where``."""
    if total:
        what = f"no complete answer from {where} in {timeout.total:g} s"
    else:
        what = f"nothing from {where} for {timeout.read:g} s"
    return ReadTimeout(f"{what} (timeout); the request may have been processed")


def call_timed_out(where: str, within: float) -> ReadTimeout:
    """A call's own timeout (``timeout=``) passed after its request may have gone out."""
    return ReadTimeout(
        f"no complete answer from {where} in {within:g} s (the call's timeout);"
        " the request may have been processed"
    )


def unresolved(host: str, error: OSError) -> ConnectError:
    """A name the resolver says does not exist (NameResolutionError: check the base URL); a
    resolver that cannot be reached now (``EAI_AGAIN``) is a ConnectError: it may pass, like
    a refused connection. Either way nothing was sent."""
    if error.errno == socket.EAI_AGAIN:
        return ConnectError(f"could not resolve {host!r} now ({error.strerror}); nothing was sent")
    return NameResolutionError(
        f"the host name {host!r} does not resolve ({error.strerror or 'no address'});"
        " check the base URL"
    )


def tls_failed(where: str, cause: object) -> TLSError:
    """The TLS handshake with ``where`` failed; the reason a certificate check gives, if any."""
    reason = getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or cause
    return TLSError(f"TLS with {where} failed: {reason}")


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` for messages: never a user or password in it."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0].rpartition('@')[2]}"


def tls_verify(verify: bool | str | os.PathLike[str] | ssl.SSLContext) -> bool | ssl.SSLContext:
    """A CA bundle's path becomes a verifying context that trusts it (and nothing weaker)."""
    if isinstance(verify, bool | ssl.SSLContext):
        return verify
    try:
        return ssl.create_default_context(cafile=os.fspath(verify))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        path = os.fspath(verify)
        raise ClientStateError(f"cannot use {path!r} as a CA bundle: {reason}") from None
