"""AsyncClient with HTTP faked by aioresponses: lifecycle, configuration, calls, errors,
and where the token and phone numbers must never show."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import platform
import re
import traceback
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from conftest import FakeTime
from yarl import URL as YURL

import proactive_async
from proactive_async import (
    ApiResponse,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    ClientStateError,
    ConflictError,
    ConnectError,
    ConnectionLostError,
    ConnectTimeout,
    DecodingError,
    HTTPStatusError,
    NotFoundError,
    PermissionDeniedError,
    ProactiveConversationRequest,
    ProactiveError,
    ProblemDetails,
    RateLimitError,
    ReadTimeout,
    RedirectError,
    ResponseTooLargeError,
    RetryPolicy,
    ServerError,
    ServiceUnavailableError,
    UnprocessableEntityError,
    mask_phone,
)
from proactive_async._errors import status_error_class
from proactive_async.testing import MockTransport, TransportResponse

BASE = "http://api.test"
URL = BASE + "/api/Conversation/proactive-conversation"
TOKEN = "tok-S3CRET-9f8e7d6c5b4a"
OK_BODY = b'[{"id": 1, "messages": [{"to": "+5511999990000"}]}]'
PHONE = "+5511999990000"


@pytest.fixture
async def client(fake_time: FakeTime, mock_api: aioresponses) -> AsyncIterator[AsyncClient]:
    """A client over aioresponses' mock (``mock_api``): the aiohttp transport."""
    async with AsyncClient(
        BASE, TOKEN, sleep=fake_time.sleep, clock=fake_time.clock, retry=RetryPolicy.never()
    ) as c:
        yield c


@pytest.fixture
async def mocked(fake_time: FakeTime, mock_transport: MockTransport) -> AsyncIterator[AsyncClient]:
    """As ``client``, over a MockTransport (the seam users get) instead of aioresponses."""
    async with AsyncClient(
        BASE,
        TOKEN,
        sleep=fake_time.sleep,
        clock=fake_time.clock,
        retry=RetryPolicy.never(),
        transport=mock_transport,
    ) as c:
        yield c


def sent(mocked: aioresponses) -> list[Any]:
    """The RequestCall of every POST made, in order."""
    return list(mocked.requests.get(("POST", YURL(URL)), []))


# --- lifecycle ------------------------------------------------------------------------


def test_constructing_outside_an_event_loop_creates_no_session(no_proactive_env: None) -> None:
    client = AsyncClient(BASE, TOKEN)
    assert client._transport._loop is None
    assert client.closed is False


async def test_the_session_is_created_on_the_first_call(mock_api: aioresponses) -> None:
    mock_api.post(URL, body=OK_BODY)
    async with AsyncClient(BASE, TOKEN) as client:
        assert client._transport._session is None
        await client.create_proactive_conversation(channel_id=1)
        assert client._transport._session is not None


async def test_async_with_closes_the_client(mock_api: aioresponses) -> None:
    mock_api.post(URL, body=OK_BODY)
    async with AsyncClient(BASE, TOKEN) as client:
        await client.create_proactive_conversation(channel_id=1)
        session = client._transport._session
    assert client.closed
    assert session is not None and session.closed


async def test_aclose_is_idempotent(mock_api: aioresponses) -> None:
    mock_api.post(URL, body=OK_BODY)
    client = AsyncClient(BASE, TOKEN)
    await client.create_proactive_conversation(channel_id=1)
    await client.aclose()
    await client.aclose()
    assert client.closed


async def test_aclose_of_a_never_used_client_is_fine() -> None:
    client = AsyncClient(BASE, TOKEN)
    await client.aclose()
    assert client.closed


async def test_a_closed_client_refuses_calls_and_reentry(mock_api: aioresponses) -> None:
    client = AsyncClient(BASE, TOKEN)
    await client.aclose()
    with pytest.raises(ClientStateError, match="closed"):
        await client.create_proactive_conversation(channel_id=1)
    with pytest.raises(ClientStateError, match="closed"):
        async with client:
            pass
    assert sent(mock_api) == []


