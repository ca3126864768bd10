"""Campaign: one outcome per record against the real simulator, limits, bisection, resume."""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from _servers import custom_server
from aiohttp import web

from proactive_async import (
    ApiResponse,
    AsyncClient,
    Campaign,
    CircuitOpenError,
    Conversation,
    InputError,
    JournalMismatchError,
    Outcome,
    OutcomeStatus,
    ProactiveConversationRequest,
    RetryPolicy,
    Target,
    Timeout,
)
from proactive_async._report import LatencySample, ReportWriter
from proactive_async.journal._sqlite import SQLiteJournal as Journal
from proactive_async.simulator import Faults, Simulator, SimulatorConfig
from proactive_async.simulator._render import phone_of_contact

TEMPLATE = ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3)
# Retries without real backoff: the campaign sleeps with asyncio, so keep every wait tiny.
FAST_RETRY = RetryPolicy(max_attempts=8, deadline=None, backoff_initial=0.001, jitter=0.0)
ALL_FAULTS = Faults(
    rate_429=0.04,
    rate_503=0.04,
    rate_500=0.03,
    drop_before=0.03,
    drop_after=0.03,
    truncate_after=0.03,
    latency=0.0005,
    latency_jitter=0.0005,
    retry_after=0.005,
    seed=11,
)


def phone(index: int) -> str:
    """A valid, distinct Brazilian mobile number in E.164."""
    return f"+5511{910000000 + index}"


def mixed_input(count: int) -> list[object]:
    """Phones, contact ids, invalid numbers and repeats, in a fixed interleaving."""
    items: list[object] = []
    for i in range(count):
        if i % 97 == 13:
            items.append("12345")  # too short: rejected by the planner
        elif i % 89 == 7:
            items.append("not a phone")
        elif i % 53 == 5 and i > 60:
            items.append(phone(i - 50))  # a repeat of an earlier line
        elif i % 41 == 3:
            items.append(7_000_000 + i)  # a contact id
        else:
            items.append(phone(i))
    return items


def client_for(url: str, token: str = "simulator-token") -> AsyncClient:
    return AsyncClient(base_url=url, token=token, timeout=Timeout(read=5.0))


def audit_key(outcome: Outcome) -> str:
    if outcome.contact_id is not None:
        return f"contact:{outcome.contact_id}"
    assert outcome.recipient is not None
    return outcome.recipient


def read_report(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_one_outcome_per_line(rows: list[dict[str, Any]], count: int) -> None:
    lines = [row["line"] for row in rows]
    assert len(lines) == count
    assert sorted(lines) == list(range(1, count + 1))


class SendSpy:
    """Wraps ``client.send_once`` to keep what the server answered, by message ``to``."""

    def __init__(self, client: AsyncClient) -> None:
        self.ids_by_to: dict[str, list[int]] = {}
        self._send = client.send_once
        client.send_once = self  # type: ignore[method-assign]

    async def __call__(self, body: bytes, *, attempt: int = 1) -> ApiResponse[list[Conversation]]:
        response = await self._send(body, attempt=attempt)
        for conversation in response.value:
            for to in conversation.recipients:
                self.ids_by_to.setdefault(to, []).append(conversation.id)
        return response


def check_against_audit(
    rows: list[dict[str, Any]], sim: Simulator, spy: SendSpy | None = None
) -> dict[str, int]:
    """Every guarantee of one outcome per record that the server's audit can confirm."""
    by_line = {row["line"]: row for row in rows}
    counts = {status.value: 0 for status in OutcomeStatus}
    for row in rows:
        outcome = Outcome(
            line=row["line"],
            status=OutcomeStatus(row["status"]),
            recipient=row["recipient"],
            contact_id=row["contactId"],
        )
        counts[row["status"]] += 1
        status = outcome.status
        if status is OutcomeStatus.REJECTED:
            assert row["error"]["kind"] in {"invalid_phone", "invalid_input"}
            if outcome.recipient is not None:
                assert sim.audit.count(outcome.recipient) == 0
            continue
        processed = sim.audit.count(audit_key(outcome))
        if status is OutcomeStatus.SENT:
            assert processed == 1, row
            assert row["conversationIds"], row
            if spy is not None:
                to = outcome.recipient or phone_of_contact(outcome.contact_id or 0)
                assert row["conversationIds"] == spy.ids_by_to[to], row
        elif status is OutcomeStatus.FAILED:
            assert processed == 0, row
            assert row["error"] is not None
        elif status is OutcomeStatus.UNKNOWN:
            assert processed <= 1, row
            assert row["error"] is not None
        else:
            first = by_line[row["duplicateOf"]]
            assert first["line"] < row["line"]
            assert audit_key(outcome) == audit_key(
                Outcome(
                    line=0,
                    status=OutcomeStatus.SENT,
                    recipient=first["recipient"],
                    contact_id=first["contactId"],
                )
            )
            expected = {"sent": 1, "failed": 0}.get(first["status"])
            assert processed == expected if expected is not None else processed <= 1
    return counts


def conversations_for(body: dict[str, Any], first_id: int) -> list[dict[str, Any]]:
    targets = [*(body.get("recipient") or []), *map(phone_of_contact, body.get("contactIds") or [])]
    return [{"id": first_id + i, "messages": [{"to": to}]} for i, to in enumerate(targets)]


async def wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5.0):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


def campaign_tasks() -> list[asyncio.Task[Any]]:
    """Tasks still running code of the campaign or the planner."""
    left = []
    for task in asyncio.all_tasks():
        name = getattr(task.get_coro(), "__qualname__", "")
        if name.startswith(
            ("Campaign.", "Planner.", "_feed", "Journal.", "SQLiteJournal.", "ChunkSender.")
        ):
            left.append(task)
    return left


# -- every fault on: one outcome per record, no duplicate ----------------------------


