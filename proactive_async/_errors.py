"""The exception hierarchy of proactive-async.

Every error a send can raise says whether the request *may have been processed* by the
server (``may_have_been_processed``): the endpoint has no idempotency key, so that answer
decides whether resending could create a duplicate conversation.

::

    ProactiveError
    ├── TransportError                      no HTTP response was read
    │   ├── ConnectError                    connection never made (not processed)
    │   │   ├── ConnectTimeout              connection not made in time (not processed)
    │   │   └── NameResolutionError         the host name does not resolve (not processed)
    │   ├── TLSError                        TLS handshake / certificate failed (not processed)
    │   ├── ReadTimeout                     sent, no answer in time (ambiguous)
    │   └── ConnectionLostError             dropped after sending (ambiguous)
    ├── HTTPStatusError                     a non-2xx answer
    │   ├── RedirectError                   3xx: never followed for this POST (not processed)
    │   ├── BadRequestError                 400 (not processed)
    │   ├── AuthenticationError             401 (not processed)
    │   ├── PermissionDeniedError           403 (not processed)
    │   ├── NotFoundError                   404 (not processed)
    │   ├── ConflictError                   409 (not processed)
    │   ├── UnprocessableEntityError        422 (not processed)
    │   ├── RateLimitError                  429 (not processed)
    │   └── ServerError                     5xx (ambiguous)
    │       └── ServiceUnavailableError     503 (not processed)
    ├── DecodingError                       a 2xx whose body does not decode (ambiguous)
    │   └── ResponseTooLargeError           the body passed the size cap (ambiguous)
    ├── ClientStateError                    the client was misused (closed, other event loop,
    │                                       a token or header that cannot be sent)
    ├── CircuitOpenError                    a campaign stopped: no call can succeed
    ├── InputError                          a targets file cannot be read at all
    └── JournalError                        the campaign journal cannot be used
        └── JournalMismatchError            resuming with another template or input

``fatal`` marks errors that every later call would meet too (401, 403, a certificate that does
not verify, a host name that does not resolve, a client that cannot build its request): a
campaign stops at the first one. ``CircuitOpenError`` is the campaign's own: raised when its
breaker decides that no call can succeed (``RetryPolicy.stop_unreachable_after``,
``stop_ambiguous_after``, ``max_retry_after``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "CircuitOpenError",
    "ClientStateError",
    "ConflictError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLostError",
    "DecodingError",
    "HTTPStatusError",
    "InputError",
    "JournalError",
    "JournalMismatchError",
    "NameResolutionError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProactiveError",
    "ProblemDetails",
    "RateLimitError",
    "ReadTimeout",
    "RedirectError",
    "ResponseTooLargeError",
    "ServerError",
    "ServiceUnavailableError",
    "TLSError",
    "TransportError",
    "UnprocessableEntityError",
    "body_snippet",
    "problem_details",
    "status_error_class",
]


class ProactiveError(Exception):
    """Base class of every error this SDK raises.

    ``may_have_been_processed`` tells whether the server may have acted on the request;
    ``attempts`` how many attempts were made before this error was raised (0 when no
    request was involved).
    """

    may_have_been_processed: bool = False
    fatal: bool = False
    """Every later call would fail the same way: a campaign stops at once (never retried)."""

    def __init__(self, message: str, *, attempts: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.attempts = attempts

    @property
    def kind(self) -> str:
        """A stable short name of the error class, for reports."""
        return type(self).__name__

    @property
    def trace_id(self) -> str | None:
        """The server's ``traceId`` for this failure (from a ProblemDetails body), if any."""
        problem = getattr(self, "problem", None)
        return problem.trace_id if problem is not None else None


class TransportError(ProactiveError):
    """No HTTP response was read: the connection failed, timed out or was lost."""


class ConnectError(TransportError):
    """The connection could not be made; the request was certainly not sent."""


class ConnectTimeout(ConnectError):
    """No connection in time, so nothing was sent: the connect timeout passed, or a call's
    ``timeout=`` ran out while it waited for a connection of the pool or made one."""


class NameResolutionError(ConnectError):
    """The API's host name does not resolve (no such name): nothing was sent.

    Fatal for a campaign and never retried: a misspelt host stays misspelt. A resolver that
    is only unreachable for now (``EAI_AGAIN``) is a plain, retried ``ConnectError``.
    """

    fatal = True