def test_a_client_used_from_a_second_event_loop_raises_client_state_error(
    mock_api: aioresponses,
) -> None:
    mock_api.post(URL, body=OK_BODY, repeat=True)
    client = AsyncClient(BASE, TOKEN)
    with asyncio.Runner() as first, asyncio.Runner() as second:
        first.run(client.create_proactive_conversation(channel_id=1))
        with pytest.raises(ClientStateError, match="event loop") as info:
            second.run(client.create_proactive_conversation(channel_id=1))
        assert "Event loop is closed" not in str(info.value)
        first.run(client.aclose())
    assert len(sent(mock_api)) == 1


def test_a_client_closed_by_asyncio_run_is_refused_in_the_next_run(
    mock_api: aioresponses,
) -> None:
    mock_api.post(URL, body=OK_BODY, repeat=True)
    client = AsyncClient(BASE, TOKEN)

    async def use() -> None:
        async with client:
            await client.create_proactive_conversation(channel_id=1)

    asyncio.run(use())
    with pytest.raises(ClientStateError, match="closed"):
        asyncio.run(use())


# --- configuration --------------------------------------------------------------------


async def test_base_url_and_token_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, mock_api: aioresponses
) -> None:
    monkeypatch.setenv("PROACTIVE_BASE_URL", BASE + "/")
    monkeypatch.setenv("PROACTIVE_TOKEN", "env-token")
    mock_api.post(URL, body=OK_BODY)
    async with AsyncClient() as client:
        assert client.base_url == BASE
        await client.create_proactive_conversation(channel_id=1)
    [call] = sent(mock_api)
    assert call.kwargs["headers"]["Authorization"] == "Bearer env-token"


@pytest.mark.parametrize("pasted", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN}"])
async def test_a_token_pasted_with_its_bearer_prefix_is_sent_once_prefixed(
    mock_api: aioresponses, pasted: str
) -> None:
    """No bearer token holds a space (RFC 6750), so a leading ``Bearer `` can only be the
    scheme: taken off, never ``Bearer Bearer ...`` (which a real server answers 401)."""
    mock_api.post(URL, body=OK_BODY)
    async with AsyncClient(BASE, pasted) as client:
        await client.create_proactive_conversation(channel_id=1)
        assert client.secrets == (TOKEN,)
    [call] = sent(mock_api)
    assert call.kwargs["headers"]["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    "pasted", [f"Authorization: Bearer {TOKEN}", f"{TOKEN} {TOKEN}", f"Bearer Bearer {TOKEN}"]
)
def test_a_token_with_a_space_left_in_it_is_refused_naming_the_cause(pasted: str) -> None:
    with pytest.raises(ClientStateError, match="the token holds a space") as info:
        AsyncClient(BASE, pasted)
    assert TOKEN not in str(info.value)


def test_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROACTIVE_BASE_URL", "http://env.test")
    client = AsyncClient("http://arg.test", "t")
    assert client.base_url == "http://arg.test"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((None, TOKEN), "PROACTIVE_BASE_URL"),
        ((BASE, None), "PROACTIVE_TOKEN"),
        (("api.test", TOKEN), "http:// or https://"),
        (("ftp://api.test", TOKEN), "http:// or https://"),
    ],
)
def test_missing_or_bad_configuration_is_a_client_state_error(
    no_proactive_env: None, args: tuple[str | None, str | None], match: str
) -> None:
    with pytest.raises(ClientStateError, match=match) as info:
        AsyncClient(*args)
    assert TOKEN not in str(info.value)


async def test_requests_carry_bearer_token_user_agent_json_and_extra_headers(
    mock_api: aioresponses,
) -> None:
    mock_api.post(URL, body=OK_BODY)
    extra = {"X-Tenant": "42", "Authorization": "Basic not-this"}
    async with AsyncClient(BASE, TOKEN, headers=extra) as client:
        await client.create_proactive_conversation(channel_id=1)
    [call] = sent(mock_api)
    headers = call.kwargs["headers"]
    assert headers["Authorization"] == f"Bearer {TOKEN}"  # extra headers cannot replace it
    assert headers["X-Tenant"] == "42"
    assert headers["Content-Type"] == "application/json"
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"] == (
        f"proactive-async/{proactive_async.__version__} Python/{platform.python_version()}"
    )
    assert call.kwargs["allow_redirects"] is False


