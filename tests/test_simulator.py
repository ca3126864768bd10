"""The simulator as a real server on 127.0.0.1, driven with plain aiohttp."""

from __future__ import annotations

import asyncio
import email.utils
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest

from proactive_async.simulator import ENDPOINT_PATH, Faults, Simulator, SimulatorConfig, main

pytest_plugins = ["proactive_async.simulator.pytest_plugin"]

TOKEN = "simulator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The property names of the openapi.yaml schemas (transcribed: that file is not in the repo).
CONVERSATION_FIELDS = {
    "id",
    "active",
    "liveAgent",
    "from",
    "conversationId",
    "waterMark",
    "token",
    "createdAt",
    "finishedAt",
    "queuedAt",
    "lastConversationUpdateTime",
    "lastMessageContent",
    "contactName",
    "userId",
    "userName",
    "counterpartUserId",
    "counterpartUserName",
    "botId",
    "botName",
    "fileUrl",
    "fileName",
    "tenantId",
    "conversationSummary",
    "messages",
    "score",
    "finalScore",
    "checklistId",
    "channelId",
    "conversationIntegrationType",
    "duration",
    "highImportanceErrorDetected",
    "tags",
    "conversationEvaluationStatus",
    "conversationEvaluationStatusMessage",
    "queueId",
    "queueName",
    "conversationEndedReasonId",
    "agentType",
    "conversationType",
    "applicationStatusId",
    "overallSentiment",
    "callStatus",
    "disconnectionReason",
    "callSuccessful",
    "totalUnreadedMessagesByUser",
    "dynamicVariables",
    "dataCollection",
    "agentId",
}
MESSAGE_FIELDS = {
    "id",
    "createdAt",
    "from",
    "to",
    "content",
    "conversationId",
    "sentiment",
    "offset",
    "isNPS",
    "contentSid",
    "messageType",
    "mediaUrl",
    "mediaFileName",
    "tenantId",
    "userId",
    "contentVariables",
    "messageSid",
    "messageStatus",
    "sent",
    "delivered",
    "read",
    "errorCode",
    "errorMessage",
    "isReadByUser",
    "documentId",
}
VARIABLE_FIELDS = {"id", "name", "value", "conversationId"}
TAG_FIELDS = {"id", "name", "active", "createdAt", "tenantId"}
TRACE_ID = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00")
UTC_7 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z")
UNSPECIFIED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?")
TIMESPAN = re.compile(r"-?(\d+\.)?\d\d:\d\d:\d\d(\.\d{7})?")


