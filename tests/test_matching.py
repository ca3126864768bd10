"""Which targets a successful answer proves ``sent`` (issue 18 §3), for every mix of
recipients and contacts: recipients by their number, contacts by count and order only when
the whole answer adds up; the rest ``unknown`` with the reason and the unclaimed ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _servers import custom_server
from aiohttp import web

from proactive_async import (
    AsyncClient,
    Campaign,
    Conversation,
    Message,
    OutcomeStatus,
    ProactiveConversationRequest,
    RetryPolicy,
)
from proactive_async._matching import match_answer
from proactive_async._planner import PlannedTarget

TEMPLATE = ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3)


def conv(conversation_id: int, to: str | None = None) -> Conversation:
    return Conversation(id=conversation_id, messages=[Message(to=to)] if to else None)


def recipient(line: int) -> PlannedTarget:
    return PlannedTarget(line=line, recipient=f"+55119000000{line:02d}")


def contact(line: int) -> PlannedTarget:
    return PlannedTarget(line=line, contact_id=1000 + line)


# -- the rule, unit by unit -----------------------------------------------------------------


def test_contacts_are_matched_in_order_when_there_are_as_many_conversations() -> None:
    match = match_answer([contact(1), contact(2), contact(3)], [conv(7), conv(8), conv(9)])
    assert match.sent == {1: [7], 2: [8], 3: [9]}
    assert match.unclaimed == [] and match.reasons == {}


def test_one_conversation_for_fifty_contacts_proves_none_of_them() -> None:
    targets = [contact(line) for line in range(1, 51)]
    match = match_answer(targets, [conv(77)])
    assert match.sent == {}
    assert match.unclaimed == [77]
    assert set(match.reasons) == set(range(1, 51))
    assert "1 conversation for 50 targets (50 contacts)" in match.reasons[1]
    assert "only when the counts agree" in match.reasons[1]


def test_more_conversations_than_contacts_prove_none_of_them() -> None:
    match = match_answer([contact(1), contact(2)], [conv(7), conv(8), conv(9)])
    assert match.sent == {} and match.unclaimed == [7, 8, 9]


def test_a_mixed_call_matches_recipients_by_number_then_contacts_in_order() -> None:
    targets = [contact(1), recipient(2), contact(3), recipient(4)]
    answer = [
        conv(40, recipient(4).recipient),
        conv(10),
        conv(20, recipient(2).recipient),
        conv(30),
    ]
    assert match_answer(targets, answer).sent == {4: [40], 2: [20], 1: [10], 3: [30]}


def test_a_mixed_call_with_a_recipient_not_found_proves_no_contact() -> None:
    """The counts agree, but the recipient's conversation may be one of the numberless ones."""
    targets = [recipient(1), contact(2)]
    match = match_answer(targets, [conv(10), conv(11)])
    assert match.sent == {}
    assert match.unclaimed == [10, 11]
    assert "none of them was matched to this number" in match.reasons[1]
    assert "not all of the call's recipients were found by number" in match.reasons[2]


def test_an_extra_conversation_in_a_mixed_call_proves_no_contact_but_the_recipients() -> None:
    targets = [recipient(1), contact(2)]
    answer = [conv(10, recipient(1).recipient), conv(11), conv(12)]
    match = match_answer(targets, answer)
    assert match.sent == {1: [10]}
    assert match.unclaimed == [11, 12]
    assert "3 conversations for 2 targets (1 contact)" in match.reasons[2]


def test_a_duplicate_in_the_answer_proves_its_number_once_and_no_other() -> None:
    targets = [recipient(1), recipient(2)]
    answer = [conv(10, recipient(1).recipient), conv(11, recipient(1).recipient)]
    match = match_answer(targets, answer)
    assert match.sent == {1: [10]}
    assert match.unclaimed == [11]
    assert set(match.reasons) == {2}


def test_a_number_given_twice_needs_two_conversations_naming_it() -> None:
    twice = [recipient(1), PlannedTarget(line=2, recipient=recipient(1).recipient)]
    one = [conv(10, recipient(1).recipient)]
    assert match_answer(twice, one).sent == {1: [10]}
    two = [*one, conv(11, recipient(1).recipient)]
    assert match_answer(twice, two).sent == {1: [10], 2: [11]}


def test_an_empty_answer_proves_nothing_and_says_so() -> None:
    match = match_answer([recipient(1), contact(2)], [])
    assert match.sent == {} and match.unclaimed == []
    assert match.reasons == {
        1: "the call succeeded, but its answer held no conversation",
        2: "the call succeeded, but its answer held no conversation",
    }


