"""The fence before a retry, against a real PostgreSQL: a read that writes nothing (no row
version per retry under 429 pressure), which still stops a retry once the campaign is
cancelled or the lease taken over."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from proactive_async import AsyncClient, CampaignOptions, ProactiveConversationRequest
from proactive_async.distributed import (
    SendSettings,
    SliceRunner,
    campaign_status,
    cancel_campaign,
    plan_campaign,
)
from proactive_async.simulator import Faults, Simulator, SimulatorConfig

TOKEN = "fence-token-" + "x" * 16
TEMPLATE = ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3)
# Every call a 429 that names a short wait: never processed, always retried.
THROTTLED = SimulatorConfig(token=TOKEN, faults=Faults(rate_429=1.0, retry_after=0.01))


@pytest.fixture
def dsn(postgres_server: Any) -> str:
    return str(postgres_server.create_database(f"fence_{uuid.uuid4().hex[:10]}"))


class Probe:
    """A rate limit that lets every acquire through and runs ``at[n]`` on the n-th one
    (the first attempt is acquire 1, each retry one more)."""

    rate = None

    def __init__(self, at: dict[int, Callable[[], Awaitable[None]]]) -> None:
        self.at = at
        self.acquired = 0

    async def acquire(self, weight: float = 1.0) -> None:
        self.acquired += 1
        step = self.at.get(self.acquired)
        if step is not None:
            await step()

    async def on_success(self, weight: float) -> None:
        return None

    async def on_throttle(self, weight: float, retry_after: float | None) -> bool:
        return False  # the chunk waits out its 429 itself

    async def on_busy(self, seconds: float) -> None:
        return None

    async def aclose(self) -> None:
        return None


def limited(probe: Probe) -> Any:
    def build(template: ProactiveConversationRequest, settings: SendSettings) -> Probe:
        return probe

    return build


async def plan(dsn: str, name: str, tmp_path: Path, count: int) -> None:
    targets = tmp_path / "t.csv"
    rows = [f"+55119{index:08d}" for index in range(count)]
    targets.write_text("phone\n" + "\n".join(rows) + "\n")
    await plan_campaign(
        f"{dsn}?campaign={name}",
        template=TEMPLATE,
        targets=targets,
        options=CampaignOptions(chunk_size=count),
    )


async def versions(dsn: str) -> list[tuple[Any, ...]]:
    """Each record's row version (ctid, xmin) and state: an UPDATE, even one that changes
    nothing, leaves a new version (and a dead one behind)."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute(
            "SELECT line, ctid::text, xmin::text, state FROM proactive_record ORDER BY line"
        )
        return await cursor.fetchall()


async def test_retries_of_a_throttled_chunk_write_nothing_and_a_cancel_still_stops_them(
    dsn: str, tmp_path: Path
) -> None:
    """One chunk of two records meets 429 after 429: between its first retry and its fourth
    the records' row versions do not change (before, each retry's fence was an UPDATE).
    Then the campaign is cancelled while the chunk waits: the retry's check finds it
    cancelled, no call is made, and the records end failed (cancelled)."""
    await plan(dsn, "a", tmp_path, 2)
    seen: list[list[tuple[Any, ...]]] = []

    async def look() -> None:
        seen.append(await versions(dsn))

    async def look_then_cancel() -> None:
        await look()
        await cancel_campaign(f"{dsn}?campaign=a")

    probe = Probe({2: look, 5: look_then_cancel})
    async with Simulator(THROTTLED) as sim, AsyncClient(sim.url, TOKEN) as client:
        runner = SliceRunner(dsn, client, rate_limit_for=limited(probe), lease=60)
        result = await asyncio.wait_for(runner.run("a", 1), 30)
        await runner.aclose()
        calls = sim.audit.calls
    first_retry, fourth_retry = seen
    assert [row[3] for row in first_retry] == ["in_flight", "in_flight"]
    assert fourth_retry == first_retry, "a retry wrote the records"
    assert calls == 4, "a call went out after the cancel"
    assert result.counts == {}
    status = await campaign_status(f"{dsn}?campaign=a")
    assert status.finished and status.counts == {"failed": 2}


async def test_a_lease_taken_over_between_attempts_stops_the_retry(
    dsn: str, tmp_path: Path
) -> None:
    """The owner still believes it holds the lease (its clock says so), but the database
    gave the slice to another owner while the chunk waited out a 429: the retry's check
    reads that, and no call is made; the records, certainly never processed, go back to
    planned for whoever holds the slice."""
    await plan(dsn, "b", tmp_path, 2)

    async def take_over() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("UPDATE proactive_slice SET owner = 'thief/1/x', fence = fence + 1")

    probe = Probe({2: take_over})
    async with Simulator(THROTTLED) as sim, AsyncClient(sim.url, TOKEN) as client:
        runner = SliceRunner(dsn, client, rate_limit_for=limited(probe), lease=60)
        result = await asyncio.wait_for(runner.run("b", 1), 30)
        await runner.aclose()
        calls = sim.audit.calls
    assert calls == 1, "a retry went out after the lease was taken over"
    assert result.counts == {}
    assert [row[3] for row in await versions(dsn)] == ["planned", "planned"]