@pytest.mark.parametrize("chunk_size", [1, 20])
async def test_every_fault_kind_gives_one_outcome_per_record_and_no_duplicate_send(
    tmp_path: Path, chunk_size: int
) -> None:
    """3000 records through every injected fault: each line once, audit-consistent, no dups."""
    items = mixed_input(3000)
    config = SimulatorConfig(faults=ALL_FAULTS, retry_after_style="fractional")
    report = tmp_path / "report.jsonl"
    async with Simulator(config) as sim, client_for(sim.url) as client:
        spy = SendSpy(client)
        campaign = Campaign(
            client,
            template=TEMPLATE,
            targets=items,
            chunk_size=chunk_size,
            concurrency=16,
            # Random 429s are not a load signal: adaptive mode would crawl (see the report).
            adaptive=False,
            retry=FAST_RETRY,
            report=report,
        )
        summary = await campaign.run()
    rows = read_report(report)
    assert_one_outcome_per_line(rows, len(items))
    counts = check_against_audit(rows, sim, spy)
    assert sim.audit.duplicates() == {}
    # Every fault kind was drawn, and each ambiguous one ended some record unknown.
    for kind in ("drop_before", "rate_429", "rate_503", "rate_500", "drop_after"):
        assert sim.audit.faults[kind] > 0, kind
    assert counts["unknown"] > 0 and counts["rejected"] > 0 and counts["duplicate"] > 0
    assert counts["sent"] > len(items) * 0.7
    assert summary.records == len(items)
    assert {str(k): v for k, v in summary.counts.items()} == counts
    assert summary.throttled == sim.audit.statuses[429]
    assert summary.retries > 0


async def test_retry_ambiguous_opt_in_is_what_causes_duplicate_sends(tmp_path: Path) -> None:
    """With retry_ambiguous=True ambiguous failures are resent: every dup had attempts > 1."""
    faults = Faults(rate_500=0.1, drop_after=0.1, truncate_after=0.1, seed=5)
    items = [phone(i) for i in range(600)]
    report = tmp_path / "report.jsonl"
    async with Simulator(SimulatorConfig(faults=faults)) as sim, client_for(sim.url) as client:
        campaign = Campaign(
            client,
            template=TEMPLATE,
            targets=items,
            chunk_size=5,
            concurrency=8,
            retry=RetryPolicy(
                max_attempts=10,
                deadline=None,
                retry_ambiguous=True,
                backoff_initial=0.001,
                jitter=0.0,
            ),
            report=report,
        )
        await campaign.run()
    rows = read_report(report)
    assert_one_outcome_per_line(rows, len(items))
    duplicates = sim.audit.duplicates()
    assert duplicates, "the opt-in should have resent some processed calls"
    by_recipient = {row["recipient"]: row for row in rows}
    for recipient in duplicates:
        assert by_recipient[recipient]["attempts"] > 1
    # Ambiguous failures were retried instead of ending unknown.
    assert sum(row["status"] == "sent" for row in rows) > len(items) * 0.95


# -- outcomes, summary, report -----------------------------------------------------------


async def test_async_for_streams_every_outcome_and_run_returns_the_summary() -> None:
    """``async for`` yields one Outcome per record; the summary counts calls, 429s, latency."""
    faults = Faults(rate_429=0.2, retry_after=0.005, seed=2)
    config = SimulatorConfig(faults=faults, retry_after_style="fractional")
    items: list[object] = [phone(i) for i in range(200)] + ["bad", phone(0)]
    async with Simulator(config) as sim, client_for(sim.url) as client:
        campaign = Campaign(
            client, template=TEMPLATE, targets=items, chunk_size=10, retry=FAST_RETRY
        )
        seen = [outcome async for outcome in campaign]
        summary = campaign.summary
    assert sorted(o.line for o in seen) == list(range(1, 203))
    assert all(isinstance(o, Outcome) for o in seen)
    assert summary.counts[OutcomeStatus.SENT] == 200
    assert summary.counts[OutcomeStatus.REJECTED] == 1
    assert summary.counts[OutcomeStatus.DUPLICATE] == 1
    assert summary.targets_sent == 200
    assert summary.calls == sim.audit.calls
    assert summary.throttled == sim.audit.statuses[429] > 0
    assert summary.retries == summary.throttled  # each 429 was retried once
    assert summary.elapsed > 0 and summary.targets_per_second > 0
    p50, p95, p99 = summary.latency_p50, summary.latency_p95, summary.latency_p99
    assert p50 is not None and p95 is not None and p99 is not None
    assert 0 < p50 <= p95 <= p99
    assert summary.complete and not summary.interrupted
    assert summary.as_dict()["counts"] == {s.value: summary.counts[s] for s in OutcomeStatus}


async def test_run_returns_a_summary_with_the_counts_per_status() -> None:
    async with Simulator() as sim, client_for(sim.url) as client:
        summary = await Campaign(
            client, template=TEMPLATE, targets=[phone(1), 42, "x"], chunk_size=2
        ).run()
    assert summary.records == 3
    assert summary.counts[OutcomeStatus.SENT] == 2
    assert summary.counts[OutcomeStatus.REJECTED] == 1
    assert summary.complete  # rejected records do not make a campaign incomplete


async def test_report_lines_carry_line_target_status_ids_attempts_error(tmp_path: Path) -> None:
    """Each JSONL line has line, recipient/contactId, status, conversationIds, attempts, error."""
    report = tmp_path / "r.jsonl"
    async with Simulator() as sim, client_for(sim.url) as client:
        spy = SendSpy(client)
        await Campaign(
            client,
            template=TEMPLATE,
            targets=[phone(1), 99, "nope", phone(1)],
            chunk_size=4,
            report=report,
        ).run()
    rows = {row["line"]: row for row in read_report(report)}
    for row in rows.values():
        assert {"line", "status", "conversationIds", "attempts", "error"} <= row.keys()
        assert "recipient" in row or "contactId" in row
    assert rows[1]["status"] == "sent" and rows[1]["recipient"] == phone(1)
    assert rows[1]["conversationIds"] == spy.ids_by_to[phone(1)]
    assert rows[1]["attempts"] == 1 and rows[1]["error"] is None
    assert rows[2]["contactId"] == 99 and rows[2]["status"] == "sent"
    assert rows[2]["conversationIds"] == spy.ids_by_to[phone_of_contact(99)]
    assert rows[3]["status"] == "rejected" and rows[3]["error"]["kind"] == "invalid_phone"
    assert rows[4]["status"] == "duplicate" and rows[4]["duplicateOf"] == 1
    assert rows[4]["conversationIds"] == []


# -- 400: bisection --------------------------------------------------------------------


async def test_a_400_for_too_many_targets_bisects_until_the_calls_fit() -> None:
    config = SimulatorConfig(max_targets_per_call=5)
    items = [phone(i) for i in range(40)]
    async with Simulator(config) as sim, client_for(sim.url) as client:
        summary = await Campaign(client, template=TEMPLATE, targets=items, chunk_size=20).run()
    assert summary.counts[OutcomeStatus.SENT] == 40
    assert sim.audit.statuses[400] == 6  # 2 chunks of 20, then 4 halves of 10
    assert sim.audit.total_processed == 40 and sim.audit.duplicates() == {}