def test_the_user_agent_names_the_sdk_and_python_versions() -> None:
    agent = AsyncClient(BASE, TOKEN)._transport._config.headers["User-Agent"]
    assert re.fullmatch(r"proactive-async/\S+ Python/\d+\.\d+\.\d+\S*", agent)
    assert proactive_async.__version__ == importlib.metadata.version("proactive-async")


# --- calls ----------------------------------------------------------------------------


async def test_keyword_fields_are_sent_as_camel_case_json(
    mocked: AsyncClient, mock_transport: MockTransport
) -> None:
    conversations = await mocked.create_proactive_conversation(
        channel_id=1,
        bot_id=2,
        conversation_template_id=3,
        recipient=[PHONE],
        content_variables={"name": "Ana"},
    )
    assert conversations[0].id == 1
    assert conversations[0].recipients == [PHONE]
    [call] = mock_transport.requests
    assert call.path == "/api/Conversation/proactive-conversation"
    assert call.json() == {
        "channelId": 1,
        "botId": 2,
        "conversationTemplateId": 3,
        "recipient": [PHONE],
        "contentVariables": {"name": "Ana"},
    }


async def test_a_request_object_is_sent_as_is(
    mocked: AsyncClient, mock_transport: MockTransport
) -> None:
    request = ProactiveConversationRequest(channel_id=5, contact_ids=[7, 8])
    await mocked.create_proactive_conversation(request)
    [call] = mock_transport.requests
    assert call.json() == {"channelId": 5, "contactIds": [7, 8]}


async def test_keyword_fields_override_the_request_object(
    mocked: AsyncClient, mock_transport: MockTransport
) -> None:
    request = ProactiveConversationRequest(channel_id=5, bot_id=6)
    await mocked.create_proactive_conversation(request, bot_id=9, queue_id=0)
    [call] = mock_transport.requests
    assert call.json() == {"channelId": 5, "botId": 9, "queueId": 0}


async def test_an_unknown_keyword_field_is_a_type_error_before_any_request(
    mocked: AsyncClient, mock_transport: MockTransport
) -> None:
    with pytest.raises(TypeError):
        await mocked.create_proactive_conversation(channelId=1)
    assert mock_transport.requests == []


async def test_with_response_gives_status_headers_elapsed_and_attempts(
    mocked: AsyncClient, mock_transport: MockTransport
) -> None:
    mock_transport.handler = lambda request: TransportResponse(
        201, {"x-request-id": "r-1"}, OK_BODY
    )
    response = await mocked.create_proactive_conversation_with_response(channel_id=1)
    assert isinstance(response, ApiResponse)
    assert response.status == 201
    assert response.headers["X-Request-Id"] == "r-1"
    assert response.elapsed >= 0.0
    assert response.attempts == 1
    assert [c.id for c in response.value] == [1]


async def test_send_once_posts_an_encoded_body_without_retry(
    mocked: AsyncClient, mock_transport: MockTransport
) -> None:
    mock_transport.handler = lambda request: TransportResponse(503)
    with pytest.raises(ServiceUnavailableError) as info:
        await mocked.send_once(b'{"channelId": 1}', attempt=4)
    assert info.value.attempts == 4
    assert [call.body for call in mock_transport.requests] == [b'{"channelId": 1}']


async def test_debug_logging_names_the_call_and_its_status(
    client: AsyncClient, mock_api: aioresponses, caplog: pytest.LogCaptureFixture
) -> None:
    mock_api.post(URL, body=OK_BODY)
    with caplog.at_level(logging.DEBUG, logger="proactive_async"):
        await client.create_proactive_conversation(channel_id=1)
    assert any(
        "POST /api/Conversation/proactive-conversation -> 200" in r.getMessage()
        for r in caplog.records
    )


async def test_a_body_past_the_size_cap_is_refused(mock_api: aioresponses) -> None:
    mock_api.post(URL, body=b"[" + b"{}," * 100 + b"{}]")
    async with AsyncClient(BASE, TOKEN, max_response_bytes=50) as client:
        with pytest.raises(ResponseTooLargeError) as info:
            await client.create_proactive_conversation(channel_id=1)
    assert info.value.may_have_been_processed is True
    assert info.value.attempts == 1