# -- through the public API, against a mock that answers one conversation ---------------------


async def test_a_schema_mock_answering_one_conversation_for_50_contacts_sends_none(
    tmp_path: Path,
) -> None:
    """Each of the 50 ends unknown (may have been sent), carrying the one id and the reason:
    in the JSONL report and in the summary's top errors."""
    calls: list[dict[str, Any]] = []

    async def one_example(request: web.Request) -> web.Response:
        calls.append(await request.json())
        return web.json_response([{"id": 4242, "messages": [{"to": "+15550000000"}]}])

    report = tmp_path / "report.jsonl"
    async with custom_server(one_example) as url, AsyncClient(url, "token-123456") as client:
        summary = await Campaign(
            client,
            template=TEMPLATE,
            targets=list(range(1, 51)),  # contact ids
            chunk_size=50,
            report=report,
        ).run()
    assert len(calls) == 1 and len(calls[0]["contactIds"]) == 50
    assert summary.counts[OutcomeStatus.SENT] == 0
    assert summary.counts[OutcomeStatus.UNKNOWN] == 50
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert [row["line"] for row in rows] == list(range(1, 51))
    for row in rows:
        assert row["status"] == "unknown" and row["conversationIds"] == [4242]
        assert row["error"]["kind"] == "unmatched"
        assert "1 conversation for 50 targets (50 contacts)" in row["error"]["message"]
    [top] = summary.top_errors()
    assert top.records == 50 and "only when the counts agree" in top.message


async def test_contacts_answered_one_conversation_each_are_sent_in_order() -> None:
    async def each(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response([{"id": 9000 + cid} for cid in body["contactIds"]])

    async with custom_server(each) as url, AsyncClient(url, "token-123456") as client:
        outcomes = [
            o
            async for o in Campaign(
                client, template=TEMPLATE, targets=[5, 6, 7], chunk_size=3, flush_after=0
            )
        ]
    assert {o.contact_id: o.conversation_ids for o in outcomes} == {
        5: [9005],
        6: [9006],
        7: [9007],
    }
    assert {o.status for o in outcomes} == {OutcomeStatus.SENT}


# -- the server's traceId on every failed or unknown record ------------------------------------


async def test_failed_and_unknown_records_carry_the_servers_trace_id_in_both_reports(
    tmp_path: Path,
) -> None:
    async def problems(request: web.Request) -> web.Response:
        body = await request.json()
        status = 400 if body["recipient"] == ["+5511900000001"] else 500
        problem = {
            "title": "One or more validation errors occurred." if status == 400 else "Boom",
            "status": status,
            "errors": {"Recipient[0]": ["The number is not on WhatsApp."]},
            "traceId": f"00-trace-{status}-00",
        }
        return web.json_response(problem, status=status)

    targets = ["+5511900000001", "+5511900000002"]
    rows: dict[str, list[Any]] = {}
    for suffix in ("jsonl", "csv"):
        report = tmp_path / f"report.{suffix}"
        async with custom_server(problems) as url, AsyncClient(url, "token-123456") as client:
            await Campaign(
                client,
                template=TEMPLATE,
                targets=targets,
                chunk_size=1,
                retry=RetryPolicy.never(),
                report=report,
            ).run()
        rows[suffix] = report.read_text().splitlines()
    failed, unknown = (json.loads(line) for line in rows["jsonl"])
    assert failed["status"] == "failed" and failed["error"]["traceId"] == "00-trace-400-00"
    assert "Recipient[0]: The number is not on WhatsApp." in failed["error"]["message"]
    assert unknown["status"] == "unknown" and unknown["error"]["traceId"] == "00-trace-500-00"
    header, *csv_rows = rows["csv"]
    assert header.endswith(",duplicate_of,trace_id")
    assert csv_rows[0].endswith(",00-trace-400-00") and csv_rows[1].endswith(",00-trace-500-00")


async def test_a_record_without_a_trace_id_keeps_its_report_line_unchanged(tmp_path: Path) -> None:
    """``traceId`` is omitted when there is none: older readers and journals see nothing new."""

    async def plain(request: web.Request) -> web.Response:
        return web.Response(status=400, text="no problem details here")

    report = tmp_path / "report.jsonl"
    async with custom_server(plain) as url, AsyncClient(url, "token-123456") as client:
        await Campaign(client, template=TEMPLATE, targets=["+5511900000001"], report=report).run()
    [row] = [json.loads(line) for line in report.read_text().splitlines()]
    assert row["status"] == "failed" and "traceId" not in row["error"]
