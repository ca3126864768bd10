"""AsyncClient: the session's lifecycle, one call, and the retry policy applied to it."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import math
import os
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar, Unpack

from msgspec import UNSET

from ._config import DEFAULT_LIMITS, DEFAULT_TIMEOUT, NO_TIMEOUT, Limits, Timeout
from ._constants import API_PATH
from ._errors import (
    ClientStateError,
    DecodingError,
    HTTPStatusError,
    ProactiveError,
    RateLimitError,
    ReadTimeout,
    ServiceUnavailableError,
    body_snippet,
    problem_details,
    status_error_class,
)
from ._handoff import Handoff
from ._models import (
    Conversation,
    ProactiveConversationFields,
    ProactiveConversationRequest,
    build_request,
    decode_conversations,
    decode_conversations_utc,
    encode_request,
)
from ._retry import RetryPolicy, Sleep, parse_retry_after, retry_call
from ._secrets import Redactor, check_headers, mask_phones_in
from ._telemetry import Telemetry
from ._transport import (
    BLOCKED_AFTER,
    DEADLINE_GRACE,
    PROBE_AFTER,
    RawResponse,
    SimulatorBlocked,
    SyncTransport,
    Transport,
    TransportConfig,
    open_transport,
    origin,
    split_headers,
    tls_verify,
    user_agent,
)
from ._transport_api import AsyncTransport
from ._version import __version__
from .ratelimit import RateLimitBackend, report_failure

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ["ApiResponse", "AsyncClient"]

PATH = API_PATH
_log = logging.getLogger("proactive_async")
_SIMULATOR_REGISTRY = "proactive_async.simulator._registry"
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
        token: the Bearer token; default ``PROACTIVE_TOKEN``. Never logged or shown. One
            pasted with its ``Bearer `` prefix is sent without it.
        retry: the default RetryPolicy (safe failures only); per call with ``retry=``.
        timeout: a ``Timeout`` (connect, read, total per attempt), or None for no limit.
        limits: a ``Limits`` (pool size, per host, keep-alive).
        verify: TLS verification; True (default), a CA bundle's path (PEM) to trust a
            private CA, an ``ssl.SSLContext``, or False (not advised).
        proxy: an HTTP proxy URL; its credentials, if any, in the URL
            (``http://user:pass@proxy:3128``). The token is only ever sent to ``base_url``.
        headers: extra headers sent with every call (to the API only, never to a proxy).
        max_response_bytes: a larger response body is refused (a broken server cannot
            exhaust memory).
        mask_phone_numbers: mask numbers in log lines (default True).
        rate_limit: paces every attempt (a ``RateLimit``, or a shared one) by its number of
            targets, and hears of its 429s and 503s; a campaign on this client uses it too.
            None (default): calls are not paced.
        assume_utc: read a date-time the server sent without an offset (``created_at``
            and friends) as UTC, so that every date-time decoded is aware. Off by default:
            such a value is naive, as sent; one sent with an offset or ``Z`` is always aware.
        transport: what makes each POST (an ``AsyncTransport``); default aiohttp's pool.
            ``proactive_async.testing.MockTransport`` answers from a function, without
            sockets; retries, rate limits, decoding and errors work unchanged over it.
            ``timeout``, ``limits``, ``verify`` and ``proxy`` are the default transport's.
        tracer_provider, meter_provider: OpenTelemetry providers for this client's spans
            and metrics; default the global ones, if the application set any (nothing is
            recorded otherwise). Needs the ``otel`` extra.

    ``with_options(timeout=..., max_attempts=...)`` gives a client sharing this one's pool
    with other defaults; a call takes ``timeout=`` too.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: Timeout | None = DEFAULT_TIMEOUT,
        limits: Limits = DEFAULT_LIMITS,
        verify: bool | str | os.PathLike[str] | ssl.SSLContext = True,
        proxy: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_response_bytes: int = 32 * 1024 * 1024,
        mask_phone_numbers: bool = True,
        rate_limit: RateLimitBackend | None = None,
        assume_utc: bool = False,
        sleep: Sleep | None = None,
        clock: Callable[[], float] | None = None,
        transport: AsyncTransport | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        base_url = base_url or os.environ.get("PROACTIVE_BASE_URL")
        token = token or os.environ.get("PROACTIVE_TOKEN")
        if not base_url:
            raise ClientStateError("no base_url given and PROACTIVE_BASE_URL is not set")
        if not token:
            raise ClientStateError("no token given and PROACTIVE_TOKEN is not set")
        if not base_url.startswith(("http://", "https://")):
            raise ClientStateError(f"base_url must start with http:// or https://: {base_url!r}")
        token = check_headers(token, headers or {})
        self.base_url: str = base_url.rstrip("/")
        self.retry: RetryPolicy = retry if retry is not None else RetryPolicy()
        self.mask_phone_numbers = mask_phone_numbers
        self.rate_limit = rate_limit
        self.assume_utc = assume_utc
        # Chosen once: without the option, the hot path decodes exactly as before.
        self._decode = decode_conversations_utc if assume_utc else decode_conversations
        self._token = token  # kept only so a journal can refuse to store it
        self._redactor = Redactor([token])
        self._url = self.base_url + PATH
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self._clock = clock if clock is not None else time.monotonic
        self._closed = False
        self._origin = origin(self.base_url)
        self._telemetry = Telemetry(
            self.base_url, tracer_provider=tracer_provider, meter_provider=meter_provider
        )
        # A call's own timeout can only shorten what the pool allows (``_check_timeout``).
        self._pool_total = timeout.total if timeout is not None and transport is None else None
        self._attempt_timeout: float | None = None
        self._parent: AsyncClient | None = None  # set on a client made by with_options
        default_headers, extra_headers = split_headers(
            {
                "User-Agent": user_agent(__version__),
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
            headers or {},
        )
        self._transport: Transport | SyncTransport | AsyncTransport
        self._post: Callable[[str, bytes], Awaitable[RawResponse]]
        self._own: TransportConfig | None = None  # the settings of the client's own pool
        if transport is None:
            self._own = TransportConfig(
                limits=limits,
                timeout=timeout if timeout is not None else NO_TIMEOUT,
                verify=tls_verify(verify),
                proxy=proxy,
                max_response_bytes=max_response_bytes,
                headers=default_headers,
                request_headers={**extra_headers, "Authorization": f"Bearer {token}"},
            )
            own = open_transport(self._own)
            self._transport, self._post = own, own.post
        else:
            self._transport = transport
            self._post = Handoff(
                lambda: self._closed,
                token,
                transport,
                {**default_headers, **extra_headers},
                max_response_bytes,
            ).post

    def __repr__(self) -> str:
        return f"AsyncClient(base_url={self.base_url!r})"

    def _blocking_twin(self, sleep: Sleep) -> AsyncClient | None:
        """This client with a pool of blocking connections of its own (``Client``'s plain
        calls): its coroutines never suspend, so a caller runs one to its end with a single
        ``send``, without an event loop; ``sleep`` waits between retries, blocking. None when
        a call needs the event loop: a transport or a ``sleep`` given, a proxy, a rate limit.
        """
        own = self._own
        if own is None or own.proxy is not None or self.rate_limit is not None:
            return None
        if self._sleep is not asyncio.sleep or self._parent is not None:
            return None
        twin = copy.copy(self)
        transport = SyncTransport(own)
        twin._transport, twin._post, twin._sleep = transport, transport.post, sleep
        twin._closed = False
        return twin

    def with_options(
        self,
        *,
        timeout: float | None = None,
        max_attempts: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> AsyncClient:
        """A client sharing this one's connection pool, rate limit and token, with other
        defaults (openai-python's ``with_options``); options not given are this one's.

        Usage::

            quick = client.with_options(timeout=5.0, max_attempts=1)
            await quick.create_proactive_conversation(...)

        Parameters:
            timeout: seconds one attempt may take in all, at most (a call's ``timeout=``
                still wins); within the client's ``Timeout``, never beyond its ``total``.
            max_attempts: the retry policy's attempts; retry: another ``RetryPolicy``.

        Closing it (``aclose``, ``async with``) only stops its own calls: the pool is this
        client's, closed with it.
        """
        if self.closed:
            raise ClientStateError("the client is closed; create a new AsyncClient")
        policy = retry if retry is not None else self.retry
        if max_attempts is not None:
            policy = dataclasses.replace(policy, max_attempts=max_attempts)
        derived = copy.copy(self)
        derived.retry = policy
        if timeout is not None:
            derived._attempt_timeout = self._check_timeout(timeout)
        derived._parent = self._parent or self
        derived._closed = False
        return derived

    def _check_timeout(self, timeout: float) -> float:
        """A call's timeout as given, or why it cannot be one (before anything is sent)."""
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise TypeError(f"timeout must be a number of seconds, not {timeout!r}")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if self._pool_total is not None and timeout > self._pool_total:
            raise ValueError(
                f"timeout={timeout:g} passes the client's Timeout(total={self._pool_total:g}):"
                " a call's timeout only shortens it; build the client with a longer Timeout"
            )
        return float(timeout)

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never be stored or shown (the token): for journals and reports."""
        return (self._token,)

    async def __aenter__(self) -> Self:
        if self.closed:  # a derived client's parent closed counts
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
        """Close the connection pool (or the transport). Idempotent; safe under cancellation.

        A client made by ``with_options`` closes only itself: the pool stays open.
        """
        already, self._closed = self._closed, True
        if self._parent is not None:
            self._post = _closed_post
            return
        if already and not isinstance(self._transport, Transport):
            return  # a user's transport is closed once; aiohttp's own is idempotent
        await self._transport.aclose()

    @property
    def closed(self) -> bool:
        return self._closed or (self._parent is not None and self._parent._closed)

    async def create_proactive_conversation(
        self,
        request: ProactiveConversationRequest | None = None,
        /,
        *,
        retry: RetryPolicy | None = None,
        # Per attempt, as openai-python's and httpx's: not asyncio.timeout around the call.
        timeout: float | None = None,  # noqa: ASYNC109
        **fields: Unpack[ProactiveConversationFields],
    ) -> list[Conversation]:
        """Start proactive conversations: one per recipient and per contact id.

        Pass a ProactiveConversationRequest, keyword fields (``channel_id=1, ...``), or both
        (the keywords override). Raises a ProactiveError; its ``may_have_been_processed``
        tells whether conversations may exist even so. A list field given as something
        else (``recipient="+55..."``) is a TypeError, raised before anything is sent.

        ``retry=`` replaces the client's policy for this call; ``timeout=`` bounds each of
        its attempts (seconds in all, within the client's ``Timeout``): one cut short is a
        ``ReadTimeout``, as it may have been sent.
        """
        response = await self._create(request, retry, timeout, fields)
        return response.value

    async def create_proactive_conversation_with_response(
        self,
        request: ProactiveConversationRequest | None = None,
        /,
        *,
        retry: RetryPolicy | None = None,
        # Per attempt, as openai-python's and httpx's: not asyncio.timeout around the call.
        timeout: float | None = None,  # noqa: ASYNC109
        **fields: Unpack[ProactiveConversationFields],
    ) -> ApiResponse[list[Conversation]]:
        """As ``create_proactive_conversation``, with status, headers, elapsed and attempts."""
        return await self._create(request, retry, timeout, fields)

    async def _create(
        self,
        request: ProactiveConversationRequest | None,
        retry: RetryPolicy | None,
        per_attempt: float | None,
        fields: Mapping[str, Any],
    ) -> ApiResponse[list[Conversation]]:
        # Both public methods come here with their keywords as one dict, not unpacked again.
        built = build_request(request, fields)
        body = encode_request(built)
        policy = retry if retry is not None else self.retry
        within = self._attempt_timeout if per_attempt is None else self._check_timeout(per_attempt)
        limit = self.rate_limit
        attempt: Callable[[int], Awaitable[ApiResponse[list[Conversation]]]]
        if limit is None:
            # Not a coroutine of its own: the attempt is send_once's coroutine, one frame less.
            def unpaced(number: int) -> Awaitable[ApiResponse[list[Conversation]]]:
                return self._attempt(body, number, within)

            attempt = unpaced
        else:
            weight = float(max(1, _targets_in(built)))

            async def paced(number: int) -> ApiResponse[list[Conversation]]:
                await limit.acquire(weight)
                try:
                    response = await self._attempt(body, number, within)
                except ProactiveError as exc:
                    await report_failure(limit, exc, weight, policy, number)
                    raise
                await limit.on_success(weight)
                return response

            attempt = paced
        started = self._clock()
        try:
            return await attempt(1)  # most calls: no retry loop at all
        except ProactiveError as exc:
            first = exc
        return await retry_call(
            attempt, policy, sleep=self._sleep, clock=self._clock, first=first, started=started
        )

    def send_once(
        self, body: bytes, *, attempt: int = 1, timeout: float | None = None
    ) -> Awaitable[ApiResponse[list[Conversation]]]:
        """One attempt with an encoded body, no retry; for runners that retry on their own.

        ``timeout``: seconds it may take in all, as a call's ``timeout=``.
        """
        within = self._attempt_timeout if timeout is None else self._check_timeout(timeout)
        # _attempt's lines, not a call to it: a campaign's every attempt comes this way.
        observed = self._telemetry.recording()
        if observed is None:
            return self._send(body, attempt, within)
        return observed.attempt(self._send(body, attempt, within), attempt)

    def _attempt(
        self, body: bytes, attempt: int, within: float | None
    ) -> Awaitable[ApiResponse[list[Conversation]]]:
        """One attempt, in its span when telemetry records (not a coroutine: one frame less)."""
        observed = self._telemetry.recording()
        if observed is None:
            return self._send(body, attempt, within)
        return observed.attempt(self._send(body, attempt, within), attempt)

    async def _send(
        self, body: bytes, attempt: int, within: float | None
    ) -> ApiResponse[list[Conversation]]:
        registry = sys.modules.get(_SIMULATOR_REGISTRY)
        if within is not None:
            raw = await self._post_within(body, registry, within)
        elif registry is not None and registry.SERVING:  # an in-process simulator (tests only)
            raw = await self._post_watched(body, registry)
        else:
            raw = await self._post(self._url, body)
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug(
                "POST %s -> %d in %.1f ms (attempt %d)",
                PATH,
                raw.status,
                raw.elapsed * 1e3,
                attempt,
            )
        if 200 <= raw.status < 300:
            try:
                value = self._decode(raw.body)
            except DecodingError as exc:
                exc.status = raw.status
                exc.attempts = attempt
                exc.body = self._redactor.bytes(exc.body)
                exc.message = self._redactor.text(exc.message)
                exc.args = (exc.message,)
                raise
            return ApiResponse(value, raw.status, raw.headers, raw.elapsed, attempt)
        error = self._status_error(raw, attempt)
        del raw  # an echoing gateway's copy of the token: out of the traceback's locals
        raise error

    async def _post_within(self, body: bytes, registry: Any, within: float) -> RawResponse:
        """The POST, cut after ``within`` seconds. Our own transport tells the time spent
        before sending (a connection slot, a new connection: ConnectTimeout, nothing sent)
        from the rest (ReadTimeout: it may have been sent); another transport cannot, so
        its cut is always a ReadTimeout."""
        transport = self._transport
        if self._post is _closed_post:
            await _closed_post(self._url, body)
        if isinstance(transport, SyncTransport):
            serving = None if registry is None else registry.SERVING.get(self._origin)
            return await self._post_blocking(transport, body, within, serving)
        try:
            if registry is not None and registry.SERVING:
                async with asyncio.timeout(within):
                    return await self._post_watched(body, registry)
            if isinstance(transport, Transport):
                deadline = asyncio.get_running_loop().time() + within
                async with asyncio.timeout_at(deadline + DEADLINE_GRACE):
                    return await transport.post(self._url, body, deadline=deadline)
            async with asyncio.timeout(within):
                return await self._post(self._url, body)
        except TimeoutError:
            pass
        raise ReadTimeout(
            f"no complete answer from {self._origin} in {within:g} s (the call's timeout);"
            " the request may have been processed"
        )

    async def _post_watched(self, body: bytes, registry: Any) -> RawResponse:
        """The POST, to an in-process simulator served by another event loop: if that loop
        stops running while it waits (blocked by a synchronous call made from it that waits
        for this very request: a deadlock), a ClientStateError names the fix, at once."""
        serving: asyncio.AbstractEventLoop | None = registry.SERVING.get(self._origin)
        transport = self._transport
        if isinstance(transport, SyncTransport) and self._post is not _closed_post:
            return await self._post_blocking(transport, body, None, serving)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if serving is None or serving is loop or task is None:
            return await self._post(self._url, body)
        blocked = False
        handle: asyncio.TimerHandle | None = None

        def probe() -> None:
            nonlocal handle
            pong = threading.Event()
            try:
                serving.call_soon_threadsafe(pong.set)
            except RuntimeError:  # that loop is closed: the POST fails on its own
                return
            handle = loop.call_later(BLOCKED_AFTER, verdict, pong)

        def verdict(pong: threading.Event) -> None:
            nonlocal blocked, handle
            if pong.is_set():
                handle = loop.call_later(PROBE_AFTER, probe)
                return
            blocked = True
            task.cancel()

        handle = loop.call_later(PROBE_AFTER, probe)
        try:
            return await self._post(self._url, body)
        except BaseException:
            if not blocked:
                raise
            task.uncancel()
        finally:
            handle.cancel()
        raise self._simulator_blocked()

    async def _post_blocking(
        self,
        transport: SyncTransport,
        body: bytes,
        within: float | None,
        serving: asyncio.AbstractEventLoop | None,
    ) -> RawResponse:
        """The POST of a blocking twin (``_blocking_twin``) with a call's timeout, or to an
        in-process simulator, whose loop it watches as ``_post_watched`` does."""
        try:
            return await transport.post(self._url, body, within=within, serving=serving)
        except SimulatorBlocked:
            raise self._simulator_blocked() from None

    def _simulator_blocked(self) -> ClientStateError:
        return ClientStateError(
            f"the simulator at {self._origin} cannot answer: its event loop has not run for"
            f" {BLOCKED_AFTER:g} s, blocked by a synchronous call made from it (a test"
            " client of FastAPI, Flask or Django, a blocking Client) that waits for this"
            " request. Serve the simulator from its own thread:"
            " proactive_async.testing.ThreadedSimulator, or the proactive_simulator_threaded"
            " fixture. The request was not processed."
        )

    def _status_error(self, raw: RawResponse, attempt: int) -> HTTPStatusError:
        # An echoing gateway may send our own headers back: the token stays out of the error.
        body = self._redactor.bytes(raw.body)
        problem = problem_details(body)
        detail = problem.summary() if problem is not None else body_snippet(body)
        if self.mask_phone_numbers:
            detail = mask_phones_in(detail)
        message = f"HTTP {raw.status} from POST {PATH}" + (f": {detail}" if detail else "")
        cls = status_error_class(raw.status)
        common: dict[str, Any] = {
            "status": raw.status,
            "headers": self._redactor.headers(raw.headers),
            "body": body,
            "problem": problem,
            "attempts": attempt,
        }
        if cls is RateLimitError or cls is ServiceUnavailableError:
            wait = parse_retry_after(raw.headers.get("Retry-After"))
            if wait is not None:
                message += f" (Retry-After {wait:g}s)"
            return cls(message, retry_after=wait, **common)
        return cls(message, **common)


async def _closed_post(url: str, body: bytes) -> RawResponse:
    """What a closed client made by ``with_options`` sends with: nothing."""
    raise ClientStateError("the client is closed; create a new AsyncClient")


def _targets_in(request: ProactiveConversationRequest) -> int:
    """Recipients and contact ids: the weight of a call for a rate limit."""
    recipients = request.recipient if request.recipient is not UNSET else ()
    contacts = request.contact_ids if request.contact_ids is not UNSET else ()
    return len(recipients or ()) + len(contacts or ())