# --- status errors --------------------------------------------------------------------

PROBLEM = {
    "type": "https://tools.ietf.org/html/rfc9110#section-15.5.1",
    "title": "One or more validation errors occurred.",
    "status": 400,
    "detail": "see errors",
    "traceId": "00-abc-def-00",
    "errors": {"Recipient[0]": ["The number is invalid."], "BotId": "required"},
    "extra": 1,
}


@pytest.mark.parametrize(
    ("status", "error", "processed"),
    [
        (400, BadRequestError, False),
        (401, AuthenticationError, False),
        (403, PermissionDeniedError, False),
        (404, NotFoundError, False),
        (409, ConflictError, False),
        (422, UnprocessableEntityError, False),
        (429, RateLimitError, False),
        (418, HTTPStatusError, False),
        (307, RedirectError, False),
        (500, ServerError, True),
        (502, ServerError, True),
        (504, ServerError, True),
        (503, ServiceUnavailableError, False),
    ],
)
async def test_each_status_has_its_error_with_status_headers_body_and_problem(
    client: AsyncClient,
    mock_api: aioresponses,
    status: int,
    error: type[HTTPStatusError],
    processed: bool,
) -> None:
    body = json.dumps(PROBLEM).encode()
    mock_api.post(URL, status=status, body=body, headers={"X-Trace": "t"})
    with pytest.raises(error) as info:
        await client.create_proactive_conversation(channel_id=1)
    exc = info.value
    assert type(exc) is error
    assert exc.status == status
    assert exc.headers["X-Trace"] == "t"
    assert exc.body == body
    assert exc.may_have_been_processed is processed
    assert exc.attempts == 1
    assert exc.problem is not None
    assert exc.problem.title == PROBLEM["title"]
    assert exc.problem.detail == "see errors"
    assert exc.problem.trace_id == "00-abc-def-00"
    assert exc.problem.status == 400
    assert exc.problem.errors == {"Recipient[0]": ["The number is invalid."], "BotId": ["required"]}
    assert exc.problem.extensions == {"extra": 1}
    assert str(exc).startswith(f"HTTP {status} from POST /api/Conversation/proactive-conversation")
    assert "Recipient[0]: The number is invalid." in str(exc)
    assert exc.kind == error.__name__


@pytest.mark.parametrize(
    ("body", "in_message"),
    [
        (b"<html><body>Bad   Gateway</body></html>", "<html><body>Bad Gateway</body></html>"),
        (b'{"message": "no problem shape"}', '{"message": "no problem shape"}'),
        (b"[1, 2]", "[1, 2]"),
    ],
)
async def test_a_body_that_is_not_problem_details_is_quoted_in_the_message(
    client: AsyncClient, mock_api: aioresponses, body: bytes, in_message: str
) -> None:
    mock_api.post(URL, status=502, body=body)
    with pytest.raises(ServerError) as info:
        await client.create_proactive_conversation(channel_id=1)
    assert info.value.problem is None
    assert in_message in str(info.value)


async def test_an_empty_error_body_gives_a_bare_message(
    client: AsyncClient, mock_api: aioresponses
) -> None:
    mock_api.post(URL, status=404, body=b"")
    with pytest.raises(NotFoundError) as info:
        await client.create_proactive_conversation(channel_id=1)
    assert str(info.value) == "HTTP 404 from POST /api/Conversation/proactive-conversation"
    assert info.value.problem is None


async def test_a_429_carries_its_retry_after(client: AsyncClient, mock_api: aioresponses) -> None:
    mock_api.post(URL, status=429, headers={"Retry-After": "12"})
    with pytest.raises(RateLimitError) as info:
        await client.create_proactive_conversation(channel_id=1)
    assert info.value.retry_after == 12.0
    assert "(Retry-After 12s)" in str(info.value)


async def test_a_429_without_retry_after_has_none(
    client: AsyncClient, mock_api: aioresponses
) -> None:
    mock_api.post(URL, status=429)
    with pytest.raises(RateLimitError) as info:
        await client.create_proactive_conversation(channel_id=1)
    assert info.value.retry_after is None


