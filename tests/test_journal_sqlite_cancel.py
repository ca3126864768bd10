"""Cancelling a campaign in its first milliseconds never leaves its SQLite journal locked."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from proactive_async import AsyncClient, Campaign, JournalError, ProactiveConversationRequest
from proactive_async.simulator import Simulator

TEMPLATE = ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3)


async def test_quick_cancel_then_resume_rounds_never_find_the_journal_in_use(
    tmp_path: Path,
) -> None:
    """40 rounds of: start, cancel within 0-3 ms (while the journal opens, while it runs,
    as it closes), then resume at once; every resume opens the journal (none is refused
    as locked). Before the fix 15 of 40 were: a connection opened, or closing, when the
    cancellation came was never closed."""
    targets = [f"+5511{910000000 + n}" for n in range(60)]
    cancelled = 0
    journal = tmp_path / "campaign.db"
    rng = random.Random(18)
    async with Simulator() as sim, AsyncClient(base_url=sim.url, token="simulator-token") as client:
        for _ in range(40):
            run = asyncio.create_task(
                Campaign(client, template=TEMPLATE, targets=targets, journal=journal).run()
            )
            await asyncio.sleep(rng.uniform(0, 0.003))
            run.cancel()
            (ended,) = await asyncio.gather(run, return_exceptions=True)
            cancelled += isinstance(ended, asyncio.CancelledError)
            try:
                await asyncio.wait_for(
                    Campaign(client, template=TEMPLATE, targets=targets, journal=journal).run(),
                    10,
                )
            except JournalError as exc:  # pragma: no cover - the failure this guards
                raise AssertionError(f"a resume was refused: {exc}") from exc
    assert cancelled >= 10  # most rounds were cancelled before they could finish
