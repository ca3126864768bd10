"""Distributed campaigns, engine aside: planning into PostgreSQL, the chunk runner's fence
(a live execution, a dead one), cancel, status and report."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from proactive_async import (
    AsyncClient,
    CampaignOptions,
    JournalMismatchError,
    ProactiveConversationRequest,
)
from proactive_async._distributed import (
    ChunkBusyError,
    ChunkRunner,
    campaign_status,
    cancel_campaign,
    plan_campaign,
    write_report,
)
from proactive_async.simulator import Simulator, SimulatorConfig

TOKEN = "dist-token-" + "x" * 16
TEMPLATE = ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3)


def write_targets(path: Path, count: int, *, extra: list[str] | None = None) -> Path:
    rows = [f"+55119{index:08d},Ana" for index in range(count)] + (extra or [])
    path.write_text("phone,name\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture
def dsn(postgres_server: Any) -> str:
    return str(postgres_server.create_database(f"dist_{uuid.uuid4().hex[:10]}"))


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig(token=TOKEN)) as simulator:
        yield simulator


def rows(dsn: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


async def wait_until_unlocked(dsn: str) -> None:
    """The server notices a closed connection a moment later: wait for its locks to go."""
    for _ in range(200):
        held = rows(dsn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")[0][0]
        if held == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the advisory lock outlived its connection")


async def test_planning_stores_every_record_once_with_rejections_and_duplicates_final(
    dsn: str, tmp_path: Path
) -> None:
    targets = write_targets(tmp_path / "t.csv", 95, extra=["not-a-phone,Bo", "+5511900000000,Cy"])
    options = CampaignOptions(chunk_size=10)
    plan = await plan_campaign(
        f"{dsn}?campaign=a", template=TEMPLATE, targets=targets, options=options
    )
    assert (plan.records, plan.rejected, plan.duplicates, plan.chunks) == (97, 1, 1, 10)
    assert plan.pending_chunks == list(range(1, 11)) and not plan.already_planned
    states = dict(rows(dsn, "SELECT state, count(*) FROM proactive_record GROUP BY state"))
    assert states == {"planned": 95, "rejected": 1, "duplicate": 1}
    again = await plan_campaign(
        f"{dsn}?campaign=a", template=TEMPLATE, targets=targets, options=options
    )
    assert again.already_planned and again.pending_chunks == plan.pending_chunks
    assert rows(dsn, "SELECT count(*) FROM proactive_record")[0][0] == 97
    other = ProactiveConversationRequest(channel_id=9, bot_id=2, conversation_template_id=3)
    with pytest.raises(JournalMismatchError):
        await plan_campaign(f"{dsn}?campaign=a", template=other, targets=targets, options=options)


async def test_running_every_chunk_sends_each_record_once_and_finishes_the_campaign(
    dsn: str, tmp_path: Path, sim: Simulator
) -> None:
    targets = write_targets(tmp_path / "t.csv", 60)
    plan = await plan_campaign(
        f"{dsn}?campaign=b",
        template=TEMPLATE,
        targets=targets,
        options=CampaignOptions(chunk_size=7),
    )
    async with AsyncClient(sim.url, TOKEN) as client:
        runner = ChunkRunner(dsn, client)
        for chunk in plan.pending_chunks:
            assert await runner.run("b", chunk) == "done"
        for chunk in plan.pending_chunks:  # a redelivered job finds nothing left to send
            assert await runner.run("b", chunk) == "done"
        await runner.aclose()
    assert all(count == 1 for count in sim.audit.snapshot().values())
    assert len(sim.audit.snapshot()) == 60
    status = await campaign_status(f"{dsn}?campaign=b")
    assert status.finished and status.counts == {"sent": 60}
    assert status.chunks_done == status.chunks == plan.chunks
    out = io.BytesIO()
    assert await write_report(f"{dsn}?campaign=b", out) == 60
    lines = [msgspec.json.decode(line) for line in out.getvalue().splitlines()]
    assert [line["line"] for line in lines] == list(range(1, 61))
    assert all(line["status"] == "sent" and line["conversationIds"] for line in lines)


async def test_records_left_in_flight_by_a_dead_execution_end_unknown_and_are_not_resent(
    dsn: str, tmp_path: Path, sim: Simulator
) -> None:
    targets = write_targets(tmp_path / "t.csv", 10)
    await plan_campaign(
        f"{dsn}?campaign=c",
        template=TEMPLATE,
        targets=targets,
        options=CampaignOptions(chunk_size=10),
    )
    with psycopg.connect(dsn) as conn:  # an execution marked 1-3 in flight, then died
        conn.execute(
            "UPDATE proactive_record SET state = 'in_flight' WHERE campaign_id = 'c' AND line <= 3"
        )
    async with AsyncClient(sim.url, TOKEN) as client:
        runner = ChunkRunner(dsn, client)
        assert await runner.run("c", 1) == "done"
        await runner.aclose()
    sent = sim.audit.snapshot()
    assert len(sent) == 7  # lines 4-10 only
    outcomes = dict(rows(dsn, "SELECT line, state FROM proactive_record WHERE campaign_id = 'c'"))
    assert [outcomes[line] for line in (1, 2, 3)] == ["unknown"] * 3
    assert all(outcomes[line] == "sent" for line in range(4, 11))


async def test_a_chunk_whose_lock_is_held_by_a_live_execution_is_not_sent_twice(
    dsn: str, tmp_path: Path, sim: Simulator
) -> None:
    targets = write_targets(tmp_path / "t.csv", 5)
    await plan_campaign(
        f"{dsn}?campaign=d", template=TEMPLATE, targets=targets, options=CampaignOptions()
    )
    with psycopg.connect(dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext('d'), 1)")
        async with AsyncClient(sim.url, TOKEN) as client:
            runner = ChunkRunner(dsn, client)
            with pytest.raises(ChunkBusyError):
                await runner.run("d", 1)
            assert sim.audit.snapshot() == {}
            holder.close()  # the live execution's connection dies: the lock goes with it
            await wait_until_unlocked(dsn)
            assert await runner.run("d", 1) == "done"
            await runner.aclose()
    assert len(sim.audit.snapshot()) == 5


async def test_cancel_fails_what_was_not_sent_and_finishes_the_campaign(
    dsn: str, tmp_path: Path, sim: Simulator
) -> None:
    targets = write_targets(tmp_path / "t.csv", 20)
    plan = await plan_campaign(
        f"{dsn}?campaign=e",
        template=TEMPLATE,
        targets=targets,
        options=CampaignOptions(chunk_size=10),
    )
    async with AsyncClient(sim.url, TOKEN) as client:
        runner = ChunkRunner(dsn, client)
        assert await runner.run("e", plan.pending_chunks[0]) == "done"
        assert not (await campaign_status(f"{dsn}?campaign=e")).finished
        assert await cancel_campaign(f"{dsn}?campaign=e") == 10
        assert await runner.run("e", plan.pending_chunks[1]) == "done"  # a late job sends nothing
        await runner.aclose()
    assert len(sim.audit.snapshot()) == 10
    status = await campaign_status(f"{dsn}?campaign=e")
    assert status.finished and status.cancelled
    assert status.counts == {"sent": 10, "failed": 10}
    out = io.BytesIO()
    await write_report(f"{dsn}?campaign=e", out)
    failed = [msgspec.json.decode(line) for line in out.getvalue().splitlines()][10:]
    assert all(line["error"]["kind"] == "cancelled" for line in failed)
    assert set(failed[0]) == {
        "line", "status", "recipient", "contactId", "conversationIds", "attempts", "error",
        "duplicateOf",
    }  # fmt: skip


async def test_no_token_is_stored_in_any_table(dsn: str, tmp_path: Path, sim: Simulator) -> None:
    targets = write_targets(tmp_path / "t.csv", 10)
    await plan_campaign(
        f"{dsn}?campaign=f", template=TEMPLATE, targets=targets, options=CampaignOptions(),
        secrets=[TOKEN],
    )  # fmt: skip
    async with AsyncClient(sim.url, TOKEN) as client:
        runner = ChunkRunner(dsn, client)
        await runner.run("f", 1)
        await runner.aclose()
    dump = ""
    for table in ("proactive_campaign", "proactive_record", "proactive_chunk"):
        dump += "".join(r[0] for r in rows(dsn, f"SELECT row_to_json(t)::text FROM {table} t"))
    assert "+5511900000000" in dump and TOKEN not in dump


async def test_a_distributed_campaign_is_refused_to_a_one_process_run(
    dsn: str, tmp_path: Path
) -> None:
    from proactive_async import JournalError, open_journal
    from proactive_async._campaign import campaign_identity

    targets = write_targets(tmp_path / "t.csv", 5)
    options = CampaignOptions()
    await plan_campaign(f"{dsn}?campaign=g", template=TEMPLATE, targets=targets, options=options)
    with pytest.raises(JournalError, match="distributed campaign"):
        await open_journal(f"{dsn}?campaign=g", campaign_identity(TEMPLATE, targets, options))


async def test_chunks_of_a_new_campaign_started_together_share_one_journal(
    dsn: str, tmp_path: Path, sim: Simulator
) -> None:
    """No connection is left open after aclose, however many chunks started at once."""
    targets = write_targets(tmp_path / "t.csv", 12)
    plan = await plan_campaign(
        f"{dsn}?campaign=h",
        template=TEMPLATE,
        targets=targets,
        options=CampaignOptions(chunk_size=4),
    )
    async with AsyncClient(sim.url, TOKEN) as client:
        runner = ChunkRunner(dsn, client)
        states = await asyncio.gather(*(runner.run("h", c) for c in plan.pending_chunks))
        await runner.aclose()
    assert states == ["done"] * 3
    database = dsn.rsplit("/", 1)[1]
    sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
    for _ in range(200):  # the server sees a closed connection go a moment later
        left = rows(dsn, sql, database)[0][0]
        if left == 0:
            break
        await asyncio.sleep(0.01)
    assert left == 0  # a leak stays: 4 connections before the fix


def test_the_public_module_is_the_engine_free_api_for_your_own_queue() -> None:
    import proactive_async._distributed as private
    import proactive_async.distributed as public

    assert public.__all__ == sorted(public.__all__)
    for name in public.__all__:
        assert getattr(public, name) is getattr(private, name), name
    assert {"plan_campaign", "ChunkRunner", "campaign_status", "write_report"} <= set(
        public.__all__
    )