async def test_an_undecodable_2xx_is_a_decoding_error_with_its_status(
    client: AsyncClient, mock_api: aioresponses
) -> None:
    mock_api.post(URL, status=201, body=b"<html>")
    with pytest.raises(DecodingError) as info:
        await client.create_proactive_conversation(channel_id=1)
    assert info.value.status == 201
    assert info.value.attempts == 1
    assert info.value.body == b"<html>"
    assert info.value.may_have_been_processed is True


def test_status_error_class_falls_back_by_range() -> None:
    assert status_error_class(418) is HTTPStatusError
    assert status_error_class(302) is RedirectError
    assert status_error_class(501) is ServerError
    assert status_error_class(599) is ServerError
    assert status_error_class(503) is ServiceUnavailableError


def test_problem_details_tolerates_odd_shapes() -> None:
    problem = ProblemDetails({"title": 5, "status": True, "errors": [{"no": "message"}, None]})
    assert problem.title is None and problem.status is None and problem.errors == {}
    assert problem.summary() == ""
    assert repr(problem) == "ProblemDetails(status=None, title=None, errors={})"


@pytest.mark.parametrize(
    ("body", "errors", "in_message"),
    [
        # ASP.NET Core's map of field -> reasons.
        (
            {"title": "One or more validation errors occurred.", "errors": {"$.botId": ["x"]}},
            {"$.botId": ["x"]},
            "One or more validation errors occurred. | $.botId: x",
        ),
        # A list of reasons naming their field.
        (
            {"title": "Invalid", "errors": [{"field": "channelId", "message": "too big"}]},
            {"channelId": ["too big"]},
            "Invalid | channelId: too big",
        ),
        # A list of bare reasons.
        (
            {"title": "Invalid", "errors": ["channelId is required"]},
            {"": ["channelId is required"]},
            "Invalid | channelId is required",
        ),
        # A schema mock (Prism) puts them under "validation", each with its location.
        (
            {
                "type": "https://stoplight.io/prism/errors#UNPROCESSABLE_ENTITY",
                "title": "Invalid request",
                "status": 422,
                "detail": "Your request is not valid.",
                "validation": [
                    {
                        "location": ["body", "channelId"],
                        "severity": "Error",
                        "code": "format",
                        "message": 'must match format "int32"',
                    }
                ],
            },
            {"body.channelId": ['must match format "int32"']},
            "Invalid request | Your request is not valid. | "
            'body.channelId: must match format "int32"',
        ),
    ],
)
@pytest.mark.parametrize("status", [400, 422])
async def test_field_level_reasons_of_a_400_or_422_are_in_the_message(
    client: AsyncClient,
    mock_api: aioresponses,
    status: int,
    body: dict[str, Any],
    errors: dict[str, list[str]],
    in_message: str,
) -> None:
    """Not only in ``exc.problem``: the message (and so the report and the log) has them."""
    mock_api.post(URL, status=status, body=json.dumps({**body, "traceId": "00-t-00"}).encode())
    with pytest.raises(HTTPStatusError) as info:
        await client.create_proactive_conversation(channel_id=1)
    assert info.value.problem is not None and info.value.problem.errors == errors
    assert in_message in info.value.message and in_message in str(info.value)
    assert info.value.trace_id == "00-t-00"


def test_an_error_without_problem_details_has_no_trace_id() -> None:
    assert ReadTimeout("slow").trace_id is None
    assert ServerError("HTTP 500", status=500).trace_id is None


# --- may_have_been_processed for every error a send can raise -----------------------


def _connector_error() -> aiohttp.ClientConnectorError:
    from types import SimpleNamespace

    # A stand-in ConnectionKey: the error reads only host, port and ssl from it.
    key: Any = SimpleNamespace(host="api.test", port=80, ssl=True)
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused"))


