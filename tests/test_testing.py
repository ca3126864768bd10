"""``proactive_async.testing``: the transport seam, MockTransport, ThreadedSimulator, and the
clear error when an in-process simulator's loop is blocked by the call that waits for it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import FakeTime

import proactive_async._client as client_module
import proactive_async._transport._blocking as blocking_module
from proactive_async import (
    AsyncClient,
    AsyncTransport,
    Client,
    ClientStateError,
    ConnectError,
    RateLimitError,
    ResponseTooLargeError,
    RetryPolicy,
    ServiceUnavailableError,
    TransportRequest,
    TransportResponse,
)
from proactive_async.simulator import Simulator, SimulatorConfig
from proactive_async.testing import (
    MockTransport,
    ThreadedSimulator,
    answer_like_the_api,
    problem_response,
)

BASE = "https://api.test"
TOKEN = "tok-S3CRET-testing"
PHONE = "+5511999990000"
FIELDS = {"channel_id": 1, "bot_id": 2, "conversation_template_id": 3}


def test_mock_transport_implements_the_transport_protocol() -> None:
    assert isinstance(MockTransport(), AsyncTransport)


async def test_the_handler_sees_method_path_json_and_headers_but_never_the_token() -> None:
    transport = MockTransport()
    async with AsyncClient(BASE, TOKEN, headers={"X-Team": "growth"}, transport=transport) as c:
        [conversation] = await c.create_proactive_conversation(**FIELDS, recipient=[PHONE])
    [request] = transport.requests
    assert (request.method, request.path) == ("POST", "/api/Conversation/proactive-conversation")
    assert request.json() == {
        "channelId": 1,
        "botId": 2,
        "conversationTemplateId": 3,
        "recipient": [PHONE],
    }
    assert request.headers["X-Team"] == "growth"
    assert request.headers["Content-Type"] == "application/json"
    assert "Authorization" not in request.headers
    assert TOKEN not in repr(request)
    assert request.token == TOKEN  # for a transport that really sends
    assert conversation.recipients == [PHONE] and conversation.channel_id == 1
    assert transport.closed


async def test_retries_and_status_errors_work_unchanged_over_the_mock(
    fake_time: FakeTime,
) -> None:
    answers = [
        problem_response(503, "Service Unavailable", headers={"retry-after": "2"}),
        TransportResponse.json([{"id": 7}], status=201),
    ]
    transport = MockTransport(lambda request: answers.pop(0))
    async with AsyncClient(
        BASE, TOKEN, transport=transport, sleep=fake_time.sleep, clock=fake_time.clock
    ) as client:
        response = await client.create_proactive_conversation_with_response(
            **FIELDS, recipient=[PHONE]
        )
    assert (response.status, response.attempts, response.value[0].id) == (201, 2, 7)
    assert fake_time.sleeps == [2.0]  # Retry-After read case-insensitively


async def test_a_429_from_the_mock_is_a_rate_limit_error_with_its_retry_after() -> None:
    transport = MockTransport(
        lambda request: problem_response(429, "Too Many Requests", headers={"Retry-After": "3"})
    )
    async with AsyncClient(BASE, TOKEN, transport=transport, retry=RetryPolicy.never()) as c:
        with pytest.raises(RateLimitError) as caught:
            await c.create_proactive_conversation(**FIELDS, recipient=[PHONE])
    assert caught.value.retry_after == 3.0
    assert caught.value.problem is not None and caught.value.problem.title == "Too Many Requests"
    assert not caught.value.may_have_been_processed


async def test_an_async_handler_may_raise_a_transport_error_that_is_retried(
    fake_time: FakeTime,
) -> None:
    calls = 0

    async def handler(request: TransportRequest) -> TransportResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectError("refused (mock)")
        return answer_like_the_api(request)

    transport = MockTransport(handler)
    async with AsyncClient(
        BASE, TOKEN, transport=transport, sleep=fake_time.sleep, clock=fake_time.clock
    ) as client:
        conversations = await client.create_proactive_conversation(**FIELDS, recipient=[PHONE])
    assert len(conversations) == 1 and calls == 2


async def test_the_response_size_cap_applies_over_the_mock() -> None:
    transport = MockTransport(lambda request: TransportResponse.json([{}] * 100))
    async with AsyncClient(BASE, TOKEN, transport=transport, max_response_bytes=50) as client:
        with pytest.raises(ResponseTooLargeError):
            await client.create_proactive_conversation(**FIELDS, recipient=[PHONE])


async def test_a_handler_that_returns_no_response_is_named() -> None:
    transport = MockTransport(lambda request: None)  # type: ignore[arg-type,return-value]
    async with AsyncClient(BASE, TOKEN, transport=transport) as client:
        with pytest.raises(ClientStateError, match="return a TransportResponse"):
            await client.create_proactive_conversation(**FIELDS, recipient=[PHONE])


async def test_a_closed_client_refuses_calls_and_closes_its_transport_once() -> None:
    closes = 0

    class Counting(MockTransport):
        async def aclose(self) -> None:
            nonlocal closes
            closes += 1

    transport = Counting()
    client = AsyncClient(BASE, TOKEN, transport=transport)
    await client.aclose()
    await client.aclose()
    assert client.closed and closes == 1
    with pytest.raises(ClientStateError, match="closed"):
        await client.create_proactive_conversation(**FIELDS, recipient=[PHONE])
    assert transport.requests == []


def test_the_blocking_client_takes_a_transport_too() -> None:
    transport = MockTransport(lambda request: TransportResponse(503))
    client = Client(BASE, TOKEN, transport=transport, retry=RetryPolicy.never())
    with client, pytest.raises(ServiceUnavailableError):
        client.create_proactive_conversation(**FIELDS, recipient=[PHONE])
    assert len(transport.requests) == 1 and transport.closed


# --- the threaded simulator ------------------------------------------------------------


@pytest.fixture
def threaded() -> Iterator[ThreadedSimulator]:
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        yield sim


def test_a_blocking_client_talks_to_the_threaded_simulator(threaded: ThreadedSimulator) -> None:
    with Client(threaded.url, TOKEN) as client:
        conversations = client.create_proactive_conversation(**FIELDS, recipient=[PHONE])
    assert len(conversations) == 1
    assert threaded.audit.duplicates() == {}
    threaded.configure(SimulatorConfig(token="another"))
    assert threaded.config.token == "another"


def test_the_test_helper_is_the_package_s_threaded_simulator() -> None:
    from test_cli import ThreadedSimulator as helper

    assert helper is ThreadedSimulator


# --- a simulator blocked by the call that waits for it ---------------------------------


@pytest.fixture
def quick_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (client_module, blocking_module):
        monkeypatch.setattr(module, "PROBE_AFTER", 0.1)
        monkeypatch.setattr(module, "BLOCKED_AFTER", 0.3)


def _call_awaited(url: str) -> None:
    """What FastAPI's TestClient runs: an AsyncClient, in a thread and loop of its own."""

    async def send() -> None:
        async with AsyncClient(url, TOKEN) as client:
            await client.create_proactive_conversation(**FIELDS, recipient=[PHONE])

    asyncio.run(send())


