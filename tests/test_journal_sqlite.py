"""The SQLite journal: resume, identity checks, crash safety, group commit, no token."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest

from proactive_async._errors import JournalError, JournalMismatchError
from proactive_async._records import Outcome, OutcomeError, OutcomeStatus
from proactive_async.journal import (
    IN_FLIGHT,
    CampaignIdentity,
    JournalEntry,
    _group_commit,
    _sqlite,
)
from proactive_async.journal._sqlite import SQLiteJournal

TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2Vu.s1gnature-Tok3n"
IDENTITY = CampaignIdentity.build(
    {"channelId": 1, "botId": 2, "conversationTemplateId": 7},
    input_fingerprint="sha256:aaaa",
    options={"default_region": "BR", "dedupe": True},
)


def sent(line: int, **fields: object) -> Outcome:
    return Outcome(line=line, status=OutcomeStatus.SENT, **fields)  # type: ignore[arg-type]


def journal_files_bytes(path: Path) -> bytes:
    """The bytes of the journal and of its -wal file, when there is one."""
    return b"".join(p.read_bytes() for p in path.parent.glob(f"{path.name}*"))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "campaign.journal"


async def test_a_new_journal_is_not_resumed_and_reopening_resumes_it(path: Path) -> None:
    async with await SQLiteJournal.open(path, IDENTITY) as journal:
        assert journal.resumed is False
        await journal.mark_in_flight([1, 2])
        await journal.record([sent(1, conversation_ids=[10])])
    async with await SQLiteJournal.open(path, IDENTITY) as journal:
        assert journal.resumed is True
        entries = await journal.lookup([1, 2])
    assert entries[1].state == "sent"
    assert entries[2] == JournalEntry(line=2, state=IN_FLIGHT, outcome=None)


async def test_reopening_an_empty_journal_is_not_a_resume(path: Path) -> None:
    await (await SQLiteJournal.open(path, IDENTITY)).aclose()
    async with await SQLiteJournal.open(path, IDENTITY) as journal:
        assert journal.resumed is False


async def test_another_template_is_refused_naming_the_template(path: Path) -> None:
    await (await SQLiteJournal.open(path, IDENTITY)).aclose()
    other = CampaignIdentity.build(
        {"channelId": 1, "botId": 2, "conversationTemplateId": 8},
        input_fingerprint="sha256:aaaa",
        options={"default_region": "BR", "dedupe": True},
    )
    with pytest.raises(JournalMismatchError, match="request template differs") as caught:
        await SQLiteJournal.open(path, other)
    assert "input differs" not in str(caught.value)
    assert "conversationTemplateId" in str(caught.value)


async def test_another_input_is_refused_naming_the_input(path: Path) -> None:
    await (await SQLiteJournal.open(path, IDENTITY)).aclose()
    other = CampaignIdentity(IDENTITY.template, "sha256:bbbb", IDENTITY.options)
    with pytest.raises(JournalMismatchError, match="the input differs") as caught:
        await SQLiteJournal.open(path, other)
    assert "template differs" not in str(caught.value)
    assert "sha256:aaaa" in str(caught.value)
    assert "sha256:bbbb" in str(caught.value)


async def test_other_planning_options_are_refused(path: Path) -> None:
    await (await SQLiteJournal.open(path, IDENTITY)).aclose()
    other = CampaignIdentity(IDENTITY.template, IDENTITY.input_fingerprint, '{"dedupe":false}')
    with pytest.raises(JournalMismatchError, match="planning options differ"):
        await SQLiteJournal.open(path, other)


async def test_lines_marked_before_a_close_without_outcomes_come_back_in_flight(
    path: Path,
) -> None:
    async with await SQLiteJournal.open(path, IDENTITY) as journal:
        await journal.mark_in_flight([5, 6, 7])
    async with await SQLiteJournal.open(path, IDENTITY) as journal:
        entries = await journal.lookup(range(1, 10))
    assert sorted(entries) == [5, 6, 7]
    assert {entry.state for entry in entries.values()} == {IN_FLIGHT}
    assert all(entry.outcome is None for entry in entries.values())


_KILLED_CAMPAIGN = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from proactive_async.journal import CampaignIdentity
    from proactive_async.journal._sqlite import SQLiteJournal
    from proactive_async._records import Outcome, OutcomeStatus

    async def main():
        identity = CampaignIdentity(sys.argv[2], sys.argv[3])
        journal = await SQLiteJournal.open(sys.argv[1], identity)
        await journal.mark_in_flight([1, 2, 3, 4])
        await journal.record([Outcome(line=4, status=OutcomeStatus.SENT, conversation_ids=[9])])
        await journal.flush()
        # Buffered only: the kill below loses it, and line 1 must stay in flight.
        await journal.record([Outcome(line=1, status=OutcomeStatus.SENT, conversation_ids=[8])])
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
    """
)