async def test_a_400_naming_one_target_fails_only_that_record_with_the_servers_reason() -> None:
    """Bisection isolates the refused records; the others in their chunks are sent."""
    refused = {phone(7), phone(23)}
    processed: list[str] = []
    counter = iter(range(1, 10_000))

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        bad = refused & set(body.get("recipient") or [])
        if bad:
            problem = {
                "title": "One or more validation errors occurred.",
                "status": 400,
                "errors": {"recipient": ["blocked number"]},
            }
            return web.json_response(problem, status=400)
        processed.extend(body.get("recipient") or [])
        return web.json_response(conversations_for(body, next(counter) * 100))

    items = [phone(i) for i in range(30)]
    async with custom_server(handler) as url, client_for(url) as client:
        outcomes = [
            o async for o in Campaign(client, template=TEMPLATE, targets=items, chunk_size=16)
        ]
    by_line = {o.line: o for o in outcomes}
    assert len(by_line) == 30
    for line, outcome in by_line.items():
        if phone(line - 1) in refused:
            assert outcome.status is OutcomeStatus.FAILED
            assert outcome.error is not None and outcome.error.status == 400
            assert "blocked number" in outcome.error.message
        else:
            assert outcome.status is OutcomeStatus.SENT, outcome
    assert sorted(processed) == sorted(set(items) - refused)


# -- rate, cooldown, adaptive ---------------------------------------------------------------


async def test_a_configured_rate_is_held() -> None:
    """300 targets at 200/s with a bucket of 20: about 1.4 s, not a burst, not a crawl."""
    items = [phone(i) for i in range(300)]
    async with Simulator() as sim, client_for(sim.url) as client:
        started = time.monotonic()
        summary = await Campaign(
            client, template=TEMPLATE, targets=items, chunk_size=10, rate=200, burst=20
        ).run()
        elapsed = time.monotonic() - started
    assert summary.counts[OutcomeStatus.SENT] == 300
    assert 1.3 <= elapsed <= 3.0, elapsed
    assert 1.3 <= summary.elapsed <= 3.0


async def test_a_429_with_retry_after_pauses_every_dispatcher() -> None:
    """After one 429 (Retry-After 0.3 s), no dispatcher sends until the pause is over."""
    arrivals: list[float] = []
    refused_at: list[float] = []
    counter = iter(range(1, 10_000))

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        arrivals.append(time.monotonic())
        if not refused_at:
            refused_at.append(time.monotonic())
            return web.json_response(
                {"title": "slow down"}, status=429, headers={"Retry-After": "0.3"}
            )
        await asyncio.sleep(0.02)
        return web.json_response(conversations_for(body, next(counter) * 10))

    items = [phone(i) for i in range(12)]
    async with custom_server(handler) as url, client_for(url) as client:
        summary = await Campaign(
            client,
            template=TEMPLATE,
            targets=items,
            chunk_size=1,
            concurrency=4,
            flush_after=0.0,
        ).run()
    assert summary.counts[OutcomeStatus.SENT] == 12 and summary.throttled == 1
    start = refused_at[0]
    # Calls already on the wire when the 429 came may land just after it; none later.
    during_pause = [t - start for t in arrivals if start + 0.06 < t < start + 0.29]
    assert during_pause == []
    assert len(arrivals) == 13
    assert max(arrivals) >= start + 0.29


@pytest.mark.slow
async def test_adaptive_mode_finds_an_unannounced_server_limit_with_few_429s() -> None:
    """Behind a 400 targets/s server limit the client is not told: all sent, few 429s."""
    config = SimulatorConfig(rate_limit=400, burst=100, retry_after_style="fractional")
    items = [phone(i) for i in range(1600)]
    async with Simulator(config) as sim, client_for(sim.url) as client:
        summary = await Campaign(
            client,
            template=TEMPLATE,
            targets=items,
            chunk_size=10,
            concurrency=16,
            retry=RetryPolicy(max_attempts=20, deadline=None),
        ).run()
    assert summary.counts[OutcomeStatus.SENT] == len(items)
    assert sim.audit.duplicates() == {}
    ratio = summary.throttled / summary.calls
    print(  # the figures the brief asks for, shown with -s
        f"adaptive: calls={summary.calls} throttled={summary.throttled} "
        f"ratio={ratio:.3f} elapsed={summary.elapsed:.2f}s "
        f"rate={summary.targets_per_second:.0f}/s"
    )
    assert ratio < 0.15
    assert summary.targets_per_second > 200


# -- journal and resume -------------------------------------------------------------------


def write_csv(path: Path, count: int) -> Path:
    path.write_text("phone,name\n" + "".join(f"{phone(i)},N{i}\n" for i in range(count)))
    return path


async def test_resume_after_stop_sends_only_what_was_not_finished(tmp_path: Path) -> None:
    targets = write_csv(tmp_path / "in.csv", 400)
    journal, report = tmp_path / "j.db", tmp_path / "r.jsonl"
    config = SimulatorConfig(faults=Faults(latency=0.005))
    async with Simulator(config) as sim, client_for(sim.url) as client:
        first = Campaign(
            client,
            template=TEMPLATE,
            targets=targets,
            chunk_size=5,
            concurrency=4,
            journal=journal,
            report=report,
        )
        async for _ in first:
            if first.summary.records >= 60:
                first.stop()
        assert first.summary.interrupted
        done_first = first.summary.counts[OutcomeStatus.SENT]
        assert 60 <= done_first < 400
        assert sim.audit.total_processed == done_first
        second = Campaign(
            client,
            template=TEMPLATE,
            targets=targets,
            chunk_size=5,
            concurrency=4,
            journal=journal,
            report=report,
        )
        summary = await second.run()
    assert sim.audit.duplicates() == {}
    assert sim.audit.total_processed == 400
    assert summary.resumed == done_first
    assert summary.counts[OutcomeStatus.SENT] == 400
    assert not summary.interrupted
    assert_one_outcome_per_line(read_report(report), 400)


async def test_lines_in_flight_at_a_crash_end_unknown_and_are_not_resent(tmp_path: Path) -> None:
    """A journal with lines in flight (a simulated crash): resume reports them unknown."""
    items = [phone(i) for i in range(50)]
    journal = tmp_path / "j.db"
    async with Simulator() as sim, client_for(sim.url) as client:
        probe = Campaign(client, template=TEMPLATE, targets=items, journal=journal)
        async with await Journal.open(journal, probe.identity()) as raw:
            await raw.mark_in_flight([3, 4, 5])
        summary = await Campaign(client, template=TEMPLATE, targets=items, journal=journal).run()
        assert summary.counts[OutcomeStatus.UNKNOWN] == 3
        assert summary.counts[OutcomeStatus.SENT] == 47
        for line in (3, 4, 5):
            assert sim.audit.count(phone(line - 1)) == 0
        # A third run reports the same from the journal and sends nothing.
        third = Campaign(client, template=TEMPLATE, targets=items, journal=journal)
        outcomes = {o.line: o for o in [o async for o in third]}
        assert outcomes[4].status is OutcomeStatus.UNKNOWN
        assert outcomes[4].error is not None and outcomes[4].error.kind == "interrupted"
        assert third.summary.resumed == 50
        assert sim.audit.total_processed == 47


