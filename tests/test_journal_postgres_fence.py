"""The single-process PostgreSQL journal's fence in the data: a run marks lines in flight
only while it owns the campaign, the campaign is not cancelled and the line is not final,
checked in the statement that marks them. The advisory lock is only a hint: these tests
open journals without it (``exclusive=False``), as a transaction-mode pooler would let a
second run through."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest
from test_journal_postgres import IDENTITY, TEMPLATE, tables_of_an_older_version

from proactive_async import AsyncClient, Campaign, JournalError, open_journal
from proactive_async._records import Outcome, OutcomeStatus
from proactive_async.journal._postgres import PostgresJournal
from proactive_async.simulator import Faults, Simulator, SimulatorConfig


@pytest.fixture
def dsn(postgres_server: Any) -> str:
    return str(postgres_server.create_database(f"pg_{uuid.uuid4().hex[:10]}"))


def _states(dsn: str, campaign: str = "default") -> dict[int, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT line, state FROM proactive_record WHERE campaign_id = %s", (campaign,)
        ).fetchall()
    return dict(rows)


async def test_a_run_taken_over_is_refused_its_next_mark_and_stops(dsn: str) -> None:
    first = await PostgresJournal.open(dsn, IDENTITY, exclusive=False)
    await first.mark_in_flight([1, 2])
    second = await PostgresJournal.open(dsn, IDENTITY, exclusive=False)
    with pytest.raises(JournalError, match="another run took the campaign over"):
        await first.mark_in_flight([3])
    # What the first run marked before stays in flight for the second to see (unknown,
    # never resent); the refused line was not marked.
    assert set(await second.lookup([1, 2, 3])) == {1, 2}
    with pytest.raises(JournalError, match="failed earlier"):  # latched: nothing more
        await first.mark_in_flight([4])
    await second.mark_in_flight([3])
    assert _states(dsn) == {1: "in_flight", 2: "in_flight", 3: "in_flight"}
    await first.aclose()  # closes; what failed stays failed
    await second.aclose()


async def test_outcomes_of_calls_made_before_a_take_over_are_still_recorded(dsn: str) -> None:
    """An answer is the truth of a call already made: only marks are fenced."""
    first = await PostgresJournal.open(dsn, IDENTITY, exclusive=False)
    await first.mark_in_flight([1])
    second = await PostgresJournal.open(dsn, IDENTITY, exclusive=False)
    await first.record([Outcome(line=1, status=OutcomeStatus.SENT)])
    await first.flush()
    assert _states(dsn) == {1: "sent"}
    await first.aclose()
    await second.aclose()


async def test_a_cancelled_campaign_refuses_marks_and_a_resume(dsn: str) -> None:
    journal = await open_journal(dsn, IDENTITY)
    await journal.mark_in_flight([1])
    with psycopg.connect(dsn, autocommit=True) as conn:  # what `proactive-async cancel` sets
        conn.execute("UPDATE proactive_campaign SET cancelled_at = now()")
    with pytest.raises(JournalError, match="cancelled"):
        await journal.mark_in_flight([2])
    assert _states(dsn) == {1: "in_flight"}
    await journal.aclose()
    with pytest.raises(JournalError, match="was cancelled"):
        await open_journal(dsn, IDENTITY)


async def test_a_line_that_ended_sent_is_never_marked_again(dsn: str) -> None:
    journal = await open_journal(dsn, IDENTITY)
    await journal.mark_in_flight([1, 2, 3])
    await journal.record(
        [
            Outcome(line=1, status=OutcomeStatus.SENT),
            Outcome(line=2, status=OutcomeStatus.UNKNOWN),
            Outcome(line=3, status=OutcomeStatus.FAILED),
        ]
    )
    await journal.flush()
    await journal.mark_in_flight([2, 3])  # a resume resending them, as asked
    assert _states(dsn) == {1: "sent", 2: "in_flight", 3: "in_flight"}
    with pytest.raises(JournalError, match="already ended"):
        await journal.mark_in_flight([1, 4])
    # Line 4 was marked (it stays in flight: unknown on resume, never sent twice); the run
    # stops before any call of that mark is made.
    assert _states(dsn) == {1: "sent", 2: "in_flight", 3: "in_flight", 4: "in_flight"}
    await journal.aclose()


async def test_a_take_over_waits_for_a_mark_being_made_and_a_mark_reads_the_newest_owner(
    dsn: str,
) -> None:
    """The order is certain: an owner changed (not yet committed) while a mark is made
    holds the mark until it commits, and the mark then finds the new owner. A plain read
    of the owner would see the old one and mark."""
    journal = await PostgresJournal.open(dsn, IDENTITY, exclusive=False)
    with psycopg.connect(dsn) as other:  # a transaction: the update is not committed yet
        other.execute("UPDATE proactive_campaign SET owner = 'someone-else'")
        mark = asyncio.ensure_future(journal.mark_in_flight([1]))
        await asyncio.sleep(0.3)
        assert not mark.done()  # waiting on the row's lock
        other.commit()
    with pytest.raises(JournalError, match="another run"):
        await mark
    assert _states(dsn) == {}
    await journal.aclose()


async def test_tables_of_an_older_version_get_the_owner_column(dsn: str) -> None:
    journal = await open_journal(dsn, IDENTITY)
    await journal.aclose()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE proactive_campaign DROP COLUMN owner")
    journal = await open_journal(dsn, IDENTITY)
    await journal.mark_in_flight([1])
    await journal.aclose()
    assert _states(dsn) == {1: "in_flight"}


async def test_a_role_that_cannot_add_the_owner_column_is_told_who_can(dsn: str) -> None:
    app = await tables_of_an_older_version(dsn, "ALTER TABLE proactive_campaign DROP COLUMN owner")
    with pytest.raises(JournalError, match=r"no column owner.*tables' owner") as caught:
        await open_journal(app, IDENTITY)
    assert caught.value.__suppress_context__  # one line, not the driver's traceback


async def test_a_campaign_taken_over_mid_run_stops_and_sends_nothing_twice(dsn: str) -> None:
    """A run (its lock held) whose campaign a second opener takes over, as a pooler sharing
    one session would allow: the run stops at its next mark, saying why; every call made
    is in the journal (in flight or with its outcome), none twice."""
    numbers = [f"+55119{index:08d}" for index in range(400)]
    config = SimulatorConfig(token="t" * 16, faults=Faults(latency=0.005))
    async with Simulator(config) as sim, AsyncClient(sim.url, "t" * 16) as client:
        run = Campaign(
            client, template=TEMPLATE, targets=numbers, chunk_size=5, concurrency=4, journal=dsn
        )
        taker: PostgresJournal | None = None
        with pytest.raises(JournalError, match="another run took the campaign over"):
            async for outcome in run:
                if outcome.line == 40 and taker is None:
                    taker = await PostgresJournal.open(dsn, run.identity(), exclusive=False)
        processed = sim.audit.snapshot()
    assert taker is not None
    await taker.aclose()
    assert 40 <= len(processed) < 400
    assert all(count == 1 for count in processed.values())
    states = _states(dsn)
    assert len(states) == len(processed)
    assert set(states.values()) <= {"sent", "in_flight"}


def _record_scans(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'proactive_record'"
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_marks_never_scan_the_record_table(dsn: str) -> None:
    """The fenced write's plans (generic, made again when the table's statistics change,
    first while it is small) find lines by the primary key only: a subquery that scanned
    the table at each mark made a first run on a new database five times slower."""
    journal = await PostgresJournal.open(dsn, IDENTITY, exclusive=False)
    await journal.aclose()  # a backend that ends reports its statistics
    before = _record_scans(dsn)
    journal = await PostgresJournal.open(dsn, IDENTITY, exclusive=False)
    for batch in range(40):
        lines = [batch * 10 + n for n in range(10)]
        await journal.mark_in_flight(lines)
        await journal.record([Outcome(line=line, status=OutcomeStatus.SENT) for line in lines])
        if batch == 8:  # as autovacuum does early on: statistics of a small table, and
            with psycopg.connect(dsn, autocommit=True) as conn:  # the plans made again
                conn.execute("ANALYZE proactive_record")
    await journal.flush()
    await journal.aclose()
    for _ in range(50):  # the ended backends' reports come in a moment later
        if _record_scans(dsn) != before:
            break
        await asyncio.sleep(0.02)
    assert _record_scans(dsn) - before <= 2  # opening's own check, not one a mark


async def test_a_release_after_a_take_over_leaves_the_new_owner_s_mark(dsn: str) -> None:
    """The old owner gives up a line it never sent; the new owner has marked it again (a
    resume resending what was in flight) and may be sending it: the mark stays."""
    first = await PostgresJournal.open(dsn, IDENTITY, exclusive=False)
    await first.mark_in_flight([7, 8])
    second = await PostgresJournal.open(dsn, IDENTITY, exclusive=False)
    await second.mark_in_flight([7])
    await first.release([7, 8])
    await first.flush()
    assert _states(dsn) == {7: "in_flight", 8: "in_flight"}
    await second.release([7])  # the owner's own release still withdraws its mark
    await second.flush()
    assert _states(dsn) == {8: "in_flight"}
    await first.aclose()
    await second.aclose()


async def test_before_a_retry_the_fence_is_read_again(dsn: str) -> None:
    journal = await PostgresJournal.open(dsn, IDENTITY, exclusive=False)
    assert await journal.mark_in_flight([1, 2]) == [1, 2]  # fenced: the sender reads it
    assert await journal.still_in_flight([1, 2]) == [1, 2]
    other = await PostgresJournal.open(dsn, IDENTITY, exclusive=False)
    assert await journal.still_in_flight([1, 2]) == []  # taken over: no new call
    assert await other.still_in_flight([1, 2]) == [1, 2]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE proactive_campaign SET cancelled_at = now()")
    assert await other.still_in_flight([1, 2]) == []  # cancelled: no new call
    await journal.aclose()
    await other.aclose()


async def test_a_final_outcome_is_never_written_over(dsn: str) -> None:
    """A resumed run that read a line in flight records it "interrupted" while the old
    owner records the answer it got: whichever comes second, ``sent`` stays."""
    journal = await open_journal(dsn, IDENTITY)
    await journal.mark_in_flight([5, 6])
    await journal.record(
        [Outcome(line=5, status=OutcomeStatus.SENT), Outcome(line=6, status=OutcomeStatus.UNKNOWN)]
    )
    await journal.flush()
    await journal.record(
        [Outcome(line=5, status=OutcomeStatus.UNKNOWN), Outcome(line=6, status=OutcomeStatus.SENT)]
    )
    await journal.flush()
    assert _states(dsn) == {5: "sent", 6: "sent"}
    await journal.aclose()


async def test_an_open_that_fails_takes_nothing_over(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its second connection refused (the server's connection limit, say): the run that
    holds the campaign goes on marking."""
    from proactive_async.journal import _postgres

    first = await PostgresJournal.open(dsn, IDENTITY, exclusive=False)
    real_connect = _postgres.connect
    opened: list[str] = []

    async def refuse_the_second(location: str) -> Any:
        opened.append(location)
        if len(opened) == 2:
            raise JournalError("cannot open the journal database: too many connections")
        return await real_connect(location)

    monkeypatch.setattr(_postgres, "connect", refuse_the_second)
    with pytest.raises(JournalError, match="too many connections"):
        await PostgresJournal.open(dsn, IDENTITY, exclusive=False)
    await first.mark_in_flight([1])
    assert _states(dsn) == {1: "in_flight"}
    await first.aclose()