async def test_in_flight_lines_survive_a_kill_9_and_unflushed_outcomes_are_lost(
    path: Path,
) -> None:
    identity = CampaignIdentity('{"botId":1}', "sha256:cccc")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _KILLED_CAMPAIGN,
        str(path),
        identity.template,
        identity.input_fingerprint,
    )
    assert await process.wait() == -9
    async with await SQLiteJournal.open(path, identity) as journal:
        assert journal.resumed is True
        entries = await journal.lookup([1, 2, 3, 4, 5])
    assert [entries[line].state for line in (1, 2, 3)] == [IN_FLIGHT] * 3
    assert entries[4].outcome == Outcome(line=4, status=OutcomeStatus.SENT, conversation_ids=[9])
    assert 5 not in entries


async def test_final_outcomes_round_trip_with_every_field(path: Path) -> None:
    outcomes = [
        sent(1, recipient="+5511999990001", conversation_ids=[101, 102], attempts=2),
        Outcome(
            line=2,
            status=OutcomeStatus.FAILED,
            contact_id=77,
            attempts=3,
            error=OutcomeError(kind="BadRequestError", message="campo inválido ☃", status=400),
        ),
        Outcome(
            line=3,
            status=OutcomeStatus.UNKNOWN,
            recipient="+5511999990003",
            attempts=1,
            error=OutcomeError(kind="ReadTimeout", message="no answer in 30 s"),
        ),
        Outcome(
            line=4,
            status=OutcomeStatus.REJECTED,
            recipient="not a number",
            error=OutcomeError(kind="invalid_recipient", message="not a phone number"),
        ),
        Outcome(line=5, status=OutcomeStatus.DUPLICATE, recipient="+5511999990001", duplicate_of=1),
        sent(6, contact_id=0, conversation_ids=[2**31 - 1]),
    ]
    async with await SQLiteJournal.open(path, IDENTITY) as journal:
        await journal.mark_in_flight([1, 2, 3])
        await journal.record(outcomes)
    async with await SQLiteJournal.open(path, IDENTITY) as journal:
        entries = await journal.lookup([o.line for o in outcomes])
    assert [entries[o.line].outcome for o in outcomes] == outcomes
    assert [entries[o.line].state for o in outcomes] == [o.status.value for o in outcomes]


async def test_concurrent_marks_share_one_commit(path: Path) -> None:
    async with await SQLiteJournal.open(path, IDENTITY) as journal:
        await asyncio.gather(*(journal.mark_in_flight([line]) for line in range(1, 51)))
        assert journal.commits == 1
        assert journal.counts() == {IN_FLIGHT: 50}


async def test_marks_arriving_during_a_commit_share_the_next_one(path: Path) -> None:
    async with await SQLiteJournal.open(path, IDENTITY) as journal:
        first = asyncio.create_task(journal.mark_in_flight([1]))
        await asyncio.sleep(0)  # the writer starts its commit of line 1
        await asyncio.sleep(0)
        await asyncio.gather(first, *(journal.mark_in_flight([line]) for line in range(2, 31)))
        assert journal.commits == 2


async def test_buffered_outcomes_ride_along_in_the_next_mark_commit(path: Path) -> None:
    async with await SQLiteJournal.open(path, IDENTITY) as journal:
        await journal.mark_in_flight([1])
        await journal.record([sent(1)])
        await journal.mark_in_flight([2])
        assert journal.commits == 2
        assert journal.counts() == {"sent": 1, IN_FLIGHT: 1}