async def test_resend_unknown_resends_lines_left_in_flight(tmp_path: Path) -> None:
    items = [phone(i) for i in range(20)]
    journal = tmp_path / "j.db"
    async with Simulator() as sim, client_for(sim.url) as client:
        probe = Campaign(client, template=TEMPLATE, targets=items, journal=journal)
        async with await Journal.open(journal, probe.identity()) as raw:
            await raw.mark_in_flight([1, 2])
        summary = await Campaign(
            client, template=TEMPLATE, targets=items, journal=journal, resend_unknown=True
        ).run()
    assert summary.counts[OutcomeStatus.SENT] == 20
    assert sim.audit.count(phone(0)) == 1 and sim.audit.count(phone(1)) == 1


async def test_resume_replays_rejected_and_duplicate_outcomes_from_the_journal(
    tmp_path: Path,
) -> None:
    items: list[object] = [phone(1), "bad", phone(1), phone(2)]
    journal = tmp_path / "j.db"
    async with Simulator() as sim, client_for(sim.url) as client:
        await Campaign(client, template=TEMPLATE, targets=items, journal=journal).run()
        again = Campaign(client, template=TEMPLATE, targets=items, journal=journal)
        outcomes = {o.line: o for o in [o async for o in again]}
    assert again.summary.resumed == 4
    assert outcomes[2].status is OutcomeStatus.REJECTED
    assert outcomes[3].status is OutcomeStatus.DUPLICATE and outcomes[3].duplicate_of == 1
    assert sim.audit.total_processed == 2


async def test_a_journal_of_another_template_is_refused(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    async with Simulator() as sim, client_for(sim.url) as client:
        await Campaign(client, template=TEMPLATE, targets=[phone(1)], journal=journal).run()
        other = ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=4)
        with pytest.raises(JournalMismatchError):
            await Campaign(client, template=other, targets=[phone(1)], journal=journal).run()
        assert sim.audit.total_processed == 1


# -- cancellation and stop -------------------------------------------------------------------


async def test_cancelling_the_task_finishes_in_flight_calls_and_flushes_everything(
    tmp_path: Path,
) -> None:
    """Cancel mid-run: no new call, in-flight calls get outcomes, report/journal written."""
    items = [phone(i) for i in range(400)]
    journal, report = tmp_path / "j.db", tmp_path / "r.jsonl"
    config = SimulatorConfig(faults=Faults(latency=0.15))
    async with Simulator(config) as sim, client_for(sim.url) as client:
        campaign = Campaign(
            client,
            template=TEMPLATE,
            targets=items,
            chunk_size=5,
            concurrency=4,
            journal=journal,
            report=report,
            grace_period=5.0,
        )
        task = asyncio.create_task(campaign.run())
        await wait_until(lambda: sim.audit.calls >= 6)
        # Counted by the campaign before each send: some may not have reached the server yet.
        calls_at_cancel = campaign.summary.calls
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        wound_down = time.monotonic() - cancelled_at
        await asyncio.sleep(0.2)
        assert sim.audit.calls == calls_at_cancel  # nothing dispatched after the cancel
        assert campaign.summary.calls == calls_at_cancel
    assert wound_down < 1.0
    assert campaign.summary.interrupted
    rows = read_report(report)
    assert len(rows) == sim.audit.total_processed == calls_at_cancel * 5
    assert all(row["status"] == "sent" for row in rows)
    assert campaign_tasks() == []
    async with await Journal.open(journal, campaign.identity()) as raw:
        assert raw.counts() == {"sent": len(rows)}


