"""AsyncClient: the session's lifecycle, one call, and the retry policy applied to it."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import msgspec

from ._errors import (
    ClientStateError,
    DecodingError,
    HTTPStatusError,
    ProblemDetails,
    RateLimitError,
    ServiceUnavailableError,
    status_error_class,
)
from ._models import (
    Conversation,
    ProactiveConversationRequest,
    decode_conversations,
    encode_request,
)
from ._retry import RetryPolicy, Sleep, parse_retry_after, retry_call
from ._transport import RawResponse, Transport, TransportConfig, user_agent
from ._version import __version__

__all__ = ["ApiResponse", "AsyncClient", "mask_phone"]

PATH = "/api/Conversation/proactive-conversation"
_log = logging.getLogger("proactive_async")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ApiResponse(Generic[T]):
    """A decoded answer with what came with it: status, headers, time and attempts."""

    value: T
    status: int
    headers: Mapping[str, str]
    elapsed: float
    """Seconds the successful attempt took."""
    attempts: int
    """Attempts made, the successful one included."""


class AsyncClient:
    """An asyncio client for the Proactive Conversation API.

    Usage::

        async with AsyncClient(base_url="https://api.example.com", token=TOKEN) as client:
            conversations = await client.create_proactive_conversation(
                channel_id=1, bot_id=2, conversation_template_id=3,
                recipient=["+5511999990000"],
            )

    Parameters:
        base_url: the API's origin; default ``PROACTIVE_BASE_URL`` from the environment.
        token: the Bearer token; default ``PROACTIVE_TOKEN``. Never logged or shown.
        retry: the default RetryPolicy (safe failures only); per call with ``retry=``.
        max_connections, max_connections_per_host, keepalive_timeout: the connection pool.
        connect_timeout, read_timeout, timeout: seconds to connect, between reads, and for
            one whole attempt (None: no limit). The policy's ``deadline`` bounds all
            attempts together.
        verify: TLS verification; True (default), False, or an ``ssl.SSLContext``.
        proxy: an HTTP proxy URL. headers: extra headers sent with every call.
        max_response_bytes: a larger response body is refused (a broken server cannot
            exhaust memory).
        mask_phone_numbers: mask numbers in log lines (default True).
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        max_connections: int = 100,
        max_connections_per_host: int = 0,
        keepalive_timeout: float = 15.0,
        connect_timeout: float | None = 10.0,
        read_timeout: float | None = 30.0,
        timeout: float | None = 60.0,
        verify: bool | ssl.SSLContext = True,
        proxy: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_response_bytes: int = 32 * 1024 * 1024,
        mask_phone_numbers: bool = True,
        sleep: Sleep | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        base_url = base_url or os.environ.get("PROACTIVE_BASE_URL")
        token = token or os.environ.get("PROACTIVE_TOKEN")
        if not base_url:
            raise ClientStateError("no base_url given and PROACTIVE_BASE_URL is not set")
        if not token:
            raise ClientStateError("no token given and PROACTIVE_TOKEN is not set")
        if not base_url.startswith(("http://", "https://")):
            raise ClientStateError(f"base_url must start with http:// or https://: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.retry = retry if retry is not None else RetryPolicy()
        self.mask_phone_numbers = mask_phone_numbers
        self._token = token  # kept only so a journal can refuse to store it
        self._url = self.base_url + PATH
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self._clock = clock if clock is not None else time.monotonic
        all_headers = {
            "User-Agent": user_agent(__version__),
            "Accept": "application/json",
            "Content-Type": "application/json",
            **(headers or {}),
            "Authorization": f"Bearer {token}",
        }
        self._transport = Transport(
            TransportConfig(
                max_connections=max_connections,
                max_connections_per_host=max_connections_per_host,
                keepalive_timeout=keepalive_timeout,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                timeout=timeout,
                verify=verify,
                proxy=proxy,
                max_response_bytes=max_response_bytes,
                headers=all_headers,
            )
        )

    def __repr__(self) -> str:
        return f"AsyncClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> Self:
        if self._transport.closed:
            raise ClientStateError("the client is closed; create a new AsyncClient")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool. Idempotent; safe under cancellation."""
        await self._transport.aclose()

    @property
    def closed(self) -> bool:
        return self._transport.closed

    async def create_proactive_conversation(
        self,
        request: ProactiveConversationRequest | None = None,
        /,
        *,
        retry: RetryPolicy | None = None,
        **fields: Any,
    ) -> list[Conversation]:
        """Start proactive conversations: one per recipient and per contact id.

        Pass a ProactiveConversationRequest, keyword fields (``channel_id=1, ...``), or both
        (the keywords override). Raises a ProactiveError; its ``may_have_been_processed``
        tells whether conversations may exist even so.
        """
        response = await self.create_proactive_conversation_with_response(
            request, retry=retry, **fields
        )
        return response.value

    async def create_proactive_conversation_with_response(
        self,
        request: ProactiveConversationRequest | None = None,
        /,
        *,
        retry: RetryPolicy | None = None,
        **fields: Any,
    ) -> ApiResponse[list[Conversation]]:
        """As ``create_proactive_conversation``, with status, headers, elapsed and attempts."""
        body = encode_request(_build_request(request, fields))
        policy = retry if retry is not None else self.retry

        async def attempt(number: int) -> ApiResponse[list[Conversation]]:
            return await self.send_once(body, attempt=number)

        return await retry_call(attempt, policy, sleep=self._sleep, clock=self._clock)

    async def send_once(self, body: bytes, *, attempt: int = 1) -> ApiResponse[list[Conversation]]:
        """One attempt with an encoded body, no retry; for runners that retry on their own."""
        raw = await self._transport.post(self._url, body)
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug(
                "POST %s -> %d in %.1f ms (attempt %d)",
                PATH, raw.status, raw.elapsed * 1e3, attempt,
            )
        if 200 <= raw.status < 300:
            try:
                value = decode_conversations(raw.body)
            except DecodingError as exc:
                exc.status = raw.status
                exc.attempts = attempt
                raise
            return ApiResponse(value, raw.status, raw.headers, raw.elapsed, attempt)
        raise self._status_error(raw, attempt)

    def _status_error(self, raw: RawResponse, attempt: int) -> HTTPStatusError:
        problem = _problem_details(raw)
        detail = problem.summary() if problem is not None else _snippet(raw.body)
        if self.mask_phone_numbers:
            detail = mask_phones_in(detail)
        message = f"HTTP {raw.status} from POST {PATH}" + (f": {detail}" if detail else "")
        cls = status_error_class(raw.status)
        common: dict[str, Any] = {
            "status": raw.status,
            "headers": raw.headers,
            "body": raw.body,
            "problem": problem,
            "attempts": attempt,
        }
        if cls is RateLimitError or cls is ServiceUnavailableError:
            wait = parse_retry_after(raw.headers.get("Retry-After"))
            if wait is not None:
                message += f" (Retry-After {wait:g}s)"
            return cls(message, retry_after=wait, **common)
        return cls(message, **common)


def _build_request(
    request: ProactiveConversationRequest | None, fields: Mapping[str, Any]
) -> ProactiveConversationRequest:
    if request is None:
        return ProactiveConversationRequest(**fields)
    if fields:
        return msgspec.structs.replace(request, **fields)
    return request


def _problem_details(raw: RawResponse) -> ProblemDetails | None:
    if not raw.body:
        return None
    try:
        data = msgspec.json.decode(raw.body)
    except msgspec.DecodeError:
        return None
    if isinstance(data, dict) and ({"title", "errors", "detail", "type"} & data.keys()):
        return ProblemDetails(data)
    return None


def _snippet(body: bytes, limit: int = 300) -> str:
    text = body[:limit].decode("utf-8", "replace").strip()
    return " ".join(text.split())


_PHONE = re.compile(r"\+?\d[\d\s().-]{6,}\d")


def mask_phone(number: str) -> str:
    """``+5511999990000`` -> ``+551********00``: enough to tell numbers apart in a log."""
    digits = [c for c in number if c.isdigit()]
    if len(digits) < 6:
        return "*" * len(number)
    hidden = len(digits) - 5
    masked = digits[:3] + ["*"] * hidden + digits[-2:]
    return ("+" if number.lstrip().startswith("+") else "") + "".join(masked)


def mask_phones_in(text: str) -> str:
    """Mask every phone-number-like run of digits in ``text``."""
    return _PHONE.sub(lambda m: mask_phone(m.group(0)), text)