def _call_blocking(url: str) -> None:
    """A Flask or Django view under a synchronous test client: the blocking Client, its
    call made in this thread without an event loop."""
    with Client(url, TOKEN) as client:
        client.create_proactive_conversation(**FIELDS, recipient=[PHONE])


@pytest.mark.parametrize("app", [_call_awaited, _call_blocking], ids=["async", "blocking"])
async def test_a_simulator_on_the_loop_that_blocks_for_the_call_is_a_clear_error(
    quick_probe: None, app: Callable[[str], None]
) -> None:
    """As an async fixture's simulator with a synchronous test client: the test's loop
    blocks in a synchronous call whose app waits for the simulator that loop serves; both
    clients watch the simulator's loop."""
    outcome: list[BaseException | int] = []

    def app_thread(url: str) -> None:
        try:
            app(url)
            outcome.append(200)
        except BaseException as exc:
            outcome.append(exc)

    async with Simulator(SimulatorConfig(token=TOKEN)) as sim:
        started = time.monotonic()
        thread = threading.Thread(target=app_thread, args=(sim.url,))
        thread.start()
        thread.join(20)  # blocks this loop, as a synchronous test client does
        elapsed = time.monotonic() - started
        assert sim.audit.snapshot() == {}  # never processed: the loop never ran
    [error] = outcome
    assert isinstance(error, ClientStateError), error
    assert "ThreadedSimulator" in str(error) and not error.may_have_been_processed
    assert elapsed < 5


def test_a_blocking_client_waits_for_a_slow_simulator_on_a_live_loop(quick_probe: None) -> None:
    from proactive_async.simulator import Faults

    config = SimulatorConfig(token=TOKEN, faults=Faults(latency=0.6))
    with ThreadedSimulator(config) as sim, Client(sim.url, TOKEN) as client:
        conversations = client.create_proactive_conversation(**FIELDS, recipient=[PHONE])
    assert len(conversations) == 1


async def test_a_simulator_on_a_live_loop_elsewhere_is_waited_for(quick_probe: None) -> None:
    """Slower than the probe, but its loop runs: the answer is awaited, no error."""
    from proactive_async.simulator import Faults

    config = SimulatorConfig(token=TOKEN, faults=Faults(latency=0.6))
    with ThreadedSimulator(config) as sim:
        async with AsyncClient(sim.url, TOKEN) as client:
            conversations = await client.create_proactive_conversation(**FIELDS, recipient=[PHONE])
    assert len(conversations) == 1