async def test_calls_past_the_grace_period_end_unknown(tmp_path: Path) -> None:
    items = [phone(i) for i in range(40)]
    report = tmp_path / "r.jsonl"
    config = SimulatorConfig(faults=Faults(latency=2.0))
    async with Simulator(config) as sim, client_for(sim.url) as client:
        campaign = Campaign(
            client,
            template=TEMPLATE,
            targets=items,
            chunk_size=5,
            concurrency=2,
            report=report,
            grace_period=0.05,
        )
        task = asyncio.create_task(campaign.run())
        await wait_until(lambda: sim.audit.calls >= 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    rows = read_report(report)
    assert len(rows) == 10
    assert {row["status"] for row in rows} == {"unknown"}
    assert {row["error"]["kind"] for row in rows} == {"interrupted"}
    assert campaign_tasks() == []


async def test_stop_ends_the_run_cleanly_even_with_the_queue_full() -> None:
    """stop() with more chunks planned than workers: the run returns, nothing is lost sent."""
    items = [phone(i) for i in range(300)]
    config = SimulatorConfig(faults=Faults(latency=0.02))
    async with Simulator(config) as sim, client_for(sim.url) as client:
        campaign = Campaign(client, template=TEMPLATE, targets=items, chunk_size=2, concurrency=2)
        outcomes: list[Outcome] = []
        async with asyncio.timeout(5):
            async for outcome in campaign:
                outcomes.append(outcome)
                campaign.stop()
    assert campaign.summary.interrupted
    assert len(outcomes) == sim.audit.total_processed
    assert all(o.status is OutcomeStatus.SENT for o in outcomes)
    assert campaign_tasks() == []


async def test_stop_sends_nothing_more_even_for_chunks_waiting_on_the_rate_limiter() -> None:
    """Workers queued in the limiter when stop() comes do not send afterwards."""
    items = [phone(i) for i in range(20)]
    async with Simulator() as sim, client_for(sim.url) as client:
        campaign = Campaign(
            client,
            template=TEMPLATE,
            targets=items,
            chunk_size=1,
            concurrency=4,
            rate=10,
            burst=1,
            adaptive=False,
            flush_after=0.0,
        )
        async for _ in campaign:
            calls_at_stop = sim.audit.calls
            campaign.stop()
    assert sim.audit.calls == calls_at_stop == 1
    assert campaign.summary.records == 1


async def test_records_waiting_out_a_long_retry_after_at_cancel_stay_pending(
    tmp_path: Path,
) -> None:
    """Cancelled past the grace period between unprocessed attempts: not left in flight."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({}, status=503, headers={"Retry-After": "30"})

    journal = tmp_path / "j.db"
    async with custom_server(handler) as url, client_for(url) as client:
        campaign = Campaign(
            client,
            template=TEMPLATE,
            targets=[phone(1), phone(2)],
            chunk_size=2,
            journal=journal,
            grace_period=0.1,
        )
        task = asyncio.create_task(campaign.run())
        await wait_until(lambda: campaign.summary.calls >= 1)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert campaign.summary.pending == 2
        async with await Journal.open(journal, campaign.identity()) as raw:
            assert raw.counts().get("in_flight", 0) == 0


async def test_stop_between_ambiguous_retries_ends_the_chunk_unknown() -> None:
    """With retry_ambiguous, a stop() before the next resend ends the chunk unknown."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"title": "oops"}, status=500)

    async with custom_server(handler) as url, client_for(url) as client:
        campaign = Campaign(
            client,
            template=TEMPLATE,
            targets=[phone(1)],
            retry=RetryPolicy(retry_ambiguous=True, backoff_initial=0.2, jitter=0.0),
        )
        task = asyncio.create_task(campaign.run())
        await wait_until(lambda: campaign.summary.calls >= 1)
        campaign.stop()
        summary = await task
    assert summary.calls == 1
    assert summary.counts[OutcomeStatus.UNKNOWN] == 1 and summary.pending == 0


async def test_breaking_out_of_async_for_cancels_the_run() -> None:
    items = [phone(i) for i in range(500)]
    config = SimulatorConfig(faults=Faults(latency=0.02))
    async with Simulator(config) as sim, client_for(sim.url) as client:
        campaign = Campaign(client, template=TEMPLATE, targets=items, chunk_size=5, concurrency=2)
        iterator = campaign.__aiter__()
        first = await anext(iterator)
        await iterator.aclose()  # type: ignore[attr-defined]
        calls = sim.audit.calls
        await asyncio.sleep(0.1)
        assert sim.audit.calls == calls
    assert first.status is OutcomeStatus.SENT
    assert campaign.summary.interrupted
    assert campaign_tasks() == []


# -- inputs ---------------------------------------------------------------------------------


async def test_a_csv_path_is_read_with_its_variables(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.csv", 30)
    async with Simulator() as sim, client_for(sim.url) as client:
        campaign = Campaign(client, template=TEMPLATE, targets=path, chunk_size=7)
        assert campaign.total == 30
        summary = await campaign.run()
    assert summary.counts[OutcomeStatus.SENT] == 30
    assert sim.audit.total_processed == 30


@pytest.mark.parametrize("header", ["", "phone\n"], ids=["plain-list", "with-header"])
async def test_a_txt_list_is_counted_whole_with_or_without_a_header(
    tmp_path: Path, header: str
) -> None:
    path = tmp_path / "in.txt"
    path.write_text(header + "".join(f"{phone(i)}\n" for i in range(12)))
    async with Simulator() as sim, client_for(sim.url) as client:
        campaign = Campaign(client, template=TEMPLATE, targets=path)
        assert campaign.total == 12  # a plain list has no header line to leave out
        summary = await campaign.run()
    assert summary.counts[OutcomeStatus.SENT] == 12


async def test_a_jsonl_path_is_read(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [
        {"recipient": phone(1), "contentVariables": {"name": "Ana"}},
        {"contactId": 5},
        {"recipient": 12},
        {"recipient": phone(2)},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    async with Simulator() as sim, client_for(sim.url) as client:
        campaign = Campaign(client, template=TEMPLATE, targets=str(path), chunk_size=10)
        assert campaign.total == 4
        outcomes = {o.line: o for o in [o async for o in campaign]}
    assert [outcomes[n].status for n in (1, 2, 3, 4)] == [
        OutcomeStatus.SENT,
        OutcomeStatus.SENT,
        OutcomeStatus.REJECTED,
        OutcomeStatus.SENT,
    ]
    assert sim.audit.count("contact:5") == 1


async def test_python_iterables_of_str_int_target_and_dict_are_targets() -> None:
    items: list[object] = [
        phone(1),
        77,
        Target(recipient=phone(2), content_variables={"name": "Bo"}),
        Target(contact_id=78),
        {"recipient": phone(3)},
        {"contactId": 79, "contentVariables": {"name": "Cy"}},
    ]
    async with Simulator() as sim, client_for(sim.url) as client:
        campaign = Campaign(client, template=TEMPLATE, targets=items, chunk_size=10)
        assert campaign.total == 6
        summary = await campaign.run()
    assert summary.counts[OutcomeStatus.SENT] == 6
    for key in (phone(1), phone(2), phone(3), "contact:77", "contact:78", "contact:79"):
        assert sim.audit.count(key) == 1


async def test_an_async_iterable_is_a_target_source() -> None:
    async def source() -> AsyncIterator[object]:
        for i in range(25):
            await asyncio.sleep(0)
            yield phone(i) if i % 2 else {"recipient": phone(i)}

    async with Simulator() as sim, client_for(sim.url) as client:
        campaign = Campaign(client, template=TEMPLATE, targets=source(), chunk_size=4)
        assert campaign.total is None
        summary = await campaign.run()
    assert summary.counts[OutcomeStatus.SENT] == 25
    assert sim.audit.total_processed == 25


async def test_variables_are_merged_over_the_template_variables() -> None:
    bodies: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        bodies.append(body)
        return web.json_response(conversations_for(body, 1))

    template = ProactiveConversationRequest(
        channel_id=1, bot_id=2, content_variables={"shop": "A", "name": "?"}
    )
    async with custom_server(handler) as url, client_for(url) as client:
        await Campaign(
            client,
            template=template,
            targets=[Target(recipient=phone(1), content_variables={"name": "Ana"}), phone(2)],
        ).run()
    variables = sorted(json.dumps(b.get("contentVariables"), sort_keys=True) for b in bodies)
    assert variables == [
        json.dumps({"name": "?", "shop": "A"}, sort_keys=True),
        json.dumps({"name": "Ana", "shop": "A"}, sort_keys=True),
    ]


# -- validation and odd answers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        ProactiveConversationRequest(channel_id=1, recipient=[phone(1)]),
        ProactiveConversationRequest(channel_id=1, contact_ids=[1]),
    ],
)
def test_a_template_with_targets_is_refused(template: ProactiveConversationRequest) -> None:
    client = AsyncClient(base_url="http://127.0.0.1:1", token="t")
    with pytest.raises(ValueError, match="recipient or contact_ids"):
        Campaign(client, template=template, targets=[phone(1)])


@pytest.mark.parametrize("option", [{"chunk_size": 0}, {"concurrency": 0}])
def test_chunk_size_and_concurrency_must_be_positive(option: dict[str, int]) -> None:
    client = AsyncClient(base_url="http://127.0.0.1:1", token="t")
    with pytest.raises(ValueError, match="at least 1"):
        Campaign(client, template=TEMPLATE, targets=[phone(1)], **option)  # type: ignore[arg-type]


async def test_a_success_without_this_targets_conversation_is_unknown() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response([])

    async with custom_server(handler) as url, client_for(url) as client:
        outcomes = [o async for o in Campaign(client, template=TEMPLATE, targets=[phone(1)])]
    assert outcomes[0].status is OutcomeStatus.UNKNOWN
    assert outcomes[0].error is not None and outcomes[0].error.kind == "unmatched"


async def test_a_retry_after_past_the_cap_fails_the_chunk_without_waiting() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({}, status=429, headers={"Retry-After": "3600"})

    async with custom_server(handler) as url, client_for(url) as client:
        summary = await Campaign(
            client,
            template=TEMPLATE,
            targets=[phone(1)],
            adaptive=False,
            retry=RetryPolicy(max_retry_after=5.0),
        ).run()
    assert summary.counts[OutcomeStatus.FAILED] == 1 and summary.calls == 1


async def test_safe_failures_exhausting_the_attempts_end_failed() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({}, status=503, headers={"Retry-After": "0.001"})

    async with custom_server(handler) as url, client_for(url) as client:
        outcomes = [
            o
            async for o in Campaign(
                client, template=TEMPLATE, targets=[phone(1)], retry=RetryPolicy(max_attempts=3)
            )
        ]
    assert outcomes[0].status is OutcomeStatus.FAILED and outcomes[0].attempts == 3
    assert outcomes[0].error is not None and outcomes[0].error.status == 503


async def test_an_unexpected_error_ends_the_chunk_unknown(caplog: pytest.LogCaptureFixture) -> None:
    async with Simulator() as sim, client_for(sim.url) as client:

        async def broken(body: bytes, *, attempt: int = 1) -> Any:
            raise RuntimeError("boom")

        client.send_once = broken  # type: ignore[method-assign]
        summary = await Campaign(client, template=TEMPLATE, targets=[phone(1), phone(2)]).run()
    assert summary.counts[OutcomeStatus.UNKNOWN] == 2
    assert "unexpected error" in caplog.text


async def test_calls_per_second_limits_calls(tmp_path: Path) -> None:
    items = [phone(i) for i in range(12)]
    async with Simulator() as sim, client_for(sim.url) as client:
        summary = await Campaign(
            client,
            template=TEMPLATE,
            targets=items,
            chunk_size=1,
            calls_per_second=40,
            flush_after=0.0,
        ).run()
    assert summary.counts[OutcomeStatus.SENT] == 12
    # A bucket of 40 calls admits all 12 at once: only the count is checked here.
    assert sim.audit.calls == 12


def test_total_is_none_for_an_unreadable_path(tmp_path: Path) -> None:
    client = AsyncClient(base_url="http://127.0.0.1:1", token="t")
    with warnings.catch_warnings():
        campaign = Campaign(client, template=TEMPLATE, targets=tmp_path / "missing.csv")
    assert campaign.total is None
    assert campaign.rate is not None  # adaptive by default
    assert Campaign(client, template=TEMPLATE, targets=[], rate=5, adaptive=False).rate == 5


async def test_an_unreadable_targets_file_raises_from_run(tmp_path: Path) -> None:
    """The input error reaches the caller; the workers are stopped, nothing is sent."""
    path = tmp_path / "in.csv"
    path.write_text("name,city\nAna,Rio\n")  # no recipient column
    async with Simulator() as sim, client_for(sim.url) as client:
        with pytest.raises(InputError, match="no recipient or contactId column"):
            await Campaign(client, template=TEMPLATE, targets=path).run()
        assert campaign_tasks() == []
    assert sim.audit.calls == 0


def test_the_record_count_of_a_file_without_a_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"recipient": phone(1)}) + "\n" + json.dumps({"contactId": 2}))
    client = AsyncClient(base_url="http://127.0.0.1:1", token="t")
    assert Campaign(client, template=TEMPLATE, targets=path).total == 2