async def test_outcomes_are_committed_once_the_buffer_is_full(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_group_commit, "FLUSH_ROWS", 3)
    async with await SQLiteJournal.open(path, IDENTITY) as journal:
        await journal.record([sent(1), sent(2)])
        assert journal.commits == 0
        await journal.record([sent(3)])
        assert journal.commits == 1


async def test_outcomes_are_committed_when_the_flush_interval_passes(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_group_commit, "FLUSH_SECONDS", 0.0)
    async with await SQLiteJournal.open(path, IDENTITY) as journal:
        await journal.record([sent(1)])
        assert journal.commits == 0
        for _ in range(1000):
            if journal.commits:
                break
            await asyncio.sleep(0.001)
        assert journal.counts() == {"sent": 1}


async def test_a_mark_after_a_buffered_outcome_of_the_same_line_wins(path: Path) -> None:
    async with await SQLiteJournal.open(path, IDENTITY) as journal:
        await journal.record([Outcome(line=1, status=OutcomeStatus.UNKNOWN)])
        await journal.mark_in_flight([1])  # resent on purpose (--resend-unknown)
        assert (await journal.lookup([1]))[1].state == IN_FLIGHT


async def test_lookup_of_lines_never_seen_returns_nothing(path: Path) -> None:
    async with await SQLiteJournal.open(path, IDENTITY) as journal:
        await journal.mark_in_flight([2])
        assert await journal.lookup([1, 3, 1_000_000]) == {}
        assert await journal.lookup([]) == {}


async def test_lookup_of_more_lines_than_one_query_takes(path: Path) -> None:
    async with await SQLiteJournal.open(path, IDENTITY) as journal:
        await journal.mark_in_flight(range(1, 1502, 2))
        entries = await journal.lookup(range(1, 1502))
    assert sorted(entries) == list(range(1, 1502, 2))


async def test_lookup_while_a_commit_holds_the_connection_waits_for_it(path: Path) -> None:
    async with await SQLiteJournal.open(path, IDENTITY) as journal:
        with journal._lock:  # as a commit in the worker thread would
            pending = asyncio.ensure_future(journal.lookup([1]))
            await asyncio.sleep(0.01)
            assert not pending.done()
        assert await pending == {}


async def test_counts_gives_rows_per_state_even_after_close(path: Path) -> None:
    journal = await SQLiteJournal.open(path, IDENTITY)
    await journal.mark_in_flight([1, 2, 3])
    await journal.record([sent(1), Outcome(line=2, status=OutcomeStatus.FAILED)])
    await journal.flush()
    assert journal.counts() == {IN_FLIGHT: 1, "sent": 1, "failed": 1}
    await journal.aclose()
    assert journal.counts() == {IN_FLIGHT: 1, "sent": 1, "failed": 1}


async def test_the_file_never_contains_the_token(path: Path) -> None:
    async with await SQLiteJournal.open(path, IDENTITY, secrets=[TOKEN]) as journal:
        await journal.mark_in_flight([1])
        echoed = OutcomeError(kind="AuthenticationError", message=f"bad token {TOKEN}", status=401)
        await journal.record([Outcome(line=1, status=OutcomeStatus.FAILED, error=echoed)])
        await journal.flush()
        assert TOKEN.encode() not in journal_files_bytes(path)
        stored = (await journal.lookup([1]))[1].outcome
    assert stored is not None and stored.error is not None
    assert stored.error.message == "bad token [redacted]"
    assert TOKEN.encode() not in journal_files_bytes(path)


async def test_an_identity_holding_the_token_is_refused(path: Path) -> None:
    leaky = CampaignIdentity.build({"headers": {"Authorization": f"Bearer {TOKEN}"}})
    with pytest.raises(JournalError, match="holds the API token"):
        await SQLiteJournal.open(path, leaky, secrets=[TOKEN])
    assert journal_files_bytes(path) == b""


@pytest.fixture
def csv_path(path: Path) -> Path:
    path.write_bytes(b"phone,name\n+5511999990000,Ana\n" * 200)
    return path


