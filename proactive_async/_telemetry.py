"""OpenTelemetry, through its API alone: spans and metrics when the application records them.

A CLIENT span per attempt, after the HTTP client semantic conventions
(``http.request.method``, ``server.address``, ``server.port``, ``url.full``,
``http.response.status_code``, ``error.type``, ``http.request.resend_count``); a span per
campaign and per chunk with their counts; and the metrics ``http.client.request.duration``
(seconds), ``proactive_async.calls``, ``proactive_async.throttled`` (429s) and
``proactive_async.targets`` (by outcome).

``opentelemetry-api`` is an optional extra (``proactive-async[otel]``), and this module
never imports it before the application has: with no provider set (or without the package)
an attempt pays for one look at a cached answer, re-asked at most once a second, so a
provider set after the client was built is still found. No attribute holds the token:
``url.full`` is the base URL and path, without any credentials, and an error's status
message is its kind, not its text.
"""

from __future__ import annotations

import contextvars
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ._constants import API_PATH
from ._errors import HTTPStatusError, ProactiveError
from ._version import __version__

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

    from ._models import ProactiveConversationRequest
    from ._records import Outcome
    from ._report import CampaignSummary

__all__ = ["Observed", "Telemetry", "telemetry_of"]

NAME: Final = "proactive_async"
_RECHECK: Final = 1.0
"""Seconds between two looks for a provider while none is set (once set, it stays set)."""
_UNSET_PROVIDERS: Final = frozenset(
    {"ProxyTracerProvider", "NoOpTracerProvider", "_ProxyMeterProvider", "NoOpMeterProvider"}
)
"""What the API hands out while the application has set nothing (or set a no-op)."""
_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
"""The semantic conventions' boundaries for ``http.client.request.duration``, in seconds."""
_CHUNK_COUNTS: contextvars.ContextVar[Counter[str] | None] = contextvars.ContextVar(
    "proactive_async_chunk_counts", default=None
)
T = TypeVar("T")


class _Instruments:
    """A tracer and the four instruments, from the given providers or the global ones
    (the API's proxies, which follow a provider set later)."""

    def __init__(
        self, tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None
    ) -> None:
        from opentelemetry import context, metrics, trace

        self.tracer = trace.get_tracer(NAME, __version__, tracer_provider)
        meter = metrics.get_meter(NAME, __version__, meter_provider)
        self.attach, self.detach = context.attach, context.detach
        self.in_context = trace.set_span_in_context
        self.client_kind = trace.SpanKind.CLIENT
        self.error_status = trace.Status(trace.StatusCode.ERROR)
        try:
            self.duration = meter.create_histogram(
                "http.client.request.duration",
                unit="s",
                description="Duration of HTTP client requests.",
                explicit_bucket_boundaries_advisory=_BUCKETS,
            )
        except TypeError:  # opentelemetry-api before 1.28 takes no advice
            self.duration = meter.create_histogram(
                "http.client.request.duration",
                unit="s",
                description="Duration of HTTP client requests.",
            )
        self.calls = meter.create_counter(
            "proactive_async.calls", unit="{call}", description="Calls made to the API."
        )
        self.throttled = meter.create_counter(
            "proactive_async.throttled", unit="{response}", description="429 answers."
        )
        self.targets = meter.create_counter(
            "proactive_async.targets",
            unit="{target}",
            description="Targets by final outcome (proactive_async.outcome).",
        )


class _Global:
    """The process's providers, looked for at most once a second until one is set."""

    __slots__ = ("instruments", "recheck_at")

    def __init__(self) -> None:
        self.instruments: _Instruments | None = None
        self.recheck_at = 0.0

    def resolve(self) -> _Instruments | None:
        now = _now()
        if now < self.recheck_at:
            return None
        self.recheck_at = now + _RECHECK
        # Never imported here first: an application that set a provider has imported them.
        trace = sys.modules.get("opentelemetry.trace")
        metrics = sys.modules.get("opentelemetry.metrics")
        tracing = trace is not None and _is_set(trace.get_tracer_provider())
        measuring = metrics is not None and _is_set(metrics.get_meter_provider())
        if tracing or measuring:
            self.instruments = _Instruments(None, None)
        return self.instruments


def _is_set(provider: object) -> bool:
    return type(provider).__name__ not in _UNSET_PROVIDERS


_GLOBAL: Final = _Global()
_now: Final = time.monotonic