def test_the_report_writer_flushes_big_buffers_and_closes_once(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    writer = ReportWriter(path)
    for line in range(1, 3001):
        writer.write(Outcome(line=line, status=OutcomeStatus.SENT, recipient=phone(line)))
    assert writer._replace is not None  # written beside, renamed over the report at close
    assert Path(writer._replace[0]).stat().st_size > 0  # flushed on its own past 64 KiB
    assert not path.exists()
    writer.close()
    writer.close()
    assert len(path.read_text().splitlines()) == 3000
    again = ReportWriter(path, append=True)
    again.write(Outcome(line=3001, status=OutcomeStatus.FAILED))
    again.close()
    assert len(path.read_text().splitlines()) == 3001


def test_latency_percentiles_come_from_a_bounded_sample() -> None:
    sample = LatencySample(size=100, seed=1)
    assert sample.percentile(50) is None
    for value in range(1, 10_001):
        sample.add(value / 1000)
    assert len(sample._values) == 100
    p50, p99 = sample.percentile(50), sample.percentile(99)
    assert p50 is not None and p99 is not None
    assert 3.0 < p50 < 7.0 < p99 <= 10.0


# --- matching conversations back to targets ---------------------------------------------


def _conv(conversation_id: int, to: str | None) -> Any:
    from proactive_async import Conversation, Message

    messages = [Message(to=to)] if to is not None else None
    return Conversation(id=conversation_id, messages=messages)


def test_conversations_match_recipients_by_number_whatever_the_order_or_format() -> None:
    from proactive_async._matching import match_conversations
    from proactive_async._planner import PlannedTarget

    targets = [
        PlannedTarget(line=1, recipient="+5511900000001", contact_id=None, raw=None),
        PlannedTarget(line=2, recipient="+5511900000002", contact_id=None, raw=None),
    ]
    answer = [_conv(20, "whatsapp:+55 11 90000-0002"), _conv(10, "5511900000001")]
    assert match_conversations(targets, answer) == {1: [10], 2: [20]}


def test_a_contact_whose_phone_is_a_recipients_gets_its_own_conversation() -> None:
    """One conversation per recipient by number; the second to that number is the contact's."""
    from proactive_async._matching import match_conversations
    from proactive_async._planner import PlannedTarget

    targets = [
        PlannedTarget(line=1, recipient="+5511900000001", contact_id=None, raw=None),
        PlannedTarget(line=2, recipient=None, contact_id=77, raw=None),
    ]
    answer = [_conv(10, "+5511900000001"), _conv(11, "+5511900000001")]
    assert match_conversations(targets, answer) == {1: [10], 2: [11]}


def test_conversations_without_a_number_match_in_order_and_a_missing_one_matches_none() -> None:
    from proactive_async._matching import match_conversations
    from proactive_async._planner import PlannedTarget

    targets = [
        PlannedTarget(line=5, recipient=None, contact_id=1, raw=None),
        PlannedTarget(line=6, recipient=None, contact_id=2, raw=None),
        PlannedTarget(line=7, recipient="+5511900000003", contact_id=None, raw=None),
    ]
    assert match_conversations(targets[:2], [_conv(1, None), _conv(2, None)]) == {5: [1], 6: [2]}
    # Issue 18: with the recipient not found by number, one of the two may be its: no proof.
    assert match_conversations(targets, [_conv(1, None), _conv(2, None)]) == {}


# --- injected time ------------------------------------------------------------------------


async def test_waits_run_on_the_injected_clock_a_long_retry_after_and_a_backoff() -> None:
    """A 429 with Retry-After: 30 pauses everyone 30 s and a 503 without one backs off: on
    the injected sleep, so the test takes no real time; both records end sent once."""
    from conftest import FakeTime

    fake = FakeTime()
    answers = iter([(429, {"Retry-After": "30"}), (503, {}), (200, {}), (200, {})])
    calls: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        calls.append(body)
        status, headers = next(answers)
        if status != 200:
            return web.json_response({"title": "busy"}, status=status, headers=headers)
        return web.json_response(conversations_for(body, first_id=len(calls)))

    started = time.monotonic()
    async with custom_server(handler) as url, client_for(url) as client:
        summary = await Campaign(
            client,
            template=TEMPLATE,
            targets=[phone(1), phone(2)],
            chunk_size=2,
            concurrency=1,
            adaptive=False,
            clock=fake.clock,
            sleep=fake.sleep,
        ).run()
    assert time.monotonic() - started < 5
    assert summary.counts[OutcomeStatus.SENT] == 2
    assert summary.throttled == 1 and summary.calls == 3
    assert 30.0 in fake.sleeps  # the shared cooldown honoured Retry-After
    assert any(0 < s < 30 for s in fake.sleeps)  # the 503's backoff


# --- hardening (issue 7) ----------------------------------------------------------------------


def test_a_conversation_naming_another_number_is_never_a_recipients() -> None:
    """Leftovers go to contacts only; a recipient needs a conversation naming its number."""
    from proactive_async._matching import match_conversations
    from proactive_async._planner import PlannedTarget

    targets = [
        PlannedTarget(line=1, recipient="+5511900000001"),
        PlannedTarget(line=2, recipient="+5511900000002"),
        PlannedTarget(line=3, contact_id=9),
    ]
    answer = [_conv(10, "+5511900000001"), _conv(11, "+4915100000000"), _conv(12, None)]
    assert match_conversations(targets, answer) == {1: [10]}  # 2 left over for 1 contact
    # A recipient and no contact: nobody takes another number's conversation, or one with none.
    assert match_conversations(targets[1:2], answer[1:]) == {}


def test_a_to_in_national_form_matches_the_one_recipient_it_fits() -> None:
    from proactive_async._matching import match_conversations
    from proactive_async._planner import PlannedTarget

    targets = [
        PlannedTarget(line=1, recipient="+5511900000001"),
        PlannedTarget(line=2, recipient="+5521900000002"),
    ]
    answer = [_conv(10, "(21) 90000-0002"), _conv(11, "011 90000-0001")]
    assert match_conversations(targets, answer) == {1: [11], 2: [10]}


async def test_an_answer_for_other_numbers_leaves_the_recipients_unknown_not_sent() -> None:
    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        others = [
            {"id": 500 + i, "messages": [{"to": "+4915100000000"}]}
            for i, _ in enumerate(body["recipient"])
        ]
        return web.json_response(others)

    async with custom_server(handler) as url, client_for(url) as client:
        outcomes = [
            o
            async for o in Campaign(
                client, template=TEMPLATE, chunk_size=3, targets=[phone(1), phone(2), phone(3)]
            )
        ]
    assert {o.status for o in outcomes} == {OutcomeStatus.UNKNOWN}
    assert all(o.conversation_ids == [500, 501, 502] for o in outcomes)  # kept (issue 18)
    assert {o.error.kind for o in outcomes if o.error} == {"unmatched"}


@pytest.mark.parametrize("retry_after", ["99999999999", "121"])
async def test_a_retry_after_past_the_cap_pauses_nobody(retry_after: str) -> None:
    """That chunk ends failed with its wait in the error; the campaign goes straight on."""
    from conftest import FakeTime

    fake = FakeTime()
    calls: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        calls.append(body)
        if len(calls) == 1:
            return web.json_response(
                {"title": "slow down"}, status=429, headers={"Retry-After": retry_after}
            )
        return web.json_response(conversations_for(body, first_id=len(calls)))

    async with custom_server(handler) as url, client_for(url) as client:
        outcomes = [
            o
            async for o in Campaign(
                client,
                template=TEMPLATE,
                targets=[phone(i) for i in range(4)],
                chunk_size=1,
                concurrency=1,
                adaptive=False,
                clock=fake.clock,
                sleep=fake.sleep,
            )
        ]
    by_status = {o.line: o.status for o in outcomes}
    assert by_status == {
        1: OutcomeStatus.FAILED,
        2: OutcomeStatus.SENT,
        3: OutcomeStatus.SENT,
        4: OutcomeStatus.SENT,
    }
    failed = next(o for o in outcomes if o.line == 1)
    assert failed.error is not None and failed.error.status == 429
    assert f"Retry-After {float(retry_after):g}s" in failed.error.message
    assert all(s < 1 for s in fake.sleeps), fake.sleeps
    assert len(calls) == 4


@pytest.mark.parametrize("value", ["-5", "-0.25", "nan"])
async def test_an_invalid_retry_after_means_backoff_never_retry_now(value: str) -> None:
    from conftest import FakeTime

    fake = FakeTime()
    answers = iter([429, 200])

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if next(answers) == 429:
            return web.json_response({}, status=429, headers={"Retry-After": value})
        return web.json_response(conversations_for(body, first_id=1))

    async with custom_server(handler) as url, client_for(url) as client:
        summary = await Campaign(
            client,
            template=TEMPLATE,
            targets=[phone(1)],
            adaptive=False,
            clock=fake.clock,
            sleep=fake.sleep,
        ).run()
    assert summary.counts[OutcomeStatus.SENT] == 1
    assert fake.sleeps and min(fake.sleeps) > 0


async def test_nothing_but_429s_ends_in_bounded_time_with_every_record_failed() -> None:
    from conftest import FakeTime

    fake = FakeTime()
    calls = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        await request.read()
        return web.json_response({}, status=429, headers={"Retry-After": "1"})

    count = 2000
    outcomes: list[Outcome] = []
    async with custom_server(handler) as url, client_for(url) as client:
        campaign = Campaign(
            client,
            template=TEMPLATE,
            targets=[phone(i) for i in range(count)],
            chunk_size=10,
            concurrency=4,
            adaptive=False,
            clock=fake.clock,
            sleep=fake.sleep,
        )
        with pytest.raises(CircuitOpenError) as raised:  # ends like a fatal answer
            async for outcome in campaign:
                outcomes.append(outcome)
    assert raised.value.reason == "throttled" and campaign.aborted is raised.value
    assert sorted(o.line for o in outcomes) == list(range(1, count + 1))
    assert {o.status for o in outcomes} == {OutcomeStatus.FAILED}
    assert {o.error.kind for o in outcomes if o.error} == {"aborted"}  # all resumable
    assert sum(fake.sleeps) <= 130  # max_retry_after (120 s) of 429s, then the stop
    assert calls < 1000  # not 100 attempts for each of the 200 chunks


async def test_a_401_stops_the_campaign_at_once_and_a_resume_sends_every_record(
    tmp_path: Path,
) -> None:
    """Issue 7.6: a wrong token makes a handful of calls, not one per chunk; nothing is lost
    and, with a journal, a later run with the right token sends every record."""
    from proactive_async import AuthenticationError

    count = 500
    journal = tmp_path / "j.db"
    report = tmp_path / "r.jsonl"
    targets = [phone(i) for i in range(count)]
    async with Simulator(SimulatorConfig(token="right-token-123")) as sim:
        async with client_for(sim.url, token="wrong-token-456") as client:
            campaign = Campaign(
                client,
                template=TEMPLATE,
                targets=targets,
                chunk_size=5,
                concurrency=4,
                journal=journal,
                report=report,
            )
            with pytest.raises(AuthenticationError):
                await campaign.run()
        rows = read_report(report)
        assert_one_outcome_per_line(rows, count)
        assert {row["status"] for row in rows} == {"failed"}
        kinds = [row["error"]["kind"] for row in rows]
        assert set(kinds) == {"AuthenticationError", "aborted"}
        assert kinds.count("AuthenticationError") <= 4 * 5  # the calls already in flight
        assert campaign.summary.calls <= 4
        assert campaign.summary.aborted is not None and "401" in campaign.summary.aborted
        assert sim.audit.total_processed == 0

        async with client_for(sim.url, token="right-token-123") as client:
            summary = await Campaign(
                client,
                template=TEMPLATE,
                targets=targets,
                chunk_size=5,
                concurrency=4,
                journal=journal,
                report=report,
            ).run()
        assert summary.counts[OutcomeStatus.SENT] == count
        assert sim.audit.total_processed == count and sim.audit.duplicates() == {}


async def test_a_library_campaign_that_met_a_401_has_it_in_its_top_errors() -> None:
    """The summary counts record errors itself: no hook is needed for ``top_errors()``."""
    from proactive_async import AuthenticationError

    targets = [phone(i) for i in range(40)]
    simulator = Simulator(SimulatorConfig(token="right-token-123"))
    async with simulator as sim, client_for(sim.url, token="wrong-token-456") as client:
        campaign = Campaign(client, template=TEMPLATE, targets=targets, chunk_size=5, concurrency=2)
        with pytest.raises(AuthenticationError):
            await campaign.run()
    top = campaign.summary.top_errors()
    (unauthorized,) = [error for error in top if error.http_status == 401]
    assert unauthorized.kind == "AuthenticationError" and unauthorized.status == "failed"
    assert unauthorized.records > 0
    assert {error.kind for error in top} == {"AuthenticationError", "aborted"}
    assert sum(error.records for error in top) == len(targets)


async def test_a_certificate_that_does_not_verify_stops_the_campaign(tls_ca: Any) -> None:
    from proactive_async import TLSError

    async with Simulator(SimulatorConfig(), ssl_context=tls_ca.server_context) as sim:
        async with client_for(sim.url) as client:
            campaign = Campaign(
                client,
                template=TEMPLATE,
                concurrency=2,
                chunk_size=2,
                targets=[phone(i) for i in range(40)],
            )
            with pytest.raises(TLSError):
                await campaign.run()
        assert sim.audit.total_processed == 0
    assert campaign.summary.calls <= 2
    assert campaign.summary.counts[OutcomeStatus.FAILED] == 40


async def test_a_303_answer_leaves_its_records_unknown() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=303, headers={"Location": "/elsewhere"})

    async with custom_server(handler) as url, client_for(url) as client:
        outcomes = [o async for o in Campaign(client, template=TEMPLATE, targets=[phone(1)])]
    assert outcomes[0].status is OutcomeStatus.UNKNOWN


