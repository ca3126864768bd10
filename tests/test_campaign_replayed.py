"""A resume tells its hooks which outcomes are replayed from the journal: ``on_replayed``
gets those, ``on_outcome`` this run's, however ``async for`` interleaves them."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from proactive_async import AsyncClient, Campaign, ProactiveConversationRequest
from proactive_async import _campaign as campaign_module
from proactive_async._records import Outcome, OutcomeError, OutcomeStatus
from proactive_async._report_html import RunRecorder
from proactive_async.journal._sqlite import SQLiteJournal
from proactive_async.simulator import Simulator

TEMPLATE = ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3)
EARLIER: OutcomeError = OutcomeError(kind="ServerError", message="an earlier run's failure")


def phone(index: int) -> str:
    return f"+5511{910000000 + index}"


async def test_replayed_outcomes_go_to_on_replayed_and_new_ones_to_on_outcome_when_interleaved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier run left every even line failed in the journal; the resume replays them
    while its senders settle the odd lines, all through an ``async for`` that takes one
    outcome at a time (a queue of one), so replays and new outcomes wait on it together
    and come out interleaved. Each hook gets exactly its own; the HTML report's recorder
    puts only this run's sends on its timeline, and every replayed failure on its list."""
    monkeypatch.setattr(campaign_module, "_SINK_SIZE", 1)
    items = [phone(index) for index in range(80)]
    journal = tmp_path / "j.db"
    earlier = {line for line in range(1, 81) if line % 2 == 0}
    new: list[int] = []
    replayed: list[int] = []
    recorder = RunRecorder()

    def on_outcome(outcome: Outcome) -> None:
        new.append(outcome.line)
        recorder.on_outcome(outcome)

    def on_replayed(outcome: Outcome) -> None:
        replayed.append(outcome.line)
        recorder.on_replayed(outcome)

    async with Simulator() as sim, AsyncClient(sim.url, "simulator-token") as client:
        campaign = Campaign(
            client,
            template=TEMPLATE,
            targets=items,
            journal=journal,
            chunk_size=1,
            concurrency=4,
            on_outcome=on_outcome,
            on_replayed=on_replayed,
        )
        async with await SQLiteJournal.open(journal, campaign.identity()) as raw:
            await raw.mark_in_flight(sorted(earlier))
            await raw.record(
                [
                    Outcome(line=line, status=OutcomeStatus.FAILED, error=EARLIER)
                    for line in sorted(earlier)
                ]
            )
        order: list[int] = []
        async for outcome in campaign:
            order.append(outcome.line)
            for _ in range(3):
                await asyncio.sleep(0)  # a consumer that lets everyone else run
    assert sorted(order) == list(range(1, 81))
    kinds = ["replayed" if line in earlier else "new" for line in order]
    assert sum(a != b for a, b in itertools.pairwise(kinds)) >= 4, "not interleaved"
    assert sorted(replayed) == sorted(earlier)
    assert sorted(new) == sorted(set(range(1, 81)) - earlier)
    assert campaign.summary.resumed == 40
    rows = recorder.timeline.rows()
    assert sum(row.sent for row in rows) == 40 and sum(row.failed for row in rows) == 0
    assert [o.line for o in recorder.attention.records()] == sorted(earlier)


async def test_without_on_replayed_on_outcome_still_gets_every_outcome(tmp_path: Path) -> None:
    """The hook of earlier versions keeps its meaning: replayed outcomes too."""
    items = [phone(index) for index in range(6)]
    journal = tmp_path / "j.db"
    seen: list[Outcome] = []
    async with Simulator() as sim, AsyncClient(sim.url, "simulator-token") as client:
        await Campaign(client, template=TEMPLATE, targets=items[:3], journal=journal).run()
        resumed = Campaign(
            client, template=TEMPLATE, targets=items[:3], journal=journal, on_outcome=seen.append
        )
        await resumed.run()
    assert sorted(o.line for o in seen) == [1, 2, 3] and resumed.summary.resumed == 3