class Answer(msgspec.Struct):
    status: int
    headers: dict[str, str]
    body: Any


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def post(
    session: aiohttp.ClientSession,
    sim: Simulator,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Answer:
    """POST ``body`` as JSON (or ``raw`` bytes) to the endpoint; the decoded answer."""
    kwargs: dict[str, Any] = {"headers": AUTH if headers is None else headers}
    if raw is not None:
        kwargs["data"] = raw
    else:
        kwargs["json"] = body
    async with session.post(sim.url + ENDPOINT_PATH, **kwargs) as response:
        data = await response.read()
        decoded = msgspec.json.decode(data) if data else None
        return Answer(response.status, dict(response.headers), decoded)


def one(recipient: str = "+5511999990000", **fields: Any) -> dict[str, Any]:
    return {"channelId": 1, "botId": 2, "recipient": [recipient], **fields}


def only(kind: str) -> Faults:
    """Faults with ``kind`` at probability 1."""
    probabilities: dict[str, Any] = {kind: 1.0}
    return Faults(**probabilities)


# --- auth, routing, content type -------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic c2ltdWxhdG9yLXRva2Vu", TOKEN])
async def test_bad_or_missing_token_answers_401_problem_details(
    proactive_simulator: Simulator, session: aiohttp.ClientSession, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    answer = await post(session, proactive_simulator, one(), headers=headers)
    assert answer.status == 401
    assert answer.headers["Content-Type"] == "application/problem+json; charset=utf-8"
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert answer.body["status"] == 401
    assert answer.body["title"] == "Unauthorized"
    assert answer.body["type"].startswith("https://tools.ietf.org/html/rfc9110")
    assert TRACE_ID.fullmatch(answer.body["traceId"])
    assert proactive_simulator.audit.total_processed == 0


async def test_bearer_scheme_is_case_insensitive(
    proactive_simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    answer = await post(
        session, proactive_simulator, one(), headers={"Authorization": f"bearer {TOKEN}"}
    )
    assert answer.status == 200


async def test_other_paths_404_and_other_methods_405(
    proactive_simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    async with session.post(proactive_simulator.url + "/api/Conversation", headers=AUTH) as r:
        assert r.status == 404
    async with session.get(proactive_simulator.url + ENDPOINT_PATH, headers=AUTH) as r:
        assert r.status == 405
        assert r.headers["Allow"] == "POST"


async def test_non_json_content_type_answers_415(
    proactive_simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    headers = {**AUTH, "Content-Type": "text/plain"}
    answer = await post(session, proactive_simulator, None, headers=headers, raw=b"{}")
    assert answer.status == 415
    assert answer.body["status"] == 415


# --- validation ------------------------------------------------------------------------


async def test_every_bad_field_is_named_with_its_index(
    proactive_simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    body = {
        "channelId": "1",
        "botId": 2**31,
        "liveAgent": 1,
        "recipient": ["+5511999990000", 5, "12ab", "0123456789"],
        "contactIds": [1, 2.0],
        "accountIds": [True],
        "contentVariables": [],
        "conversationIntegrationType": 19,
        "someFieldTheServerDoesNotKnow": {"ignored": True},
    }
    answer = await post(session, proactive_simulator, body)
    assert answer.status == 400
    assert answer.headers["Content-Type"] == "application/problem+json; charset=utf-8"
    assert answer.body["type"] == "https://tools.ietf.org/html/rfc9110#section-15.5.1"
    assert answer.body["title"] == "One or more validation errors occurred."
    assert answer.body["status"] == 400
    assert TRACE_ID.fullmatch(answer.body["traceId"])
    errors = answer.body["errors"]
    assert set(errors) == {
        "channelId",
        "botId",
        "liveAgent",
        "recipient[1]",
        "recipient[2]",
        "recipient[3]",
        "contactIds[1]",
        "accountIds[0]",
        "contentVariables",
        "conversationIntegrationType",
    }
    assert errors["recipient[2]"] == ["'12ab' is not a valid phone number."]
    assert all(isinstance(m, list) and m and isinstance(m[0], str) for m in errors.values())
    assert proactive_simulator.audit.total_processed == 0


@pytest.mark.parametrize(
    ("raw", "key"),
    [(b"", ""), (b"[1, 2]", "$"), (b'"text"', "$"), (b"{not json", "$"), (b"{}", "recipient")],
)
async def test_body_that_is_not_a_request_object_answers_400(
    proactive_simulator: Simulator, session: aiohttp.ClientSession, raw: bytes, key: str
) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    answer = await post(session, proactive_simulator, None, headers=headers, raw=raw)
    assert answer.status == 400
    assert list(answer.body["errors"]) == [key]


async def test_max_targets_per_call_exceeded_answers_400_naming_recipient(
    session: aiohttp.ClientSession,
) -> None:
    async with Simulator(SimulatorConfig(max_targets_per_call=2)) as sim:
        too_many = await post(session, sim, {"recipient": ["+5511999990001"], "contactIds": [1, 2]})
        enough = await post(session, sim, {"recipient": ["+5511999990001"], "contactIds": [1]})
    assert too_many.status == 400
    assert list(too_many.body["errors"]) == ["recipient"]
    assert enough.status == 200
    assert sim.audit.snapshot() == {"+5511999990001": 1, "contact:1": 1}


async def test_property_names_match_case_insensitively_and_unknown_ones_are_ignored(
    proactive_simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    body = {"Recipient": ["5511999990000"], "CHANNELID": 9, "extra": [1, 2]}
    answer = await post(session, proactive_simulator, body)
    assert answer.status == 200
    assert answer.body[0]["channelId"] == 9
    assert proactive_simulator.audit.count("5511999990000") == 1


# --- the 200 answer --------------------------------------------------------------------


async def test_one_conversation_per_target_in_request_order(
    proactive_simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    body = {
        "channelId": 11,
        "botId": 22,
        "userId": 33,
        "queueId": 44,
        "counterpartUserId": 55,
        "liveAgent": True,
        "conversationTemplateId": 3,
        "conversationIntegrationType": 5,
        "recipient": ["+5511999990002", "5511999990001"],
        "contactIds": [77],
        "contentVariables": {"name": "Ana", "order": 1234},
    }
    answer = await post(session, proactive_simulator, body)
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
    conversations = answer.body
    assert [c["messages"][0]["to"] for c in conversations] == [
        "+5511999990002",
        "5511999990001",
        "+10000000077",
    ]
    ids = [c["id"] for c in conversations]
    assert ids == sorted(set(ids))
    first = conversations[0]
    assert (first["channelId"], first["botId"], first["userId"], first["queueId"]) == (
        11,
        22,
        33,
        44,
    )
    assert first["counterpartUserId"] == 55
    assert first["conversationIntegrationType"] == 5
    assert first["liveAgent"] is True
    assert first["messages"][0]["content"] == "Hello Ana, your order 1234 is on its way."
    assert first["messages"][0]["conversationId"] == first["id"]
    assert [(v["name"], v["value"]) for v in first["dynamicVariables"]] == [
        ("name", "Ana"),
        ("order", "1234"),
    ]
    assert {v["conversationId"] for v in first["dataCollection"]} == {first["id"]}
    assert len(first["tags"]) == 1
    assert set(first["tags"][0]) == TAG_FIELDS
    assert UTC_7.fullmatch(first["tags"][0]["createdAt"])
    assert conversations[2]["contactName"] == "Contact 77"
    assert proactive_simulator.audit.snapshot() == {
        "+5511999990002": 1,
        "5511999990001": 1,
        "contact:77": 1,
    }


async def test_every_schema_field_is_present_with_dotnet_date_and_timespan_forms(
    proactive_simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    answer = await post(session, proactive_simulator, one(contentVariables={"name": "Bo"}))
    conversation = answer.body[0]
    message = conversation["messages"][0]
    variable = conversation["dynamicVariables"][0]
    assert len(CONVERSATION_FIELDS) == 48
    assert set(conversation) == CONVERSATION_FIELDS
    assert set(message) == MESSAGE_FIELDS
    assert set(variable) == VARIABLE_FIELDS
    assert conversation["tags"] == []
    assert UTC_7.fullmatch(conversation["createdAt"])
    assert UNSPECIFIED.fullmatch(conversation["lastConversationUpdateTime"])
    assert UNSPECIFIED.fullmatch(message["createdAt"])
    assert TIMESPAN.fullmatch(conversation["duration"])
    assert conversation["finishedAt"] is None
    assert conversation["queuedAt"] is None
    assert conversation["from"] == message["from"]


async def test_conversation_ids_increase_across_calls(
    proactive_simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    a = await post(session, proactive_simulator, one("+5511999990001"))
    b = await post(session, proactive_simulator, one("+5511999990002"))
    assert b.body[0]["id"] > a.body[0]["id"]


# --- rate limit ------------------------------------------------------------------------


async def test_rate_limit_fractional_retry_after_then_admitted(
    session: aiohttp.ClientSession,
) -> None:
    config = SimulatorConfig(rate_limit=20, burst=1, retry_after_style="fractional")
    async with Simulator(config) as sim:
        first = await post(session, sim, one())
        limited = await post(session, sim, one())
        await asyncio.sleep(float(limited.headers["Retry-After"]))
        later = await post(session, sim, one())
    assert (first.status, limited.status, later.status) == (200, 429, 200)
    assert 0 < float(limited.headers["Retry-After"]) <= 0.05
    assert limited.body["status"] == 429
    assert sim.audit.total_processed == 2
    assert sim.audit.faults["rate_limit"] == 1


async def test_rate_limit_seconds_retry_after_is_a_whole_number_rounded_up(
    session: aiohttp.ClientSession,
) -> None:
    async with Simulator(SimulatorConfig(rate_limit=20, burst=1)) as sim:
        await post(session, sim, one())
        limited = await post(session, sim, one())
        await asyncio.sleep(0.06)
        later = await post(session, sim, one())
    assert limited.status == 429
    assert limited.headers["Retry-After"] == "1"
    assert later.status == 200


async def test_rate_limit_http_date_retry_after_is_not_earlier_than_the_wait(
    session: aiohttp.ClientSession,
) -> None:
    config = SimulatorConfig(rate_limit=2, burst=1, retry_after_style="http-date")
    async with Simulator(config) as sim:
        await post(session, sim, one())
        before = time.time()
        limited = await post(session, sim, one())
    when = email.utils.parsedate_to_datetime(limited.headers["Retry-After"]).timestamp()
    assert limited.status == 429
    assert before + 0.4 <= when <= before + 2.0


async def test_call_larger_than_the_burst_is_admitted_when_full_and_leaves_a_debt(
    session: aiohttp.ClientSession,
) -> None:
    config = SimulatorConfig(rate_limit=20, burst=2, retry_after_style="fractional")
    async with Simulator(config) as sim:
        big = await post(session, sim, {"contactIds": [1, 2, 3, 4, 5]})
        after = await post(session, sim, one())
    assert big.status == 200
    assert after.status == 429
    # Five tokens taken from two: (1 - (-3)) / 20 = 0.2 s, less what elapsed in between.
    assert 0.15 <= float(after.headers["Retry-After"]) <= 0.2


# --- faults ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "processed"),
    [("rate_429", 429, 0), ("rate_503", 503, 0), ("rate_500", 500, 1)],
)
async def test_status_fault_at_probability_one_and_whether_it_processed(
    session: aiohttp.ClientSession, kind: str, status: int, processed: int
) -> None:
    async with Simulator(SimulatorConfig(faults=only(kind))) as sim:
        answer = await post(session, sim, one())
    assert answer.status == status
    assert answer.body["status"] == status
    assert TRACE_ID.fullmatch(answer.body["traceId"])
    if status != 500:
        assert answer.headers["Retry-After"] == "1"
    assert sim.audit.total_processed == processed
    assert sim.audit.faults[kind] == 1
    assert sim.audit.statuses[status] == 1


@pytest.mark.parametrize(("kind", "processed"), [("drop_before", 0), ("drop_after", 1)])
async def test_drop_fault_closes_the_connection_without_a_response(
    session: aiohttp.ClientSession, kind: str, processed: int
) -> None:
    async with Simulator(SimulatorConfig(faults=only(kind))) as sim:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post(session, sim, one())
    assert sim.audit.total_processed == processed
    assert sim.audit.faults[kind] == 1
    assert sim.audit.statuses == {}


async def test_truncate_fault_processes_then_cuts_the_200_body_short(
    session: aiohttp.ClientSession,
) -> None:
    config = SimulatorConfig(faults=Faults(truncate_after=1.0))
    async with (
        Simulator(config) as sim,
        session.post(sim.url + ENDPOINT_PATH, json=one(), headers=AUTH) as response,
    ):
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 0
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert sim.audit.count("+5511999990000") == 1
    assert sim.audit.faults["truncate_after"] == 1


async def test_latency_delays_the_answer(session: aiohttp.ClientSession) -> None:
    async with Simulator(SimulatorConfig(faults=Faults(latency=0.1, latency_jitter=0.02))) as sim:
        started = time.perf_counter()
        answer = await post(session, sim, one())
        elapsed = time.perf_counter() - started
    assert answer.status == 200
    assert elapsed >= 0.08


async def test_same_seed_gives_the_same_fault_sequence(session: aiohttp.ClientSession) -> None:
    faults = Faults(rate_503=0.3, rate_500=0.3, rate_429=0.2, seed=11)

    async def statuses() -> list[int]:
        async with Simulator(SimulatorConfig(faults=faults)) as sim:
            return [(await post(session, sim, one())).status for _ in range(30)]

    first, second = await statuses(), await statuses()
    assert first == second
    assert len(set(first)) >= 3  # really a mix, not one status repeated


async def test_configure_switches_faults_off_at_run_time(session: aiohttp.ClientSession) -> None:
    async with Simulator(SimulatorConfig(faults=Faults(rate_503=1.0))) as sim:
        failing = await post(session, sim, one())
        sim.configure(SimulatorConfig())
        working = await post(session, sim, one())
    assert (failing.status, working.status) == (503, 200)
    assert sim.config == SimulatorConfig()
    assert sim.audit.total_processed == 1


async def test_configure_changes_the_expected_token(
    proactive_simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    proactive_simulator.configure(SimulatorConfig(token="new"))
    old = await post(session, proactive_simulator, one())
    new = await post(session, proactive_simulator, one(), headers={"Authorization": "Bearer new"})
    assert (old.status, new.status) == (401, 200)


# --- audit, lifecycle, plugin, main ----------------------------------------------------


async def test_audit_reports_duplicates_and_resets(
    proactive_simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    audit = proactive_simulator.audit
    await post(session, proactive_simulator, one("+5511999990001"))
    await post(session, proactive_simulator, {"recipient": ["+5511999990001", "+5511999990002"]})
    assert audit.duplicates() == {"+5511999990001": 2}
    assert (audit.calls, audit.total_processed) == (2, 3)
    audit.reset()
    assert (audit.snapshot(), audit.calls, audit.total_processed) == ({}, 0, 0)


async def test_plugin_fixture_is_a_started_simulator_with_default_config(
    proactive_simulator: Simulator,
) -> None:
    assert proactive_simulator.url.startswith("http://127.0.0.1:")
    assert proactive_simulator.port > 0
    assert proactive_simulator.config == SimulatorConfig()


async def test_aclose_is_idempotent_and_url_needs_start() -> None:
    sim = Simulator()
    with pytest.raises(RuntimeError):
        _ = sim.url
    await sim.start()
    with pytest.raises(RuntimeError):
        await sim.start()
    await sim.aclose()
    await sim.aclose()


async def test_main_prints_listening_serves_and_prints_the_audit_on_sigterm(
    session: aiohttp.ClientSession,
) -> None:
    code = "import sys; from proactive_async.simulator import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PROACTIVE_TOKEN": "from-env"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, "--port", "0", env=env, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert re.fullmatch(r"listening on http://127\.0\.0\.1:\d+\n", line)
        url = line.split()[-1]
        headers = {"Authorization": "Bearer from-env"}
        async with session.post(url + ENDPOINT_PATH, json=one(), headers=headers) as response:
            assert response.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        rest = (await asyncio.wait_for(process.stdout.read(), 20)).decode()
        code_ = await process.wait()
    assert code_ == 0
    assert "calls: 1" in rest
    assert "processed: 1" in rest
    assert "duplicates: 0" in rest


def test_main_refuses_a_fault_probability_above_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--port", "0", "--fault-503", "1.5"])
    assert exit_.value.code == 2
    assert "rate_503" in capsys.readouterr().err


def test_main_returns_1_when_the_port_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["--port", str(taken.getsockname()[1])]) == 1
    assert "cannot listen" in capsys.readouterr().err