@pytest.mark.parametrize(
    ("failure", "error", "processed"),
    [
        ({"exception": _connector_error()}, ConnectError, False),
        ({"exception": aiohttp.ConnectionTimeoutError()}, ConnectTimeout, False),
        ({"status": 429}, RateLimitError, False),
        ({"status": 503}, ServiceUnavailableError, False),
        ({"status": 400}, BadRequestError, False),
        ({"status": 500}, ServerError, True),
        ({"status": 502}, ServerError, True),
        ({"status": 504}, ServerError, True),
        ({"exception": aiohttp.SocketTimeoutError()}, ReadTimeout, True),
        ({"exception": TimeoutError()}, ReadTimeout, True),
        ({"exception": aiohttp.ServerDisconnectedError()}, ConnectionLostError, True),
        ({"exception": aiohttp.ClientOSError(104, "reset")}, ConnectionLostError, True),
        ({"exception": ConnectionResetError(104, "reset")}, ConnectionLostError, True),
        ({"body": b"nope"}, DecodingError, True),
    ],
)
async def test_may_have_been_processed_for_each_failure(
    client: AsyncClient,
    mock_api: aioresponses,
    failure: dict[str, Any],
    error: type[ProactiveError],
    processed: bool,
) -> None:
    mock_api.post(URL, **failure)
    with pytest.raises(error) as info:
        await client.create_proactive_conversation(channel_id=1)
    assert type(info.value) is error
    assert info.value.may_have_been_processed is processed


async def test_an_invalid_url_is_a_client_state_error(mock_api: aioresponses) -> None:
    mock_api.post(URL, exception=aiohttp.InvalidURL("http://bad url"))
    async with AsyncClient(BASE, TOKEN) as client:
        with pytest.raises(ClientStateError, match="invalid URL"):
            await client.create_proactive_conversation(channel_id=1)


# --- secrets and personal data --------------------------------------------------------


