"""OpenTelemetry (issue 20 §3): a CLIENT span per attempt after the HTTP client semantic
conventions, campaign and chunk spans with their counts, the metrics, never the token; and
nothing at all (nothing imported) when the application set no provider."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import FakeTime
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from proactive_async import (
    AsyncClient,
    Campaign,
    Client,
    ConnectError,
    ProactiveConversationRequest,
    RetryPolicy,
    ServerError,
)
from proactive_async._telemetry import Telemetry, _Global
from proactive_async.testing import (
    MockTransport,
    TransportRequest,
    TransportResponse,
    answer_like_the_api,
    problem_response,
)

TOKEN = "tok-S3CRET-telemetry-0123456789"
BASE = "https://api.example.test"
PATH = "/api/Conversation/proactive-conversation"
FIELDS: dict[str, Any] = {"channel_id": 1, "bot_id": 2, "conversation_template_id": 3}
PHONE = "+5511999990000"


class Recorded:
    """An SDK tracer provider and meter provider that keep what they get, in memory."""

    def __init__(self) -> None:
        self.spans_out = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans_out))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    @property
    def providers(self) -> dict[str, Any]:
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        found = self.spans_out.get_finished_spans()
        return [span for span in found if name is None or span.name == name]

    def metrics(self) -> dict[str, list[Any]]:
        """Each metric's data points, by name."""
        data = self.reader.get_metrics_data()
        points: dict[str, list[Any]] = {}
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points.setdefault(metric.name, []).extend(metric.data.data_points)
        return points

    def everything(self) -> str:
        """Every span and metric as JSON: what an exporter would send."""
        spans = [span.to_json() for span in self.spans()]
        data = self.reader.get_metrics_data()
        return "\n".join(spans) + (data.to_json() if data is not None else "")

    def close(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    found = Recorded()
    yield found
    found.close()


ATTEMPT = f"POST {PATH}"


async def test_a_call_is_one_client_span_with_the_http_semantic_conventions(
    recorded: Recorded,
) -> None:
    transport = MockTransport()
    async with AsyncClient(BASE, TOKEN, transport=transport, **recorded.providers) as client:
        await client.create_proactive_conversation(**FIELDS, recipient=[PHONE])
    [span] = recorded.spans()
    assert span.name == ATTEMPT and span.kind is SpanKind.CLIENT
    assert dict(span.attributes or {}) == {
        "http.request.method": "POST",
        "server.address": "api.example.test",
        "server.port": 443,
        "url.full": BASE + PATH,
        "url.template": PATH,
        "http.response.status_code": 200,
    }
    assert span.status.status_code is StatusCode.UNSET
    metrics = recorded.metrics()
    [duration] = metrics["http.client.request.duration"]
    assert duration.count == 1 and 0 <= duration.sum < 5
    assert dict(duration.attributes) == {
        "http.request.method": "POST",
        "server.address": "api.example.test",
        "server.port": 443,
        "http.response.status_code": 200,
    }
    assert [point.value for point in metrics["proactive_async.calls"]] == [1]
    assert "proactive_async.throttled" not in metrics


async def test_each_attempt_has_its_span_a_429_is_counted_and_a_retry_says_its_resend(
    recorded: Recorded, fake_time: FakeTime
) -> None:
    answers = [
        problem_response(429, "Too Many Requests", headers={"Retry-After": "1"}),
        TransportResponse.json([{"id": 7, "messages": [{"to": PHONE}]}]),
    ]
    transport = MockTransport(lambda request: answers.pop(0))
    async with AsyncClient(
        BASE,
        TOKEN,
        transport=transport,
        sleep=fake_time.sleep,
        clock=fake_time.clock,
        **recorded.providers,
    ) as client:
        await client.create_proactive_conversation(**FIELDS, recipient=[PHONE])
    throttled, accepted = recorded.spans()
    assert throttled.attributes is not None and accepted.attributes is not None
    assert throttled.attributes["http.response.status_code"] == 429
    assert throttled.attributes["error.type"] == "429"
    assert throttled.status.status_code is StatusCode.ERROR
    assert "http.request.resend_count" not in throttled.attributes
    assert accepted.attributes["http.request.resend_count"] == 1
    assert "error.type" not in accepted.attributes
    metrics = recorded.metrics()
    assert sum(point.value for point in metrics["proactive_async.calls"]) == 2
    [throttles] = metrics["proactive_async.throttled"]
    assert throttles.value == 1 and throttles.attributes["http.response.status_code"] == 429


async def test_a_failure_without_an_answer_names_its_error_type_and_no_status(
    recorded: Recorded,
) -> None:
    def refuse(request: TransportRequest) -> TransportResponse:
        raise ConnectError("could not connect")

    transport = MockTransport(refuse)
    client = AsyncClient(
        BASE, TOKEN, transport=transport, retry=RetryPolicy.never(), **recorded.providers
    )
    async with client:
        with pytest.raises(ConnectError):
            await client.create_proactive_conversation(**FIELDS, recipient=[PHONE])
    [span] = recorded.spans()
    assert span.attributes is not None
    assert span.attributes["error.type"] == "ConnectError"
    assert "http.response.status_code" not in span.attributes
    assert span.status.status_code is StatusCode.ERROR
    [duration] = recorded.metrics()["http.client.request.duration"]
    assert duration.attributes["error.type"] == "ConnectError"


async def test_the_token_and_url_credentials_are_in_no_span_and_no_metric(
    recorded: Recorded,
) -> None:
    """A server that echoes the token into its error, a base URL with a user and password:
    neither reaches what an exporter would send."""

    def echo(request: TransportRequest) -> TransportResponse:
        return problem_response(500, f"bad token Bearer {request.token}")

    base = "https://user:hunter2-password@api.example.test:8443"
    client = AsyncClient(
        base, TOKEN, transport=MockTransport(echo), retry=RetryPolicy.never(), **recorded.providers
    )
    async with client:
        with pytest.raises(ServerError):
            await client.create_proactive_conversation(**FIELDS, recipient=[PHONE])
    [span] = recorded.spans()
    assert span.attributes is not None
    assert span.attributes["url.full"] == f"https://REDACTED:REDACTED@api.example.test:8443{PATH}"
    assert span.attributes["server.port"] == 8443
    exported = recorded.everything()
    assert TOKEN not in exported and "hunter2" not in exported and "user:" not in exported


async def test_a_campaign_span_holds_chunk_spans_which_hold_their_attempts_with_counts(
    recorded: Recorded,
) -> None:
    """Chunks of 2: one answered, one 500 (unknown), one record rejected before sending."""
    bad = "+5511999990003"

    def handler(request: TransportRequest) -> TransportResponse:
        if bad in request.json()["recipient"]:
            return problem_response(500, "Internal Server Error")
        return answer_like_the_api(request)

    targets = ["+5511999990001", "+5511999990002", bad, "+5511999990004", "12"]
    async with AsyncClient(
        BASE, TOKEN, transport=MockTransport(handler), **recorded.providers
    ) as client:
        campaign = Campaign(
            client,
            template=ProactiveConversationRequest(**FIELDS),
            targets=targets,
            chunk_size=2,
            concurrency=1,
            rate=1000,
        )
        summary = await campaign.run()
    assert summary.counts["sent"] == 2 and summary.counts["unknown"] == 2
    [run] = recorded.spans("proactive_async.campaign")
    assert dict(run.attributes or {}) == {
        "proactive_async.channel_id": 1,
        "proactive_async.bot_id": 2,
        "proactive_async.conversation_template_id": 3,
        "proactive_async.sent": 2,
        "proactive_async.unknown": 2,
        "proactive_async.rejected": 1,
        "proactive_async.records": 5,
        "proactive_async.calls": 2,
        "proactive_async.retries": 0,
        "proactive_async.throttled": 0,
    }
    chunks = recorded.spans("proactive_async.chunk")
    assert sorted(dict(chunk.attributes or {}).items() for chunk in chunks) == sorted(
        [
            {"proactive_async.targets": 2, "proactive_async.sent": 2}.items(),
            {"proactive_async.targets": 2, "proactive_async.unknown": 2}.items(),
        ]
    )
    attempts = recorded.spans(ATTEMPT)
    assert len(attempts) == 2
    assert run.context is not None
    for chunk in chunks:
        assert chunk.parent is not None and chunk.parent.span_id == run.context.span_id
    chunk_ids = {chunk.context.span_id for chunk in chunks if chunk.context is not None}
    assert {attempt.parent.span_id for attempt in attempts if attempt.parent} == chunk_ids
    outcomes = {
        point.attributes["proactive_async.outcome"]: point.value
        for point in recorded.metrics()["proactive_async.targets"]
    }
    assert outcomes == {"sent": 2, "unknown": 2, "rejected": 1}


async def test_a_client_made_by_with_options_records_as_its_parent(recorded: Recorded) -> None:
    async with AsyncClient(BASE, TOKEN, transport=MockTransport(), **recorded.providers) as client:
        await client.with_options(timeout=5.0).create_proactive_conversation(
            **FIELDS, recipient=[PHONE]
        )
    assert len(recorded.spans(ATTEMPT)) == 1


def test_the_blocking_client_takes_the_providers_too(recorded: Recorded) -> None:
    with Client(BASE, TOKEN, transport=MockTransport(), **recorded.providers) as client:
        client.create_proactive_conversation(**FIELDS, recipient=[PHONE])
    assert len(recorded.spans(ATTEMPT)) == 1


def test_without_a_provider_nothing_records_and_the_check_is_cached() -> None:
    assert Telemetry(BASE).recording() is None
    assert Telemetry("http://api.test:no-port").recording() is None  # refused at the first call
    found = _Global()
    assert found.resolve() is None
    assert found.recheck_at > 0  # looked again only a second later


def _run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_without_opentelemetry_imported_by_the_application_none_is_imported() -> None:
    out = _run_python(
        f"""
        import asyncio, sys
        from proactive_async import AsyncClient, Campaign, ProactiveConversationRequest
        from proactive_async.testing import MockTransport

        async def main():
            async with AsyncClient("{BASE}", "{TOKEN}", transport=MockTransport()) as client:
                await client.create_proactive_conversation(**{FIELDS!r}, recipient=["{PHONE}"])
                await Campaign(client, template=ProactiveConversationRequest(**{FIELDS!r}),
                               targets=["{PHONE}"]).run()

        asyncio.run(main())
        print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
        """
    )
    assert out.strip() == "[]"


def test_a_global_provider_set_after_the_client_was_built_is_found() -> None:
    """The application's provider, set once the client already made calls: the next look
    (a second later at most; here made due at once) finds it."""
    out = _run_python(
        f"""
        import asyncio, json
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from proactive_async import AsyncClient
        from proactive_async import _telemetry
        from proactive_async.testing import MockTransport

        async def main():
            async with AsyncClient("{BASE}", "{TOKEN}", transport=MockTransport()) as client:
                await client.create_proactive_conversation(**{FIELDS!r}, recipient=["{PHONE}"])
                exporter = InMemorySpanExporter()
                provider = TracerProvider()
                provider.add_span_processor(SimpleSpanProcessor(exporter))
                trace.set_tracer_provider(provider)
                _telemetry._GLOBAL.recheck_at = 0.0
                await client.create_proactive_conversation(**{FIELDS!r}, recipient=["{PHONE}"])
                print(json.dumps([span.name for span in exporter.get_finished_spans()]))

        asyncio.run(main())
        """
    )
    assert json.loads(out) == [ATTEMPT]