class TLSError(TransportError):
    """The TLS handshake failed (a certificate that does not verify, a protocol mismatch).

    Nothing was sent; never retried, and fatal for a campaign. Trust a private CA with
    ``AsyncClient(verify="ca.pem")`` (or an ``ssl.SSLContext``), never by turning it off.
    """

    fatal = True


class ReadTimeout(TransportError):
    """The request was sent but no response arrived in time; it may have been processed."""

    may_have_been_processed = True


class ConnectionLostError(TransportError):
    """The connection dropped after the request was sent; it may have been processed."""

    may_have_been_processed = True


class ProblemDetails:
    """An RFC 7807 / ASP.NET Core ProblemDetails body, as far as the server sent one."""

    __slots__ = (
        "detail",
        "errors",
        "extensions",
        "instance",
        "status",
        "title",
        "trace_id",
        "type",
    )

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.type: str | None = _str_or_none(raw.get("type"))
        self.title: str | None = _str_or_none(raw.get("title"))
        self.detail: str | None = _str_or_none(raw.get("detail"))
        self.instance: str | None = _str_or_none(raw.get("instance"))
        status = raw.get("status")
        self.status: int | None = (
            status if isinstance(status, int) and not isinstance(status, bool) else None
        )
        self.trace_id: str | None = _str_or_none(raw.get("traceId"))
        # Field-level reasons: ASP.NET Core's ``errors`` map, or a list of them (a schema
        # mock such as Prism sends ``validation``).
        errors = _errors_map(raw.get("errors")) or _errors_map(raw.get("validation"))
        self.errors: dict[str, list[str]] = errors
        known = {"type", "title", "detail", "instance", "status", "traceId", "errors"}
        self.extensions: dict[str, Any] = {k: v for k, v in raw.items() if k not in known}

    def summary(self) -> str:
        """One line: title, detail and each field error."""
        parts = [p for p in (self.title, self.detail) if p]
        for field, messages in self.errors.items():
            parts.append(f"{field}: {'; '.join(messages)}" if field else "; ".join(messages))
        return " | ".join(parts)

    def __repr__(self) -> str:
        return (
            f"ProblemDetails(status={self.status!r}, title={self.title!r}, errors={self.errors!r})"
        )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _errors_map(value: object) -> dict[str, list[str]]:
    if isinstance(value, list):
        return _errors_list(value)
    if not isinstance(value, Mapping):
        return {}
    out: dict[str, list[str]] = {}
    for key, messages in value.items():
        if isinstance(messages, list):
            out[str(key)] = [str(m) for m in messages]
        else:
            out[str(key)] = [str(messages)]
    return out


def _errors_list(items: list[Any]) -> dict[str, list[str]]:
    """``["reason"]`` or ``[{"field"|"location"|...: ..., "message": ...}]``, by field
    (``""``: a reason that names no field)."""
    out: dict[str, list[str]] = {}
    for item in items:
        if isinstance(item, Mapping):
            where = next((item[k] for k in _FIELD_KEYS if item.get(k) not in (None, "")), "")
            if isinstance(where, list):  # Prism: ["body", "channelId"]
                where = ".".join(str(part) for part in where)
            text = next((item[k] for k in _MESSAGE_KEYS if item.get(k) is not None), None)
            if text is None:
                continue
            out.setdefault(str(where), []).append(str(text))
        elif isinstance(item, str | int | float) and not isinstance(item, bool):
            out.setdefault("", []).append(str(item))
    return out


_FIELD_KEYS = ("field", "propertyName", "name", "path", "location", "pointer")
_MESSAGE_KEYS = ("message", "errorMessage", "detail", "reason")


class _StatusAlias:
    """``status``: ``status_code``'s earlier name, kept (one alias for every error with one)."""

    status_code: int

    @property
    def status(self) -> int:
        """The HTTP status: ``status_code``'s earlier name, kept."""
        return self.status_code

    @status.setter
    def status(self, value: int) -> None:
        self.status_code = value