async def test_a_file_that_is_not_a_database_is_refused(csv_path: Path) -> None:
    path = csv_path
    with pytest.raises(JournalError, match="not a usable campaign journal"):
        await SQLiteJournal.open(path, IDENTITY)


async def test_another_sqlite_database_is_refused(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE lines (line INTEGER)")
    conn.close()
    with pytest.raises(JournalError, match="not a proactive-async campaign journal"):
        await SQLiteJournal.open(path, IDENTITY)


async def test_a_journal_of_another_format_version_is_refused(path: Path) -> None:
    await (await SQLiteJournal.open(path, IDENTITY)).aclose()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(JournalError, match="format 99"):
        await SQLiteJournal.open(path, IDENTITY)


async def test_a_journal_in_use_by_a_running_campaign_is_refused_as_locked(
    path: Path,
) -> None:
    async with await SQLiteJournal.open(path, IDENTITY):
        with pytest.raises(JournalError, match="locked") as caught:
            await SQLiteJournal.open(path, IDENTITY)
    assert not isinstance(caught.value, JournalMismatchError)
    await (await SQLiteJournal.open(path, IDENTITY)).aclose()  # free again once closed


async def test_the_report_reader_refuses_what_the_journal_refuses(path: Path) -> None:
    """Same checks, same words: another database, another format, a running campaign."""
    from proactive_async._timeline import TimelineRow
    from proactive_async.journal._sqlite_report import JournalReader, add_timeline

    other = path.with_name("other.db")
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE lines (line INTEGER)")
    conn.close()
    with pytest.raises(JournalError, match="not a proactive-async campaign journal"):
        JournalReader(str(other))
    not_a_database = path.with_name("targets.csv")
    not_a_database.write_bytes(b"phone,name\n+5511999990000,Ana\n" * 200)
    with pytest.raises(JournalError, match="cannot read"):
        JournalReader(str(not_a_database))
    async with await SQLiteJournal.open(path, IDENTITY):
        with pytest.raises(JournalError, match="locked: a running campaign"):
            JournalReader(str(path))
        with pytest.raises(JournalError, match="locked: a running campaign"):
            add_timeline(str(path), [TimelineRow(1, 1, 0, 0, 0)])
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(JournalError, match="format 99"):
        JournalReader(str(path))


async def test_a_missing_directory_is_a_journal_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="cannot open"):
        await SQLiteJournal.open(tmp_path / "missing" / "j.db", IDENTITY)


async def test_aclose_is_idempotent_and_later_calls_raise(path: Path) -> None:
    journal = await SQLiteJournal.open(path, IDENTITY)
    await journal.record([sent(1)])
    await journal.aclose()
    await journal.aclose()
    with pytest.raises(JournalError, match="closed"):
        await journal.mark_in_flight([2])
    with pytest.raises(JournalError, match="closed"):
        await journal.record([sent(2)])
    async with await SQLiteJournal.open(path, IDENTITY) as reopened:
        assert reopened.counts() == {"sent": 1}


async def test_a_failed_write_fails_its_callers_and_every_later_call(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = await SQLiteJournal.open(path, IDENTITY)
    monkeypatch.setattr(_sqlite, "_MARK_SQL", "INSERT INTO no_such_table VALUES (?)")
    results = await asyncio.gather(
        journal.mark_in_flight([1]), journal.mark_in_flight([2]), return_exceptions=True
    )
    assert all(isinstance(r, JournalError) for r in results)
    with pytest.raises(JournalError, match="failed earlier"):
        await journal.record([sent(3)])
    await journal.aclose()
    monkeypatch.undo()
    async with await SQLiteJournal.open(path, IDENTITY) as reopened:
        assert await reopened.lookup([1, 2]) == {}


async def test_a_cancelled_mark_still_commits_its_lines(path: Path) -> None:
    async with await SQLiteJournal.open(path, IDENTITY) as journal:
        task = asyncio.create_task(journal.mark_in_flight([1]))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await journal.flush()
        assert (await journal.lookup([1]))[1].state == IN_FLIGHT