async def test_an_echoed_token_never_reaches_the_report(tmp_path: Path) -> None:
    token = "echo-me-if-you-can-0123456789"

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.json_response(
            {"title": "Bad", "detail": f"header was {request.headers['Authorization']}"},
            status=422,
        )

    report = tmp_path / "r.jsonl"
    async with custom_server(handler) as url, client_for(url, token=token) as client:
        await Campaign(client, template=TEMPLATE, targets=[phone(1)], report=report).run()
    text = report.read_text()
    assert "[redacted]" in text and token not in text


@pytest.mark.parametrize("case", ["input", "journal", "wal", "shm", "symlink", "hardlink"])
def test_a_report_path_that_would_destroy_the_input_or_journal_is_refused(
    tmp_path: Path, case: str
) -> None:
    import os

    targets = tmp_path / "t.csv"
    targets.write_text("phone\n+5511910000001\n")
    journal = tmp_path / "j.db"
    report = {
        "input": targets,
        "journal": journal,
        "wal": tmp_path / "j.db-wal",
        "shm": tmp_path / "j.db-shm",
        "symlink": tmp_path / "link.jsonl",
        "hardlink": tmp_path / "hard.jsonl",
    }[case]
    if case == "symlink":
        os.symlink(targets, report)
    if case == "hardlink":
        os.link(targets, report)
    client = client_for("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="report path"):
        Campaign(client, template=TEMPLATE, targets=targets, journal=journal, report=report)
    assert targets.read_text() == "phone\n+5511910000001\n"
