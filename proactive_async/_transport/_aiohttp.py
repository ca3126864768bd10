"""The transport through a proxy: aiohttp's session, one POST, and its errors mapped to ours.

A client built with ``proxy=`` gets this one (``open_transport``); without a proxy the
direct transport (``_direct.py``) makes the POSTs.

The mapping decides what "may have been processed" means at the wire: only a connection
that was never made is certainly unprocessed; once bytes may have left, a lost connection or
a missing answer is ambiguous.

The token travels only to the API origin. aiohttp merges a session's default headers into
what it sends to a proxy (``Proxy-Authorization`` on every CONNECT), so the session's
defaults hold nothing secret: ``Authorization`` and the caller's own headers go with each
request, and proxy credentials come only from the proxy URL (``http://user:pass@proxy:3128``).
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
import time
from collections.abc import Awaitable
from typing import Any

import aiohttp

from .._errors import (
    ClientStateError,
    ConnectError,
    ConnectionLostError,
    ConnectTimeout,
    ProactiveError,
    ReadTimeout,
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

__all__ = ["AiohttpTransport"]


class AiohttpTransport(Transport):
    """Owns one aiohttp ClientSession, created lazily inside the running event loop."""

    def __init__(self, config: TransportConfig) -> None:
        super().__init__(config)
        self._session: aiohttp.ClientSession | None = None
        # Without a proxy the session's defaults go to the API only, so the request headers
        # join them there: aiohttp then merges one header set per request, not two.
        self._request_headers: dict[str, str] | None = (
            dict(config.request_headers) if config.proxy is not None else None
        )
        # The options of every POST, built once: aiohttp's defaults are not passed again.
        self._post_options: dict[str, Any] = {"allow_redirects": False}
        if config.proxy is not None:
            self._post_options.update(headers=self._request_headers, proxy=config.proxy)

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        config = self._config
        verify = config.verify
        limits, timeout = config.limits, config.timeout
        connector = aiohttp.TCPConnector(
            limit=limits.max_connections,
            limit_per_host=limits.max_connections_per_host,
            keepalive_timeout=limits.keepalive_timeout,
            ssl=verify if isinstance(verify, ssl.SSLContext) else bool(verify),
        )
        # Read and total are the shared timer's (``_deadlines``), not aiohttp's timers per
        # request; connecting stays aiohttp's (only new connections).
        client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout.connect)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=client_timeout,
            headers=(
                dict(config.headers)
                if self._request_headers is not None
                else {**config.headers, **config.request_headers}
            ),
            auto_decompress=True,
            raise_for_status=False,
            trust_env=False,
        )

    async def _close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def post(self, url: str, body: bytes, *, deadline: float | None = None) -> RawResponse:
        """POST ``body`` once; redirects are never followed. Raises our TransportErrors.

        One coroutine for the whole attempt (its connection slot, its clocks, the request
        and the mapping of aiohttp's errors): each resumption of a call goes down its chain
        of coroutines, so a layer more is paid several times per call.

        ``deadline`` (the loop's clock), a call's own timeout: passed while waiting for a
        connection slot or making the connection, it is a ConnectTimeout (nothing was sent).
        What comes after is the caller's to cut (``asyncio.timeout_at`` a little later, see
        ``DEADLINE_GRACE``): then the request may have been sent.
        """
        if self._loop is not asyncio.get_running_loop() or self._session is None:
            self._bind()
        session = self._session
        assert session is not None
        slots = self._slots
        options = self._post_options
        if deadline is None:
            await slots.acquire()  # not ``async with``: two coroutines fewer per call
        else:
            await self._slot_by(slots, deadline, url)
            options = self._options_by(deadline)
        if self._closed:  # closed while this call waited for its slot
            slots.release()
            raise ClientStateError(CLOSED_BEFORE_SENT)
        deadlines = self._deadlines
        watch = deadlines.watch() if deadlines is not None else None
        started = time.perf_counter()
        try:
            async with session.post(url, data=body, **options) as response:
                if watch is not None:
                    watch.stream = response.content
                payload = await self._read_capped(response)
                return RawResponse(
                    response.status, response.headers, payload, time.perf_counter() - started
                )
        except asyncio.CancelledError:
            if watch is not None and watch.settle():
                raise self._timed_out(url, watch) from None
            raise
        except ProactiveError:
            raise
        except (aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch) as exc:
            cause = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None)
            raise tls_failed(origin(url), cause or exc) from None
        except aiohttp.ClientHttpProxyError as exc:
            # The proxy refused the tunnel: the API never saw the request.
            raise ConnectError(
                f"the proxy refused the connection to {origin(url)}: HTTP {exc.status}"
            ) from None
        except aiohttp.ConnectionTimeoutError as exc:
            raise ConnectTimeout(f"connecting to {origin(url)} timed out") from exc
        except aiohttp.ClientConnectorError as exc:
            if _is_resolution(exc):
                raise unresolved(exc.host, exc.os_error) from exc
            raise ConnectError(f"could not connect to {origin(url)}: {exc.os_error}") from exc
        except aiohttp.InvalidURL as exc:
            raise ClientStateError(f"invalid URL: {exc}") from None
        except (TimeoutError, aiohttp.SocketTimeoutError) as exc:
            raise ReadTimeout(
                f"no complete answer from {origin(url)} in time; the request may have been"
                " processed"
            ) from exc
        except aiohttp.ClientResponseError as exc:
            # Its request_info holds our headers (the token): keep it out of the chain.
            # Raised after the except block: ``from None`` only hides the original from
            # tracebacks, and ``__context__`` would still hold it.
            lost = ConnectionLostError(
                f"bad answer from {origin(url)} ({exc.message}); the request may have been"
                " processed"
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionLostError(
                f"connection to {origin(url)} lost ({type(exc).__name__}: {exc}); the request"
                " may have been processed"
            ) from exc
        finally:
            slots.release()
            if deadlines is not None and watch is not None:
                deadlines.forget(watch)
                watch.settle()  # a cancel that aiohttp turned into something else
        raise lost

    def _options_by(self, deadline: float) -> dict[str, Any]:
        """The POST's options with aiohttp's connect timeout cut to ``deadline``: a new
        connection not made by then is a ConnectTimeout (nothing was sent). Never rounded up
        (aiohttp rounds timeouts of 5 s or more to the next second by default)."""
        left = max(0.0, deadline - asyncio.get_running_loop().time())
        connect = self._config.timeout.connect
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=left,
            sock_connect=left if connect is None else min(connect, left),
            ceil_threshold=math.inf,
        )
        return {**self._post_options, "timeout": timeout}

    def _read_capped(self, response: aiohttp.ClientResponse) -> Awaitable[bytes]:
        """The body, capped at ``max_response_bytes``. Not a coroutine: the common case hands
        back ``response.read()`` itself, one coroutine less per call."""
        cap = self._config.max_response_bytes
        if not 200 <= response.status < 300:
            return _read_head(response, min(cap, MAX_ERROR_BODY))
        length = response.content_length
        if length is not None and length > cap:
            raise ResponseTooLargeError(
                f"response of {length} bytes passes max_response_bytes={cap}",
                status=response.status,
            )
        # Content-Length counts the compressed bytes: a gzip body is streamed so that the
        # cap applies to what is decompressed into memory.
        if length is not None and not response.headers.get("Content-Encoding"):
            return response.read()
        return _read_streamed(response, cap)


async def _read_streamed(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """A body of unknown or compressed length, read in chunks up to ``cap`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > cap:
            raise ResponseTooLargeError(
                f"response passes max_response_bytes={cap}", status=response.status
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_head(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """An error answer's body cut to ``cap`` bytes: the status is what matters, never lost."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        chunks.append(chunk[: cap - size])
        size += len(chunks[-1])
        if size >= cap:
            break
    return b"".join(chunks)


def _is_resolution(exc: aiohttp.ClientConnectorError) -> bool:
    """Whether the connection failed at name resolution."""
    # ClientConnectorDNSError since aiohttp 3.10.9; before it, the resolver's gaierror.
    dns_error = getattr(aiohttp, "ClientConnectorDNSError", None)
    return isinstance(exc.os_error, socket.gaierror) or bool(
        dns_error and isinstance(exc, dns_error)
    )
