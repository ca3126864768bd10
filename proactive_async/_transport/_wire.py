"""What both of the SDK's own HTTP/1.1 transports write and read the same way.

``DirectTransport`` (``_direct.py``, the event loop's) and ``SyncTransport``
(``_blocking.py``, a calling thread's) differ only in how bytes move. Here, once: a URL's
target and the fixed part of its requests' head, the header fields every request carries,
the decoding of a ``Content-Encoding`` within the caps, and what each failure means (the
errors' kinds and messages).
"""

from __future__ import annotations

import socket
import ssl
import zlib
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import yarl

from .._errors import (
    ClientStateError,
    ConnectError,
    ConnectionLostError,
    ProactiveError,
    ResponseTooLargeError,
)
from ._base import origin, tls_failed, unresolved
from ._http11 import BadAnswer, NotSent

__all__ = [
    "Target",
    "connect_failed",
    "decoded",
    "exchange_failed",
    "header_fields",
    "parse_target",
    "ssl_context",
]

C = TypeVar("C")

_ACCEPT_ENCODING = "gzip, deflate"
_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection"})


@dataclass(slots=True, eq=False)
class Target(Generic[C]):
    """One URL's origin, the fixed part of every request's head to it, and its idle
    connections (the one used last at the end)."""

    host: str
    port: int
    tls: bool
    prefix: bytes = field(repr=False)  # holds the token
    name: str
    idle: list[C] = field(default_factory=list)

    def request(self, body: bytes) -> bytes:
        """The whole request for ``body``. Built in the call: no caller's local holds it."""
        return b"%b%d\r\n\r\n%b" % (self.prefix, len(body), body)


def parse_target(url: str, fields: bytes) -> Target[C]:
    """Parse ``url`` once: where to connect, and its requests' fixed head (``fields``: the
    header fields of ``header_fields``)."""
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
    return Target(
        host=host,
        port=parsed.port,
        tls=parsed.scheme == "https",
        prefix=head.encode("ascii") + fields + b"Content-Length: ",
        name=origin(url),
    )


def header_fields(headers: dict[str, str]) -> bytes:
    """The header fields every request carries, in wire form (UTF-8, as aiohttp writes
    them): ``Accept-Encoding`` added unless given; the framing's own fields (``Host``,
    ``Content-Length``, ...) are the transport's to write, never a second time."""
    if not any(name.lower() == "accept-encoding" for name in headers):
        headers = {**headers, "Accept-Encoding": _ACCEPT_ENCODING}
    return "".join(
        f"{name}: {value}\r\n" for name, value in headers.items() if name.lower() not in _FRAMING
    ).encode("utf-8")


def connect_failed(where: Target[C], exc: OSError | UnicodeError) -> ProactiveError:
    """What a failure to connect (resolve, connect, TLS) is: nothing was sent."""
    if isinstance(exc, ssl.SSLError):
        return tls_failed(where.name, exc)
    if isinstance(exc, socket.gaierror):
        return unresolved(where.host, exc)
    if isinstance(exc, UnicodeError):
        return ClientStateError(f"invalid host name {where.host!r}: {exc}")
    return ConnectError(f"could not connect to {where.name}: {exc}")


def ssl_context(verify: bool | ssl.SSLContext) -> ssl.SSLContext:
    """The TLS context of ``TransportConfig.verify``: the caller's, the default one, or one
    that checks nothing (``verify=False``)."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def exchange_failed(where: Target[C], exc: Exception) -> ProactiveError:
    """What a failure once connected is: only a request never written was certainly not
    sent; after that, the request may have been processed."""
    if isinstance(exc, NotSent):
        return ConnectError(f"{exc} to {where.name}; nothing was sent")
    if isinstance(exc, BadAnswer):
        return ConnectionLostError(
            f"bad answer from {where.name} ({exc}); the request may have been processed"
        )
    return ConnectionLostError(
        f"connection to {where.name} lost ({exc}); the request may have been processed"
    )


def decoded(
    where: Target[C], status: int, encoding: str, body: bytes, cap: int, error_cap: int
) -> bytes:
    """The body decoded from its ``Content-Encoding``, within the caps (``cap`` for a 2xx
    answer, ``error_cap`` else). An error answer that cannot be decoded keeps its bytes:
    its status is what matters."""
    coding = encoding.strip().lower()
    if coding in ("", "identity"):
        return body
    ok = 200 <= status < 300
    limit = cap if ok else error_cap
    try:
        if coding in ("gzip", "x-gzip"):
            plain = _inflate(body, 16 + zlib.MAX_WBITS, limit)
        elif coding == "deflate":
            try:
                plain = _inflate(body, zlib.MAX_WBITS, limit)
            except zlib.error:  # a raw deflate stream, as some servers send
                plain = _inflate(body, -zlib.MAX_WBITS, limit)
        else:
            raise BadAnswer(f"Content-Encoding {encoding!r}, which was not asked for")
    except (zlib.error, BadAnswer) as exc:
        if not ok:
            return body[:limit]
        raise ConnectionLostError(
            f"bad answer from {where.name} (undecodable body: {exc}); the request may"
            " have been processed"
        ) from None
    if len(plain) > limit:
        if ok:
            raise ResponseTooLargeError(
                f"response passes max_response_bytes={limit} once decoded", status=status
            )
        return plain[:limit]
    return plain


def _inflate(body: bytes, wbits: int, cap: int) -> bytes:
    """``body`` decompressed, at most ``cap + 1`` bytes of it (one more tells it is over)."""
    inflater = zlib.decompressobj(wbits)
    plain = inflater.decompress(body, cap + 1)
    if len(plain) <= cap and not inflater.eof and not inflater.unconsumed_tail:
        plain += inflater.flush()
    return plain
