"""What is particular to the PostgreSQL journal (the protocol is tested by the conformance
suite): campaign names in one database, no password in messages, a campaign resumed."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from proactive_async import (
    AsyncClient,
    Campaign,
    JournalError,
    JournalMismatchError,
    ProactiveConversationRequest,
    open_journal,
)
from proactive_async._records import Outcome, OutcomeError, OutcomeStatus
from proactive_async.journal import CampaignIdentity
from proactive_async.journal._pg_database import (
    RECORD_FILLFACTOR,
    display_dsn,
    outcome_json_sql,
    split_location,
)
from proactive_async.simulator import Simulator, SimulatorConfig

IDENTITY = CampaignIdentity.build({"channelId": 1}, input_fingerprint="x")
TEMPLATE = ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3)


@pytest.fixture
def dsn(postgres_server: Any) -> str:
    return str(postgres_server.create_database(f"pg_{uuid.uuid4().hex[:10]}"))


def test_the_campaign_name_is_taken_out_of_the_url_and_the_rest_kept() -> None:
    assert split_location("postgresql://u@h/db?sslmode=disable&campaign=spring") == (
        "postgresql://u@h/db?sslmode=disable",
        "spring",
    )
    assert split_location("postgresql://u@h/db")[1] == "default"
    with pytest.raises(JournalError, match="campaign"):
        split_location("postgresql://u@h/db?campaign=")


def test_a_password_is_never_shown() -> None:
    assert display_dsn("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"


async def test_a_refused_connection_names_the_database_but_not_its_password() -> None:
    with pytest.raises(JournalError) as caught:
        await open_journal("postgresql://app:hunter2-pw@127.0.0.1:1/none", IDENTITY)
    assert "127.0.0.1:1" in str(caught.value) and "hunter2-pw" not in str(caught.value)


async def test_a_password_libpq_cannot_decode_is_not_repeated_in_the_error() -> None:
    """libpq quotes the token it cannot percent-decode: the message hides it too."""
    with pytest.raises(JournalError) as caught:
        await open_journal("postgresql://app:se%zzcret-pw@127.0.0.1:1/none", IDENTITY)
    assert "zzcret" not in str(caught.value) and "percent" in str(caught.value)


async def test_two_campaigns_live_side_by_side_in_one_database(dsn: str) -> None:
    other = CampaignIdentity.build({"channelId": 2}, input_fingerprint="y")
    first = await open_journal(f"{dsn}?campaign=a", IDENTITY)
    second = await open_journal(f"{dsn}?campaign=b", other)  # not locked by the first
    await first.mark_in_flight([1])
    await second.mark_in_flight([1, 2])
    assert list(await first.lookup([1, 2])) == [1]
    await first.aclose()
    await second.aclose()
    with pytest.raises(JournalMismatchError, match="campaign 'a'"):
        await open_journal(f"{dsn}?campaign=a", other)


async def test_a_campaign_killed_half_way_resumes_from_a_postgresql_journal(
    dsn: str, tmp_path: Path
) -> None:
    """The single-process campaign with --journal postgresql://: nothing sent twice."""
    numbers = [f"+55119{index:08d}" for index in range(300)]
    journal = f"{dsn}?campaign=resume"
    config = SimulatorConfig(token="t" * 16)
    async with Simulator(config) as sim, AsyncClient(sim.url, "t" * 16) as client:
        first = Campaign(client, template=TEMPLATE, targets=numbers, chunk_size=10, journal=journal)
        seen = 0
        async for _ in first:
            seen += 1
            if seen == 100:
                first.stop()
        second = Campaign(
            client, template=TEMPLATE, targets=numbers, chunk_size=10, journal=journal
        )
        summary = await second.run()
        processed = sim.audit.snapshot()
    assert summary.records == 300
    assert summary.resumed >= 100
    assert all(count == 1 for count in processed.values())
    assert len(processed) == 300
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT state, count(*) FROM proactive_record WHERE campaign_id = 'resume'"
            " GROUP BY state"
        ).fetchall()
    assert dict(rows) == {"sent": 300}