class Telemetry:
    """One client's telemetry: ``recording()`` is None when nothing would be recorded."""

    __slots__ = ("_attributes", "_observed", "_span_attributes")

    def __init__(
        self,
        base_url: str,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:  # a port that is no number: the first call says so (ClientStateError)
            port = 0
        self._attributes: dict[str, Any] = {
            "http.request.method": "POST",
            "server.address": parts.hostname or "",
            "server.port": port,
        }
        self._span_attributes: dict[str, Any] = {
            **self._attributes,
            "url.full": _without_credentials(base_url) + API_PATH,
            "url.template": API_PATH,
        }
        self._observed: Observed | None = None
        if tracer_provider is not None or meter_provider is not None:
            instruments = _Instruments(tracer_provider, meter_provider)
            self._observed = Observed(instruments, self._attributes, self._span_attributes)

    def recording(self) -> Observed | None:
        """What records this client's telemetry, or None (the hot path's one check)."""
        observed = self._observed
        if observed is None and (_GLOBAL.instruments is not None or _now() >= _GLOBAL.recheck_at):
            observed = self._resolve()
        return observed

    def _resolve(self) -> Observed | None:
        instruments = _GLOBAL.instruments or _GLOBAL.resolve()
        if instruments is None:
            return None
        observed = Observed(instruments, self._attributes, self._span_attributes)
        self._observed = observed
        return observed

    def settled(self, outcomes: Iterable[Outcome]) -> None:
        """Count final outcomes (``proactive_async.targets``, and the chunk's span)."""
        observed = self.recording()
        if observed is not None:
            observed.settled(outcomes)


class _Off(Telemetry):
    """A stand-in client's (a test's): records nothing."""

    __slots__ = ()

    def recording(self) -> Observed | None:
        return None


class Observed:
    """Records spans and metrics for one client."""

    __slots__ = ("_attributes", "_instruments", "_span_attributes")

    def __init__(
        self,
        instruments: _Instruments,
        attributes: Mapping[str, Any],
        span_attributes: Mapping[str, Any],
    ) -> None:
        self._instruments = instruments
        self._attributes = attributes
        self._span_attributes = span_attributes

    async def attempt(self, sending: Awaitable[T], attempt: int) -> T:
        """Await one attempt (an ``ApiResponse``) inside its CLIENT span, and measure it."""
        tools = self._instruments
        attributes = dict(self._span_attributes)
        if attempt > 1:
            attributes["http.request.resend_count"] = attempt - 1
        span = tools.tracer.start_span(
            f"POST {API_PATH}", kind=tools.client_kind, attributes=attributes
        )
        token = tools.attach(tools.in_context(span))
        started = time.perf_counter()
        try:
            response = await sending
        except BaseException as exc:
            status = getattr(exc, "status_code", None)
            if isinstance(exc, HTTPStatusError):
                error = str(exc.status_code)
            else:
                error = exc.kind if isinstance(exc, ProactiveError) else type(exc).__name__
            self._finish(span, started, status, error)
            raise
        finally:
            tools.detach(token)
        self._finish(span, started, getattr(response, "status", None), None)
        return response

    def _finish(self, span: Span, started: float, status: int | None, error: str | None) -> None:
        tools = self._instruments
        elapsed = time.perf_counter() - started
        attributes = dict(self._attributes)
        if status is not None:
            attributes["http.response.status_code"] = status
            span.set_attribute("http.response.status_code", status)
        if error is not None:
            attributes["error.type"] = error
            span.set_attribute("error.type", error)
            span.set_status(tools.error_status)
        span.end()
        tools.duration.record(elapsed, attributes)
        tools.calls.add(1, attributes)
        if status == 429:
            tools.throttled.add(1, attributes)

    def settled(self, outcomes: Iterable[Outcome]) -> None:
        counts: Counter[str] = Counter(outcome.status.value for outcome in outcomes)
        chunk = _CHUNK_COUNTS.get()
        if chunk is not None:
            chunk.update(counts)
        add = self._instruments.targets.add
        for status, count in counts.items():
            add(count, {"proactive_async.outcome": status})

    async def chunk(self, sending: Awaitable[None], targets: int) -> None:
        """Await one chunk's sending inside its span, which ends with its counts."""
        counts: Counter[str] = Counter()
        reset = _CHUNK_COUNTS.set(counts)
        try:
            with self._span("proactive_async.chunk", {"proactive_async.targets": targets}) as span:
                try:
                    await sending
                finally:
                    _set_counts(span, counts, targets - counts.total())
        finally:
            _CHUNK_COUNTS.reset(reset)

    async def campaign(
        self,
        running: Awaitable[None],
        template: ProactiveConversationRequest,
        summary: CampaignSummary,
    ) -> None:
        """Await a campaign's run inside its span, which ends with the counts it reached."""
        attributes = {
            f"proactive_async.{name}": value
            for name in ("channel_id", "bot_id", "conversation_template_id")
            if type(value := getattr(template, name)) is int
        }
        with self._span("proactive_async.campaign", attributes) as span:
            try:
                await running
            finally:
                counts = {status.value: n for status, n in summary.counts.items() if n}
                counts.update(
                    records=summary.records,
                    calls=summary.calls,
                    retries=summary.retries,
                    throttled=summary.throttled,
                )
                _set_counts(span, counts, 0)

    @contextmanager
    def _span(self, name: str, attributes: Mapping[str, Any]) -> Iterator[Span]:
        tools = self._instruments
        with tools.tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span


def _set_counts(span: Span, counts: Mapping[str, int], unsent: int) -> None:
    for name, count in counts.items():
        span.set_attribute(f"proactive_async.{name}", count)
    if unsent > 0:
        span.set_attribute("proactive_async.unsent", unsent)


def _without_credentials(url: str) -> str:
    """The URL without a user or password (the conventions' ``REDACTED``), query or fragment."""
    parts = urlsplit(url.rstrip("/"))
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "REDACTED:REDACTED@" + netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


_OFF: Final = _Off("http://off")


def telemetry_of(client: object) -> Telemetry:
    """A client's telemetry; a stand-in client (a test's) records nothing."""
    found = getattr(client, "_telemetry", None)
    return found if isinstance(found, Telemetry) else _OFF