class HTTPStatusError(_StatusAlias, ProactiveError):
    """The server answered with a status that is not 2xx.

    Carries ``status_code`` (``status`` is the same number, its earlier name), ``headers``,
    the raw ``body`` (bytes, possibly truncated to the size cap) and ``problem``, the parsed
    ProblemDetails when the body is one. ``str(exc)`` ends with the server's
    ``traceId=...`` when the ProblemDetails had one (``exc.message`` stays without it).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        problem: ProblemDetails | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(message, attempts=attempts)
        self.status_code: int = status
        self.headers: Mapping[str, str] = headers if headers is not None else {}
        self.body = body
        self.problem = problem

    def __str__(self) -> str:
        return _with_trace_id(super().__str__(), self.trace_id)


class RedirectError(HTTPStatusError):
    """A 3xx answer; redirects are never followed for this POST (the token stays put).

    A 303 (See Other) says the server processed the POST: ``may_have_been_processed``.
    """

    def __init__(self, message: str, *, status: int, **kwargs: Any) -> None:
        super().__init__(message, status=status, **kwargs)
        if status == 303:
            self.may_have_been_processed = True


class BadRequestError(HTTPStatusError):
    """400: the server rejected the request body; ``problem.errors`` names the fields."""


class AuthenticationError(HTTPStatusError):
    """401: the token is missing, expired or wrong. Fatal for a campaign."""

    fatal = True


class PermissionDeniedError(HTTPStatusError):
    """403: the token may not do this. Fatal for a campaign."""

    fatal = True


class NotFoundError(HTTPStatusError):
    """404: wrong base URL or path, or a referenced entity does not exist."""


class ConflictError(HTTPStatusError):
    """409: the request conflicts with the server's state."""


class UnprocessableEntityError(HTTPStatusError):
    """422: well-formed but semantically invalid."""


class RateLimitError(HTTPStatusError):
    """429: throttled; not processed. ``retry_after`` is the server's wait in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(HTTPStatusError):
    """5xx: the server failed, possibly after processing the request (ambiguous)."""

    may_have_been_processed = True


class ServiceUnavailableError(ServerError):
    """503: the server refused the work; not processed. ``retry_after`` as for 429."""

    may_have_been_processed = False

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class DecodingError(_StatusAlias, ProactiveError):
    """A 2xx whose body is not the documented JSON: the server may have processed it."""

    may_have_been_processed = True

    def __init__(
        self, message: str, *, status: int = 200, body: bytes = b"", attempts: int = 0
    ) -> None:
        super().__init__(message, attempts=attempts)
        self.status_code: int = status
        self.body = body


class ResponseTooLargeError(DecodingError):
    """The response body passed ``max_response_bytes``; it was not read to the end."""


class ClientStateError(ProactiveError):
    """The client was used in a way it cannot serve: after ``aclose()``, from another loop, or
    with a token or header that cannot be sent. Nothing was sent; fatal for a campaign."""

    fatal = True


class CircuitOpenError(ProactiveError):
    """A campaign's breaker stopped it: its calls keep failing in a way that says none can
    succeed now. Fatal; nothing more is sent, and a resume sends what was not.

    ``reason`` is ``"unreachable"`` (every attempt failed to connect), ``"ambiguous"`` (calls
    that may have been processed kept failing) or ``"throttled"`` (429s without end);
    ``cause`` is the last failure seen.
    """

    fatal = True

    def __init__(self, message: str, *, reason: str, cause: ProactiveError) -> None:
        super().__init__(message)
        self.reason = reason
        self.cause = cause


class InputError(ProactiveError):
    """A targets file cannot be read at all (missing, empty, no target column)."""


class JournalError(ProactiveError):
    """The campaign journal cannot be opened or written."""


class JournalMismatchError(JournalError):
    """The journal belongs to another campaign (another template or input)."""


_STATUS_CLASSES: dict[int, type[HTTPStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def _with_trace_id(text: str, trace_id: str | None) -> str:
    """``text`` naming the server's trace id, so that a log line or a support ticket has it."""
    return f"{text} (traceId={trace_id})" if trace_id else text


def status_error_class(status: int) -> type[HTTPStatusError]:
    """The error class for a non-2xx status."""
    cls = _STATUS_CLASSES.get(status)
    if cls is not None:
        return cls
    if 300 <= status < 400:
        return RedirectError
    if status >= 500:
        return ServerError
    return HTTPStatusError


def problem_details(body: bytes) -> ProblemDetails | None:
    """The ProblemDetails (RFC 7807 JSON) of an error answer's body; None when it is not one."""
    if not body:
        return None
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    if isinstance(data, dict) and ({"title", "errors", "detail", "type"} & data.keys()):
        return ProblemDetails(data)
    return None


def body_snippet(body: bytes, limit: int = 300) -> str:
    """The start of an answer's body as one line of text, for an error message."""
    text = body[:limit].decode("utf-8", "replace").strip()
    return " ".join(text.split())