def _all_text(exc: BaseException) -> str:
    """Everything an exception can show: str, repr, args, and the formatted chain."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        parts += [str(node), repr(node), repr(node.args), repr(vars(node))]
        # Suppressed contexts too: an error reporter may walk them.
        todo += [node.__cause__, node.__context__]
    return "\n".join(parts)


def _request_info() -> aiohttp.RequestInfo:
    from multidict import CIMultiDict, CIMultiDictProxy

    headers = CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {TOKEN}"}))
    return aiohttp.RequestInfo(YURL(URL), "POST", headers, YURL(URL))


SECRET_FAILURES = [
    {"status": 401, "body": b'{"title": "Unauthorized", "detail": "bad token"}'},
    {"status": 500, "body": b"boom"},
    {"status": 429, "headers": {"Retry-After": "1"}},
    {"body": b"not json"},
    {"exception": _connector_error()},
    {"exception": aiohttp.SocketTimeoutError()},
    {"exception": aiohttp.ServerDisconnectedError()},
    {"exception": aiohttp.ClientResponseError(_request_info(), (), status=400, message="x")},
    {"exception": aiohttp.ClientPayloadError("truncated")},
]


@pytest.mark.parametrize("failure", SECRET_FAILURES)
async def test_the_token_never_shows_in_errors_or_logs(
    mock_api: aioresponses,
    fake_time: FakeTime,
    caplog: pytest.LogCaptureFixture,
    failure: dict[str, Any],
) -> None:
    mock_api.post(URL, **failure)
    mock_api.post(URL, **failure)
    policy = RetryPolicy(max_attempts=2, retry_ambiguous=True)
    with caplog.at_level(logging.DEBUG):
        async with AsyncClient(
            BASE, TOKEN, retry=policy, sleep=fake_time.sleep, clock=fake_time.clock
        ) as client:
            assert TOKEN not in repr(client)
            assert TOKEN not in repr(client._transport._config)
            with pytest.raises(ProactiveError) as info:
                await client.create_proactive_conversation(channel_id=1, recipient=[PHONE])
    assert TOKEN not in _all_text(info.value)
    assert caplog.records, "the test must see log lines to mean anything"
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert TOKEN not in caplog.text


async def test_the_token_never_shows_in_success_logs(
    mock_api: aioresponses, caplog: pytest.LogCaptureFixture
) -> None:
    mock_api.post(URL, body=OK_BODY)
    with caplog.at_level(logging.DEBUG):
        async with AsyncClient(BASE, TOKEN) as client:
            await client.create_proactive_conversation(channel_id=1)
    assert caplog.records
    assert TOKEN not in caplog.text


def test_the_token_is_not_in_the_repr_of_a_client(no_proactive_env: None) -> None:
    client = AsyncClient(BASE, TOKEN)
    assert repr(client) == f"AsyncClient(base_url={BASE!r})"


PHONE_PROBLEM = {
    "title": "Invalid recipients",
    "errors": {"recipient": [f"{PHONE} is not a WhatsApp number", "+1 (415) 555-0100 too"]},
}


async def test_phone_numbers_are_masked_in_error_messages_by_default(
    client: AsyncClient, mock_api: aioresponses
) -> None:
    mock_api.post(URL, status=400, body=json.dumps(PHONE_PROBLEM).encode())
    with pytest.raises(BadRequestError) as info:
        await client.create_proactive_conversation(recipient=[PHONE])
    message = str(info.value)
    assert PHONE not in message and "5511999990000" not in message
    assert "555-0100" not in message
    assert mask_phone(PHONE) in message
    assert info.value.problem is not None  # the raw data stays available to the caller
    assert PHONE in info.value.problem.errors["recipient"][0]


async def test_phone_numbers_in_a_plain_body_are_masked_too(
    client: AsyncClient, mock_api: aioresponses
) -> None:
    mock_api.post(URL, status=500, body=f"failed sending to {PHONE}".encode())
    with pytest.raises(ServerError) as info:
        await client.create_proactive_conversation(recipient=[PHONE])
    assert PHONE not in _all_text(info.value).replace(repr(info.value.body), "")


async def test_masking_can_be_turned_off(mock_api: aioresponses) -> None:
    mock_api.post(URL, status=400, body=json.dumps(PHONE_PROBLEM).encode())
    async with AsyncClient(BASE, TOKEN, mask_phone_numbers=False) as client:
        with pytest.raises(BadRequestError) as info:
            await client.create_proactive_conversation(recipient=[PHONE])
    assert PHONE in str(info.value)


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+5511999990000", "+551********00"),
        ("5511999990000", "551********00"),
        ("+1 (415) 555-0100", "+141******00"),
        ("12345", "*****"),
    ],
)
def test_mask_phone_keeps_only_the_ends(number: str, masked: str) -> None:
    assert mask_phone(number) == masked


# --- with_options, a call's timeout, status_code, traceId (issue 20 §3) -------------------


async def test_with_options_shares_the_pool_rate_limit_and_token_with_other_defaults(
    fake_time: FakeTime,
) -> None:
    answers: list[TransportResponse] = []
    transport = MockTransport(lambda request: answers.pop(0))
    limit = proactive_async.RateLimit(1000)
    client = AsyncClient(
        BASE, TOKEN, transport=transport, rate_limit=limit, sleep=fake_time.sleep,
        clock=fake_time.clock,
    )  # fmt: skip
    async with client:
        once = client.with_options(max_attempts=1)
        assert (once.retry.max_attempts, client.retry.max_attempts) == (1, 5)
        assert once.rate_limit is limit and once.secrets == client.secrets == (TOKEN,)
        answers[:] = [TransportResponse(503)]
        with pytest.raises(ServiceUnavailableError) as info:
            await once.create_proactive_conversation(channel_id=1, recipient=[PHONE])
        assert info.value.attempts == 1
        answers[:] = [TransportResponse(503), TransportResponse.json([])]
        response = await client.create_proactive_conversation_with_response(channel_id=1)
        assert response.attempts == 2  # the parent keeps its own policy
        assert len(transport.requests) == 3  # every call through the one transport
        assert repr(once) == repr(client) and TOKEN not in repr(once)


async def test_closing_a_client_made_by_with_options_closes_no_pool(
    mock_api: aioresponses,
) -> None:
    mock_api.post(URL, status=200, body=OK_BODY, repeat=True)
    client = AsyncClient(BASE, TOKEN)
    async with client.with_options(timeout=5.0) as derived:
        await derived.create_proactive_conversation(channel_id=1, recipient=[PHONE])
    assert derived.closed and not client.closed
    with pytest.raises(ClientStateError, match="closed"):
        await derived.create_proactive_conversation(channel_id=1, recipient=[PHONE])
    await client.create_proactive_conversation(channel_id=1, recipient=[PHONE])  # pool open
    sibling = client.with_options(max_attempts=2)
    await client.aclose()
    assert sibling.closed  # the pool it shares is gone
    with pytest.raises(ClientStateError):
        await sibling.create_proactive_conversation(channel_id=1, recipient=[PHONE])
    with pytest.raises(ClientStateError):
        client.with_options(timeout=1.0)


async def test_with_options_validates_as_the_policy_does_and_keeps_the_rest() -> None:
    client = AsyncClient(BASE, TOKEN, retry=RetryPolicy(max_attempts=3, retry_ambiguous=True))
    with pytest.raises(ValueError, match="max_attempts"):
        client.with_options(max_attempts=0)
    derived = client.with_options(max_attempts=7).with_options(timeout=2.0)
    assert derived.retry == RetryPolicy(max_attempts=7, retry_ambiguous=True)
    policy = RetryPolicy.never()
    assert client.with_options(retry=policy).retry is policy
    await client.aclose()


async def test_a_calls_timeout_cuts_each_attempt_as_may_have_been_processed() -> None:
    async def slow(request: Any) -> TransportResponse:
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    transport = MockTransport(slow)
    async with AsyncClient(BASE, TOKEN, transport=transport) as client:
        with pytest.raises(ReadTimeout, match=r"in 0\.05 s \(the call's timeout\)") as info:
            await client.create_proactive_conversation(channel_id=1, timeout=0.05)
        assert info.value.may_have_been_processed and info.value.attempts == 1  # not retried
        quick = client.with_options(timeout=0.05)
        with pytest.raises(ReadTimeout):
            await quick.create_proactive_conversation_with_response(channel_id=1)
        with pytest.raises(ReadTimeout):
            await quick.send_once(b"{}")  # a campaign's attempts are bounded too
        transport.handler = lambda request: TransportResponse.json([])
        assert await quick.create_proactive_conversation(channel_id=1, timeout=0.5) == []
    assert len(transport.requests) == 4


@pytest.mark.parametrize(
    ("seconds", "error", "match"),
    [
        (0, ValueError, "positive"),
        (-1.0, ValueError, "positive"),
        (float("nan"), ValueError, "positive"),
        (float("inf"), ValueError, "positive"),
        ("5", TypeError, "number of seconds"),
        (True, TypeError, "number of seconds"),
        (61.0, ValueError, r"Timeout\(total=60\)"),
    ],
)
async def test_a_timeout_that_cannot_be_kept_is_refused_before_anything_is_sent(
    mock_api: aioresponses, seconds: Any, error: type[Exception], match: str
) -> None:
    """Per call and in with_options; a call's timeout never lengthens the pool's total."""
    async with AsyncClient(BASE, TOKEN) as client:
        with pytest.raises(error, match=match):
            await client.create_proactive_conversation(channel_id=1, timeout=seconds)
        with pytest.raises(error, match=match):
            client.with_options(timeout=seconds)
    assert not mock_api.requests


async def test_status_code_is_the_status_and_status_its_alias(
    client: AsyncClient, mock_api: aioresponses
) -> None:
    mock_api.post(URL, status=404, body=b"")
    with pytest.raises(NotFoundError) as info:
        await client.create_proactive_conversation(channel_id=1)
    assert info.value.status_code == info.value.status == 404
    exc = ServerError("HTTP 500", status=500)
    exc.status = 502
    assert exc.status_code == 502
    decoding = DecodingError("not JSON", status=201)
    assert decoding.status_code == decoding.status == 201


async def test_str_of_an_error_names_the_servers_trace_id_and_the_message_stays_as_it_was(
    client: AsyncClient, mock_api: aioresponses
) -> None:
    problem = {"title": "Bad Request", "status": 400, "traceId": "00-4bf92f3577b3-01"}
    mock_api.post(URL, status=400, body=json.dumps(problem).encode())
    with pytest.raises(BadRequestError) as info:
        await client.create_proactive_conversation(channel_id=1)
    assert str(info.value) == info.value.message + " (traceId=00-4bf92f3577b3-01)"
    assert "traceId" not in info.value.message  # the report keeps it apart (trace_id)
    assert str(ServerError("HTTP 500", status=500)) == "HTTP 500"