async def test_closing_or_refusing_releases_the_campaign_lock_before_it_returns(dsn: str) -> None:
    def advisory_locks() -> int:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            return int(row.fetchone()[0])  # type: ignore[index]

    location = f"{dsn}?campaign=locks"
    for _ in range(10):
        journal = await open_journal(location, IDENTITY)
        assert advisory_locks() == 1
        await journal.aclose()
        assert advisory_locks() == 0  # not only once the server sees the connection go
    other = CampaignIdentity.build({"channelId": 2}, input_fingerprint="y")
    for _ in range(10):
        with pytest.raises(JournalMismatchError):
            await open_journal(location, other)
        assert advisory_locks() == 0


async def test_an_outcome_built_by_sql_decodes_as_the_same_outcome(dsn: str) -> None:
    error = OutcomeError(kind="cancelled", message="not sent")
    sql = outcome_json_sql(line="line", status="'failed'", recipient="recipient", error="%s::json")
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            f"SELECT {sql}::text FROM (VALUES (5, '+5511999990000')) AS r (line, recipient)",
            (msgspec.json.encode(error).decode(),),
        ).fetchone()
    assert row is not None
    assert msgspec.json.decode(row[0], type=Outcome) == Outcome(
        line=5, status=OutcomeStatus.FAILED, recipient="+5511999990000", error=error
    )


def test_outcome_sql_refuses_a_field_outcome_lacks_or_one_without_a_default() -> None:
    with pytest.raises(ValueError, match="no field contactid"):
        outcome_json_sql(line="1", status="'sent'", contactid="2")
    with pytest.raises(ValueError, match=r"Outcome\.status has no default"):
        outcome_json_sql(line="1")


def _fillfactor(dsn: str) -> list[str] | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT reloptions FROM pg_class WHERE oid = 'proactive_record'::regclass"
        ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


async def test_records_leave_room_on_their_pages_for_their_updates(dsn: str) -> None:
    """A new table is made with the fill factor; one made before it gets it once (for its
    new pages), and opening again changes nothing more."""
    journal = await open_journal(dsn, IDENTITY)
    await journal.aclose()
    assert _fillfactor(dsn) == [f"fillfactor={RECORD_FILLFACTOR}"]

    with psycopg.connect(dsn, autocommit=True) as conn:  # as a table of an older version
        conn.execute("ALTER TABLE proactive_record RESET (fillfactor)")
    assert _fillfactor(dsn) is None
    journal = await open_journal(dsn, IDENTITY)
    await journal.mark_in_flight([1, 2])
    await journal.aclose()
    assert _fillfactor(dsn) == [f"fillfactor={RECORD_FILLFACTOR}"]


async def test_journal_connections_plan_a_statement_once(dsn: str) -> None:
    """The journal's hot statements (prepared by psycopg at their fifth run) keep one
    generic plan instead of being planned again at every run."""
    from proactive_async.journal._pg_database import connect

    conn = await connect(dsn)
    try:
        cursor = await conn.execute("SHOW plan_cache_mode")
        assert await cursor.fetchone() == ("force_generic_plan",)
    finally:
        await conn.close()


async def tables_of_an_older_version(dsn: str, change: str) -> str:
    """The journal's tables made (by their owner), then ``change`` (SQL: what an older
    version's tables lacked); the URL of a new role given them, not their owner."""
    journal = await open_journal(dsn, IDENTITY)
    await journal.aclose()
    role = f"journal_app_{uuid.uuid4().hex[:8]}"  # roles are the cluster's: one per test
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(change)
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT ALL ON SCHEMA public TO {role}")
        conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
    return dsn.replace("postgresql://postgres@", f"postgresql://{role}@")


async def test_a_role_that_does_not_own_the_table_opens_the_journal_as_it_is(dsn: str) -> None:
    """Tables made by another role (an older version's, without the fill factor): the
    journal opens and works (its indexes exist: not made again, which needs the owner);
    the fill factor, only an optimisation, is left unset."""
    app = await tables_of_an_older_version(dsn, "ALTER TABLE proactive_record RESET (fillfactor)")
    journal = await open_journal(app, IDENTITY)
    await journal.mark_in_flight([5])
    assert list(await journal.lookup([5])) == [5]
    await journal.aclose()
    assert _fillfactor(dsn) is None