@pytest.mark.parametrize("distributed_tables", [False, True], ids=["alone", "beside-workers"])
async def test_cancel_stops_a_one_process_run_at_its_next_mark(
    dsn: str, distributed_tables: bool
) -> None:
    """``proactive-async cancel`` on a one-process campaign, in a database only such
    campaigns used (no distributed tables) or beside distributed ones."""
    from proactive_async.distributed import campaign_status, cancel_campaign
    from proactive_async.distributed._connect import ensure_distributed_schema
    from proactive_async.journal._pg_database import connect

    location = f"{dsn}?campaign=solo"
    journal = await open_journal(location, IDENTITY)
    await journal.mark_in_flight([1, 2])
    if distributed_tables:
        conn = await connect(dsn)
        await ensure_distributed_schema(conn)
        await conn.close()
    cancelled = await cancel_campaign(location)
    assert (cancelled, cancelled.in_flight) == (0, 2)
    status = await campaign_status(location)
    assert status.cancelled and status.counts == {"in_flight": 2}
    assert not status.distributed and not status.finished
    from proactive_async.cli.distributed import describe

    assert describe(status) == (
        "campaign solo: a one-process campaign (cancelled), sent by its `campaign` run"
        " (how many records it has, only that run knows); in_flight 2"
    )
    assert await journal.still_in_flight([1, 2]) == []  # no retry
    with pytest.raises(JournalError, match="cancelled"):
        await journal.mark_in_flight([3])  # no new call
    await journal.aclose()
