"""Python ergonomics (issue 12 §5): typed request keywords, a local TypeError for a list
field given as a scalar, a Campaign repr, ``assume_utc``, and the observability callbacks.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import textwrap
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
from aioresponses import aioresponses
from conftest import FakeTime

from proactive_async import (
    ApiResponse,
    AsyncClient,
    Campaign,
    Client,
    Conversation,
    Message,
    Outcome,
    OutcomeHook,
    OutcomeStatus,
    ProactiveConversationFields,
    ProactiveConversationRequest,
    RateLimitError,
    RetryDetails,
    RetryHook,
    RetryPolicy,
    ServiceUnavailableError,
    ThrottleDetails,
    ThrottleHook,
)
from proactive_async._models import build_request, decode_conversations, decode_conversations_utc

BASE = "https://api.example.test"
URL = BASE + "/api/Conversation/proactive-conversation"
TOKEN = "tok-S3CRET-ergonomics"
TEMPLATE = ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3)
POLICY = RetryPolicy(max_attempts=5, deadline=None, backoff_initial=0.5, jitter=0.0)


def phone(index: int) -> str:
    return f"+5511{910000000 + index}"


# -- 1. typed keywords, and a list field given as a scalar -------------------------------


def test_the_fields_typeddict_names_exactly_the_request_fields_all_optional() -> None:
    struct_fields = {field.name for field in msgspec.structs.fields(ProactiveConversationRequest)}
    assert set(ProactiveConversationFields.__annotations__) == struct_fields
    assert ProactiveConversationFields.__optional_keys__ == struct_fields


@pytest.mark.parametrize(
    "method",
    [
        AsyncClient.create_proactive_conversation,
        AsyncClient.create_proactive_conversation_with_response,
        Client.create_proactive_conversation,
        Client.create_proactive_conversation_with_response,
    ],
)
def test_every_create_method_types_its_keywords_with_the_one_typeddict(method: Any) -> None:
    fields = inspect.signature(method).parameters["fields"]
    assert fields.kind is inspect.Parameter.VAR_KEYWORD
    assert fields.annotation == "Unpack[ProactiveConversationFields]"


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"recipient": "+5511999990000"}, "recipient"),
        ({"contact_ids": 7}, "contact_ids"),
        ({"account_ids": "12"}, "account_ids"),
        ({"recipient": {"+5511999990000"}}, "recipient"),
    ],
)
def test_build_request_refuses_a_list_field_that_is_not_a_list(
    fields: dict[str, Any], name: str
) -> None:
    with pytest.raises(TypeError, match=rf"^{name} must be a list of .* not "):
        build_request(TEMPLATE, fields)
    with pytest.raises(TypeError, match=rf"^{name} must be a list"):
        build_request(None, fields)


def test_build_request_checks_a_request_built_directly_too() -> None:
    bad = ProactiveConversationRequest(channel_id=1, recipient="+5511999990000")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="recipient must be a list"):
        build_request(bad, {})


def test_build_request_accepts_lists_tuples_none_and_unset() -> None:
    request = build_request(
        TEMPLATE, {"recipient": ("+5511999990000",), "contact_ids": None, "account_ids": [1]}
    )
    recipient: Any = request.recipient  # a tuple passes as it is (msgspec encodes it)
    assert recipient == ("+5511999990000",)
    assert request.contact_ids is None
    assert build_request(TEMPLATE, {}) is TEMPLATE


@pytest.fixture
async def client(fake_time: FakeTime) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(BASE, TOKEN, sleep=fake_time.sleep, clock=fake_time.clock) as c:
        yield c


async def test_a_str_recipient_is_a_local_type_error_and_nothing_is_sent(
    client: AsyncClient, mock_api: aioresponses
) -> None:
    with pytest.raises(TypeError, match="recipient must be a list"):
        await client.create_proactive_conversation(
            channel_id=1,
            recipient="+5511999990000",  # type: ignore[arg-type]
        )
    with pytest.raises(TypeError, match="contact_ids must be a list"):
        await client.create_proactive_conversation_with_response(
            TEMPLATE,
            contact_ids=7,  # type: ignore[arg-type]
        )
    assert not mock_api.requests


def test_the_sync_client_raises_the_same_type_error_before_sending(
    mock_api: aioresponses,
) -> None:
    with Client(BASE, TOKEN) as client, pytest.raises(TypeError, match="recipient must be"):
        client.create_proactive_conversation(
            TEMPLATE,
            recipient="+5511999990000",  # type: ignore[arg-type]
        )
    assert not mock_api.requests


def test_mypy_checks_the_keywords_the_hooks_and_the_client_options(tmp_path: Path) -> None:
    """A misspelt field, a str recipient, an async or ill-typed hook: type errors; hooks
    taking their details object check."""
    from mypy import api

    source = tmp_path / "use.py"
    source.write_text(
        textwrap.dedent(
            """
            from proactive_async import (
                AsyncClient, Campaign, Client, Outcome, ProactiveConversationRequest,
                RetryDetails, ThrottleDetails,
            )

            async def main(client: AsyncClient, sync: Client) -> None:
                await client.create_proactive_conversation(chanel_id=1)
                await client.create_proactive_conversation(recipient="+5511999990000")
                await client.create_proactive_conversation_with_response(bot_id="2")
                sync.create_proactive_conversation(contact_ids=7)
                sync.create_proactive_conversation_with_response(queue_id=None)
                await client.create_proactive_conversation(
                    channel_id=1, recipient=["+5511999990000"], contact_ids=None
                )
                Client(assume_utc=True)
                AsyncClient(assume_utc=True)

            async def later(outcome: Outcome) -> None: ...
            def on_retry(error: Exception) -> None: ...

            def campaign(client: AsyncClient) -> None:
                Campaign(client, template=ProactiveConversationRequest(), targets=[],
                         on_outcome=later, on_retry=on_retry,
                         on_throttle=lambda throttle: None)

            def hooks_of_0_1(client: AsyncClient) -> None:
                def on_retry(error: Exception, attempt: int, wait: float) -> None: ...
                Campaign(client, template=ProactiveConversationRequest(), targets=[],
                         on_retry=on_retry, on_throttle=lambda error, retry_after: None)

            def hooks(client: AsyncClient) -> None:
                def on_retry(retry: RetryDetails) -> None:
                    print(retry.error.kind, retry.attempt, retry.wait, retry.elapsed)
                def on_throttle(throttle: ThrottleDetails) -> None:
                    print(throttle.error.retry_after, throttle.retry_after)
                Campaign(client, template=ProactiveConversationRequest(), targets=[],
                         on_outcome=lambda outcome: None, on_retry=on_retry,
                         on_throttle=on_throttle)
            """
        )
    )
    stdout, _, _ = api.run(["--strict", "--no-error-summary", "--hide-error-context", str(source)])
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    # Each bad call of the source above (its first line is line 2), and nothing else.
    assert {int(line.split(":")[1]) for line in errors} == {8, 9, 10, 11, 12, 24, 30}, stdout
    hook_errors = [line for line in errors if ":24:" in line]
    assert len(hook_errors) == 2
    assert '"on_outcome"' in hook_errors[0] and '"on_retry"' in hook_errors[1]
    # Hooks written for 0.1 (positional arguments) are refused: each now takes one details.
    old_hooks = [line for line in errors if ":30:" in line]
    assert len(old_hooks) == 2
    assert '"on_retry"' in old_hooks[0] and '"on_throttle"' in old_hooks[1]


# -- 2. repr(Campaign) -------------------------------------------------------------------


def test_the_repr_of_a_campaign_names_its_template_ids_targets_counts_and_rate(
    tmp_path: Path,
) -> None:
    targets = tmp_path / "recipients.csv"
    targets.write_text("recipient\n+5511999990001\n+5511999990002\n")
    client = AsyncClient(BASE, TOKEN)
    campaign = Campaign(client, template=TEMPLATE, targets=targets, rate=50)
    assert repr(campaign) == (
        f"Campaign(channel_id=1, bot_id=2, conversation_template_id=3, "
        f"targets={str(targets)!r}, records=0/2, rate=50/s)"
    )
    unpaced = Campaign(
        client, template=ProactiveConversationRequest(bot_id=9), targets=iter([phone(1)])
    )
    assert "targets=<list_iterator>" in repr(unpaced)
    assert "bot_id=9" in repr(unpaced) and "channel_id" not in repr(unpaced)
    listed = Campaign(client, template=TEMPLATE, targets=[phone(1), phone(2), 5])
    assert "targets=<list of 3>, records=0/3" in repr(listed)
    assert TOKEN not in repr(campaign) + repr(unpaced) + repr(listed)


async def test_the_repr_of_a_campaign_counts_what_it_did(fake_time: FakeTime) -> None:
    script = ScriptedClient([RateLimitError("429", status=429, retry_after=1.0), answer_each])
    campaign = make_campaign(script, fake_time, [phone(1), phone(2), "bad", phone(1)])
    await campaign.run()
    text = repr(campaign)
    assert "records=4/4, sent=2, rejected=1, duplicate=1, calls=2, retries=1, throttled=1" in (text)
    assert TOKEN not in text


# -- 3. assume_utc -----------------------------------------------------------------------

NAIVE_BODY = json.dumps(
    [
        {
            "id": 1,
            "createdAt": "2024-05-01T10:00:00",
            "finishedAt": "2024-05-01T12:00:00+02:00",
            "messages": [{"createdAt": "2024-05-01T10:00:01", "to": "+1"}],
            "tags": [{"createdAt": "2024-05-01T10:00:02Z"}, {"createdAt": None}],
        }
    ]
).encode()
UTC_10H = datetime(2024, 5, 1, 10, tzinfo=UTC)


def test_without_assume_utc_a_date_without_offset_is_naive_and_one_with_is_aware() -> None:
    [conv] = decode_conversations(NAIVE_BODY)
    assert conv.created_at == datetime(2024, 5, 1, 10)
    assert conv.finished_at is not None and conv.finished_at.utcoffset() == timedelta(hours=2)


def test_decode_conversations_utc_makes_every_naive_date_utc_and_keeps_offsets() -> None:
    [conv] = decode_conversations_utc(NAIVE_BODY)
    assert conv.created_at == UTC_10H and conv.created_at.tzinfo is UTC
    assert conv.finished_at is not None and conv.finished_at.utcoffset() == timedelta(hours=2)
    assert conv.messages is not None and conv.messages[0].created_at == UTC_10H + timedelta(
        seconds=1
    )
    assert conv.messages[0].to == "+1"
    assert conv.tags is not None
    assert conv.tags[0].created_at == UTC_10H + timedelta(seconds=2)
    assert conv.tags[1].created_at is None
    assert conv.id == 1


def test_decode_conversations_utc_reads_the_tolerant_path_too() -> None:
    [conv] = decode_conversations_utc(b'[{"createdAt": "2024-05-01", "queuedAt": null}]')
    assert conv.created_at == datetime(2024, 5, 1, tzinfo=UTC)
    assert conv.queued_at is None


def test_decode_conversations_utc_returns_an_aware_conversation_unchanged() -> None:
    body = b'[{"createdAt": "2024-05-01T10:00:00Z", "messages": [{"to": "+1"}]}]'
    assert decode_conversations_utc(body) == decode_conversations(body)


async def test_the_assume_utc_option_of_async_client_applies_to_every_answer(
    fake_time: FakeTime, mock_api: aioresponses
) -> None:
    mock_api.post(URL, status=201, body=NAIVE_BODY, repeat=True)
    async with AsyncClient(BASE, TOKEN, assume_utc=True) as utc, AsyncClient(BASE, TOKEN) as plain:
        [aware] = await utc.create_proactive_conversation(TEMPLATE, recipient=["+1"])
        [naive] = await plain.create_proactive_conversation(TEMPLATE, recipient=["+1"])
    assert aware.created_at == UTC_10H
    assert naive.created_at == datetime(2024, 5, 1, 10)


def test_the_decoder_is_chosen_once_and_the_default_path_is_unchanged() -> None:
    assert AsyncClient(BASE, TOKEN)._decode is decode_conversations
    assert AsyncClient(BASE, TOKEN, assume_utc=True)._decode is decode_conversations_utc


def test_the_sync_client_forwards_assume_utc(mock_api: aioresponses) -> None:
    mock_api.post(URL, status=201, body=NAIVE_BODY)
    with Client(BASE, TOKEN, assume_utc=True) as client:
        [conv] = client.create_proactive_conversation(TEMPLATE, recipient=["+1"])
    assert conv.created_at == UTC_10H


# -- 4. callbacks ------------------------------------------------------------------------


def answer_each(body: dict[str, Any]) -> ApiResponse[list[Conversation]]:
    """A success naming every recipient of the body."""
    conversations = [
        Conversation(id=index + 1, messages=[Message(to=to)])
        for index, to in enumerate(body.get("recipient", []))
    ]
    return ApiResponse(conversations, 201, {}, 0.001, 1)


class ScriptedClient:
    """``send_once`` from a script (the last item repeats): an error, or a handler."""

    rate_limit = None
    secrets = (TOKEN,)

    def __init__(self, script: Sequence[Any]) -> None:
        self.script = list(script)
        self.calls = 0

    async def send_once(self, body: bytes, *, attempt: int = 1) -> ApiResponse[list[Conversation]]:
        self.calls += 1
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, BaseException):
            raise item
        reply: ApiResponse[list[Conversation]] = item(msgspec.json.decode(body))
        return reply


class Unpaced:
    """A RateLimitBackend that paces nothing and sets no shared pause: waits are backoffs."""

    async def acquire(self, weight: float = 1.0) -> None:
        pass

    async def on_success(self, weight: float) -> None:
        pass

    async def on_throttle(self, weight: float, retry_after: float | None) -> bool:
        return False

    async def on_busy(self, seconds: float) -> None:
        pass

    async def aclose(self) -> None:
        pass

    @property
    def rate(self) -> float | None:
        return None


def make_campaign(
    script: ScriptedClient, fake_time: FakeTime, targets: list[object], **kwargs: Any
) -> Campaign:
    kwargs.setdefault("retry", POLICY)
    return Campaign(
        cast(AsyncClient, script),
        template=TEMPLATE,
        targets=targets,
        rate_limit=Unpaced(),
        clock=fake_time.clock,
        sleep=fake_time.sleep,
        **kwargs,
    )


class Recorder:
    """Plain counters fed by the three callbacks."""

    def __init__(self) -> None:
        self.outcomes: Counter[OutcomeStatus] = Counter()
        self.retries: list[tuple[str, int, float]] = []
        self.throttles: list[tuple[str, float | None]] = []
        self.elapsed: list[float] = []

    def on_outcome(self, outcome: Outcome) -> None:
        self.outcomes[outcome.status] += 1

    def on_retry(self, retry: RetryDetails) -> None:
        self.retries.append((retry.error.kind, retry.attempt, retry.wait))
        self.elapsed.append(retry.elapsed)

    def on_throttle(self, throttle: ThrottleDetails) -> None:
        self.throttles.append((throttle.error.kind, throttle.retry_after))


def test_the_details_objects_are_frozen_and_built_by_keyword() -> None:
    """Fields can be added to them without breaking a hook, or code that builds one."""
    error = RateLimitError("429", status=429, retry_after=1.5)
    retry = RetryDetails(error=error, attempt=2, wait=1.5, elapsed=3.0)
    throttle = ThrottleDetails(error=error, retry_after=1.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        retry.wait = 0.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        throttle.retry_after = None  # type: ignore[misc]
    with pytest.raises(TypeError):
        RetryDetails(error, 2, 1.5, 3.0)  # type: ignore[call-arg]


def test_the_recorders_methods_satisfy_the_hook_protocols() -> None:
    recorder = Recorder()
    hooks: tuple[OutcomeHook, RetryHook, ThrottleHook] = (
        recorder.on_outcome,
        recorder.on_retry,
        recorder.on_throttle,
    )
    assert all(callable(hook) for hook in hooks)


async def test_callbacks_hear_every_outcome_retry_and_429_with_their_arguments(
    fake_time: FakeTime,
) -> None:
    script = ScriptedClient(
        [
            ServiceUnavailableError("503", status=503),
            RateLimitError("429", status=429, retry_after=2.0),
            RateLimitError("429", status=429),
            answer_each,
        ]
    )
    recorder = Recorder()
    campaign = make_campaign(
        script,
        fake_time,
        [phone(1), phone(2), "not a number", phone(1)],
        chunk_size=10,
        on_outcome=recorder.on_outcome,
        on_retry=recorder.on_retry,
        on_throttle=recorder.on_throttle,
    )
    summary = await campaign.run()
    assert recorder.outcomes == {
        OutcomeStatus.SENT: 2,
        OutcomeStatus.REJECTED: 1,
        OutcomeStatus.DUPLICATE: 1,
    }
    assert +summary.counts == recorder.outcomes
    assert recorder.throttles == [("RateLimitError", 2.0), ("RateLimitError", None)]
    kinds = [(kind, attempt) for kind, attempt, _ in recorder.retries]
    assert kinds == [("ServiceUnavailableError", 1), ("RateLimitError", 2), ("RateLimitError", 3)]
    assert recorder.retries[0][2] == 0.5  # the policy's first backoff
    assert recorder.retries[1][2] == 2.0  # the server's Retry-After
    # Seconds since the call's first attempt, on the injected clock: the 2 s Retry-After.
    assert recorder.elapsed[0] == 0.0 and recorder.elapsed[-1] == 2.0
    assert recorder.elapsed == sorted(recorder.elapsed)
    assert len(recorder.retries) == summary.retries == 3
    assert len(recorder.throttles) == summary.throttled == 2


async def test_a_429_that_ends_the_chunk_is_told_but_not_as_a_retry(fake_time: FakeTime) -> None:
    # A Retry-After past max_retry_after: nobody waits that long, the chunk ends failed.
    script = ScriptedClient([RateLimitError("429", status=429, retry_after=10_000.0)])
    recorder = Recorder()
    campaign = make_campaign(
        script,
        fake_time,
        [phone(1)],
        on_outcome=recorder.on_outcome,
        on_retry=recorder.on_retry,
        on_throttle=recorder.on_throttle,
    )
    await campaign.run()
    assert recorder.throttles == [("RateLimitError", 10_000.0)]
    assert recorder.retries == []
    assert recorder.outcomes == {OutcomeStatus.FAILED: 1}


async def test_callbacks_that_raise_lose_no_record_and_are_logged_sparingly(
    fake_time: FakeTime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug in the callback")

    report = tmp_path / "report.jsonl"
    script = ScriptedClient([RateLimitError("429", status=429, retry_after=1.0), answer_each])
    items: list[object] = [phone(i) for i in range(12)]
    campaign = make_campaign(
        script,
        fake_time,
        items,
        chunk_size=4,
        concurrency=1,
        report=report,
        on_outcome=broken,
        on_retry=broken,
        on_throttle=broken,
    )
    with caplog.at_level(logging.ERROR, logger="proactive_async"):
        summary = await campaign.run()
    assert summary.counts[OutcomeStatus.SENT] == 12 and summary.complete
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert sorted(line["line"] for line in lines) == list(range(1, 13))
    messages = [r.getMessage() for r in caplog.records if "callback" in r.getMessage()]
    # 12 outcome failures: logged at the 1st and the 10th; one retry, one 429: once each.
    assert sum("on_outcome callback raised (1 time" in m for m in messages) == 1
    assert sum("on_outcome callback raised (10 time" in m for m in messages) == 1
    assert sum("on_retry callback raised" in m for m in messages) == 1
    assert sum("on_throttle callback raised" in m for m in messages) == 1
    assert len(messages) == 4
    assert all(r.exc_info is not None for r in caplog.records if "callback" in r.getMessage())


def test_an_async_callback_is_refused_when_the_campaign_is_built(fake_time: FakeTime) -> None:
    async def later(outcome: Outcome) -> None:
        pass

    class AsyncCallable:
        async def __call__(self, *args: object) -> None:
            pass

    script = ScriptedClient([answer_each])
    with pytest.raises(TypeError, match="on_outcome must be a plain function"):
        make_campaign(script, fake_time, [phone(1)], on_outcome=later)
    with pytest.raises(TypeError, match="on_retry must be a plain function"):
        make_campaign(script, fake_time, [phone(1)], on_retry=AsyncCallable())


async def test_a_callable_returning_an_awaitable_is_logged_and_the_coroutine_closed(
    fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    async def later(outcome: Outcome) -> None:
        raise AssertionError("never run")

    def sneaky(outcome: Outcome) -> Any:
        return later(outcome)  # an async function behind a plain one

    campaign = make_campaign(
        ScriptedClient([answer_each]), fake_time, [phone(1)], on_outcome=sneaky
    )
    with caplog.at_level(logging.ERROR, logger="proactive_async"):
        summary = await campaign.run()  # under filterwarnings=error: no "never awaited"
    assert summary.counts[OutcomeStatus.SENT] == 1
    assert any("returned an awaitable" in r.getMessage() for r in caplog.records)


def test_no_callback_means_no_wrapper_on_the_hot_path(fake_time: FakeTime) -> None:
    campaign = make_campaign(ScriptedClient([answer_each]), fake_time, [phone(1)])
    assert campaign._outcome_hook is None
    assert campaign._sender._on_retry is None and campaign._sender._on_throttle is None
