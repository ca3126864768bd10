"""The PostgreSQL journal: campaign state in a database many processes can share.

psycopg 3 (async) rather than asyncpg: it is the maintained successor of psycopg2 that
most deployments already run, speaks libpq's URLs and environment (``PGPASSWORD``,
``sslmode``) unchanged, and has COPY and pipelining from asyncio for bulk loads.

The tables, the connection and the rules every PostgreSQL user of them shares (the
distributed campaign too) are in ``_pg_database``.

States of a line and their transitions::

    (no row) --mark--> in_flight --record--> sent | failed | unknown | rejected | duplicate
    planned  --mark--> in_flight --release--> planned (certainly not processed)
    (no row) --record--> rejected | duplicate          (final when planned)

``in_flight`` is committed before the call is made; a line found ``in_flight`` by a later
run whose sender is gone ended ``unknown`` (``interrupted``) and is never resent unless
asked. Commits go through ``GroupCommit`` on one writer connection: callers arriving
during a commit share the next one. Reads use a second connection.

A single-process campaign holds a session advisory lock on its campaign while the journal
is open, so a second process opening the same campaign is refused. The lock is only a
hint (a transaction-mode pooler shares one server session among clients; a session can
be lost unnoticed): the fence is in the data. Opening makes the run the campaign's
``owner`` (a token of its own), and every mark checks, in the statement that makes it,
that the run is still the owner, that the campaign is not cancelled and that the line is
not final. A run whose mark is refused stops with a ``JournalError`` saying why; what it
marked before stays in flight (``unknown`` on resume), never sent twice. Before a retry
the fence is read again (``still_in_flight``); a release is made only by the owner; an
outcome never replaces a final one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Collection, Sequence
from secrets import token_hex
from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec

from .._errors import JournalError
from .._records import Outcome, OutcomeStatus
from ._base import (
    IN_FLIGHT,
    OUTCOME_WIRE_NAMES,
    CampaignIdentity,
    JournalEntry,
    SecretScrubber,
    kept_secrets,
    process_name,
    refuse_secrets,
)
from ._group_commit import GroupCommit, JournalOp, Mark, Record, Release, check_usable, coalesce
from ._pg_database import (
    check_stored_identity,
    connect,
    display_dsn,
    ensure_schema,
    first_line,
    split_location,
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["RESENDABLE_STATES", "PostgresJournal", "open_campaign"]

T = TypeVar("T")

_LOCK_NAMESPACE: Final = "proactive-async:"

_OWNED: Final = (
    "EXISTS (SELECT 1 FROM proactive_campaign WHERE id = %(campaign)s AND owner = %(owner)s)"
)
_RELEASE_SQL: Final = (
    "DELETE FROM proactive_record WHERE campaign_id = %(campaign)s AND state = 'in_flight'"
    f" AND chunk IS NULL AND line = ANY(%(releases)b::bigint[]) AND {_OWNED}",
    "UPDATE proactive_record SET state = 'planned' WHERE campaign_id = %(campaign)s"
    " AND state = 'in_flight' AND chunk IS NOT NULL AND line = ANY(%(releases)b::bigint[])"
    f" AND {_OWNED}",
)
"""Releases, run in the transaction of a write (its ``holder`` has the campaign's row
locked): only while this run owns the campaign. Taken over, a line stays in flight: it
may be the new owner's mark now, and deleting it would let a later run send it again."""
_HELD_SQL: Final = (
    "SELECT owner = %(owner)s AND cancelled_at IS NULL FROM proactive_campaign"
    " WHERE id = %(campaign)s"
)
RESENDABLE_STATES: Final = (IN_FLIGHT, OutcomeStatus.UNKNOWN.value, OutcomeStatus.FAILED.value)
"""States a line's row may be in when it is marked in flight again: a resume sending it
again as asked (``resend_unknown``, ``resend_failed``). ``sent``, ``rejected`` and
``duplicate`` are final: a mark of such a line is refused, whatever asked for it."""
_RESENDABLE: Final = ", ".join(f"'{state}'" for state in RESENDABLE_STATES)
_FINAL: Final = ", ".join(
    f"'{status.value}'" for status in OutcomeStatus if status.value not in RESENDABLE_STATES
)
"""``sent``, ``rejected``, ``duplicate``: an outcome recorded later never replaces them
(a resumed run's "interrupted" written over the old owner's ``sent``, say)."""

# Records and marks in one statement (coalesce keeps their lines apart): autocommit makes
# it one transaction, without a BEGIN and a COMMIT around it. A line's state is its
# outcome's status, read from the outcome itself. Data-modifying WITH clauses run once,
# whatever the SELECT reads.
#
# The fence: ``holder`` locks the campaign's row (FOR SHARE) and reads its latest version.
# Marks are made only while this run is its owner and it is not cancelled, and a line only
# if it is not final. A run taking the campaign over (its UPDATE of ``owner``) waits for a
# mark being made, then every later mark of the old owner finds another owner. The row
# lock is what makes that order certain: a plain read could see the owner as it was when
# the statement began. (Refusing a whole mark when one of its lines is final would take a
# subquery on proactive_record; its generic plan, made while the table was still empty,
# scanned the whole table at every mark: a first run fell from 9.5k to 1.9k records/s.)
_WRITE_SQL: Final = f"""
    WITH holder AS (
        SELECT owner = %(owner)s AS ours, cancelled_at IS NOT NULL AS cancelled
        FROM proactive_campaign WHERE id = %(campaign)s FOR SHARE
    ), recorded AS (
        INSERT INTO proactive_record (campaign_id, line, state, outcome)
        SELECT %(campaign)s, line, outcome::json->>'{OUTCOME_WIRE_NAMES["status"]}', outcome
        FROM unnest(%(lines)b::bigint[], %(outcomes)b::text[]) AS r (line, outcome)
        ON CONFLICT (campaign_id, line)
        DO UPDATE SET state = EXCLUDED.state, outcome = EXCLUDED.outcome
        WHERE proactive_record.state NOT IN ({_FINAL})
    ), marked AS (
        INSERT INTO proactive_record (campaign_id, line, state)
        SELECT %(campaign)s, line, 'in_flight'
        FROM (SELECT DISTINCT unnest(%(marks)b::bigint[]) AS line) AS m
        WHERE EXISTS (SELECT 1 FROM holder WHERE ours AND NOT cancelled)
        ON CONFLICT (campaign_id, line) DO UPDATE SET state = 'in_flight', outcome = NULL
        WHERE proactive_record.state IN ({_RESENDABLE})
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM marked), ours, cancelled FROM holder
"""
_LOOKUP_SQL: Final = (
    "SELECT line, state, outcome FROM proactive_record"
    " WHERE campaign_id = %s AND line = ANY(%b::bigint[]) AND state <> 'planned'"
)

_ENCODER: Final = msgspec.json.Encoder()
_OUTCOME: Final = msgspec.json.Decoder(Outcome)


async def open_campaign(
    conn: psycopg.AsyncConnection[Any],
    campaign: str,
    identity: CampaignIdentity,
    where: str,
    owner: str,
) -> bool:
    """Create the campaign's row, or check it is this campaign, and make ``owner`` (this
    run's token) its owner; True when it has lines. A cancelled campaign is refused."""
    async with conn.transaction():
        cursor = await conn.execute(
            "SELECT template, input_fingerprint, options, planned_at IS NOT NULL,"
            " cancelled_at IS NOT NULL FROM proactive_campaign WHERE id = %s FOR UPDATE",
            (campaign,),
        )
        row = await cursor.fetchone()
        if row is not None and row[3]:
            # Its chunks belong to the workers: a second sender here would not be fenced.
            raise JournalError(
                f"{where} is a distributed campaign (enqueued for workers): follow it with "
                "`proactive-async status`, not a one-process run"
            )
        if row is None:
            await conn.execute(
                "INSERT INTO proactive_campaign"
                " (id, template, input_fingerprint, options, owner) VALUES (%s, %s, %s, %s, %s)",
                (campaign, identity.template, identity.input_fingerprint, identity.options, owner),
            )
            return False
        check_stored_identity(where, row, identity)
        if row[4]:
            raise JournalError(f"{where} was cancelled (proactive-async cancel): not resumed")
        # Taken over: a run still marking under the old owner is refused from now on.
        await conn.execute(
            "UPDATE proactive_campaign SET owner = %s WHERE id = %s", (owner, campaign)
        )
        cursor = await conn.execute(
            "SELECT EXISTS (SELECT 1 FROM proactive_record WHERE campaign_id = %s"
            " AND state <> 'planned')",
            (campaign,),
        )
        found = await cursor.fetchone()
        return bool(found and found[0])


class PostgresJournal:
    """The durable state of one campaign in PostgreSQL (a ``Journal`` backend).

    Usage::

        journal = await PostgresJournal.open(
            "postgresql://app@db/campaigns?campaign=spring-sale", identity,
            secrets=client.secrets,
        )

    Parameters (of :meth:`open`):
        location: a ``postgresql://`` URL; ``?campaign=NAME`` names the campaign in the
            database (default ``default``), the rest is libpq's.
        identity: the campaign's identity; another campaign's is refused.
        secrets: strings never to be stored (the token).
        exclusive: hold the campaign's advisory lock while open, so that a second run is
            refused at once. Without it, a second run opening the campaign takes it over
            (the fence in the data): this one's next mark stops it.
    """

    resumed: bool

    def __init__(
        self,
        writer: psycopg.AsyncConnection[Any],
        reader: psycopg.AsyncConnection[Any],
        *,
        campaign: str,
        where: str,
        resumed: bool,
        secrets: tuple[str, ...],
        locked: bool = False,
        owner: str = "",
    ) -> None:
        self.resumed = resumed
        self.campaign = campaign
        self._owner = owner
        self._locked = locked
        self.where = where
        self._writer_conn = writer
        self._reader = reader
        self._scrubber = SecretScrubber(secrets)
        self._group: GroupCommit[JournalOp] = GroupCommit(self._write, error=self._write_error)
        self._closed = False

    @classmethod
    async def open(
        cls,
        location: str,
        identity: CampaignIdentity,
        *,
        secrets: Collection[str] = (),
        exclusive: bool = True,
    ) -> PostgresJournal:
        kept = kept_secrets(secrets)
        refuse_secrets(identity, kept)
        dsn, campaign = split_location(os.fspath(location))
        where = f"{display_dsn(dsn)} (campaign {campaign!r})"
        writer = await connect(dsn)
        reader: psycopg.AsyncConnection[Any] | None = None
        locked = False
        owner = f"{process_name()}/{token_hex(8)}"  # a run's own: no other has it
        try:
            if exclusive and not await _try_lock(writer, campaign):
                raise JournalError(
                    f"the journal {where} is in use by another run; wait for it to end"
                )
            locked = exclusive
            await _opening(where, ensure_schema(writer))
            # The reader first: an open that fails must not have taken the campaign over
            # (the run it took it from would stop, and this one would not start).
            reader = await connect(dsn)
            resumed = await _opening(where, open_campaign(writer, campaign, identity, where, owner))
        except BaseException:
            if reader is not None:
                await reader.close()
            await _close_unlocked(writer, campaign if locked else None)
            raise
        return cls(
            writer,
            reader,
            campaign=campaign,
            where=where,
            resumed=resumed,
            secrets=kept,
            locked=locked,
            owner=owner,
        )

    async def __aenter__(self) -> PostgresJournal:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def lookup(self, lines: Sequence[int]) -> dict[int, JournalEntry]:
        self._check_usable()
        if not lines:
            return {}
        try:
            cursor = await self._reader.execute(_LOOKUP_SQL, (self.campaign, list(lines)))
            rows = await cursor.fetchall()
        except Exception as exc:
            raise self._error("read", exc) from None
        return {row[0]: _entry(row) for row in rows}

    async def mark_in_flight(self, lines: Sequence[int]) -> list[int]:
        """Every line, once committed (a mark refused raises): a fenced journal, so the
        sender checks ``still_in_flight`` before each retry."""
        self._check_usable()
        if lines:
            await self._group.commit(Mark(list(lines)))
        return list(lines)

    async def still_in_flight(self, lines: Sequence[int]) -> list[int]:
        """``lines`` while this run still owns the campaign and it is not cancelled, else
        none: read before a retry, so that a run taken over or cancelled makes no new call."""
        self._check_usable()
        if not lines:
            return []
        try:
            cursor = await self._reader.execute(
                _HELD_SQL, {"campaign": self.campaign, "owner": self._owner}
            )
            row = await cursor.fetchone()
        except Exception as exc:
            raise self._error("read", exc) from None
        return list(lines) if row is not None and row[0] else []

    async def release(self, lines: Sequence[int]) -> None:
        self._check_usable()
        if lines:
            await self._group.add(Release(list(lines)), rows=len(lines))

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        self._check_usable()
        if not outcomes:
            return
        op = Record([o.line for o in outcomes], [_ENCODER.encode(o) for o in outcomes])
        await self._group.add(op, rows=len(outcomes))

    async def flush(self) -> None:
        self._check_usable()
        await self._group.commit()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._group.aclose()  # commits what is buffered, unless a commit failed
        finally:
            await self._reader.close()
            await _close_unlocked(self._writer_conn, self.campaign if self._locked else None)

    async def _write(self, ops: list[JournalOp]) -> None:
        batch = coalesce(ops)
        conn = self._writer_conn
        scrub = self._scrubber.scrub
        params = {
            "campaign": self.campaign,
            "owner": self._owner,
            "lines": list(batch.records),
            "outcomes": [scrub(encoded).decode() for encoded in batch.records.values()],
            "marks": batch.marks,
        }
        if not batch.releases:  # the usual commit: one statement, its own transaction
            cursor = await conn.execute(_WRITE_SQL, params)
            fence = await cursor.fetchone()
        else:
            # With releases (applied after the marks): one round trip for the whole commit
            # (BEGIN, the statements, COMMIT); the pipeline sends them together.
            async with conn.pipeline(), conn.transaction():
                cursor = await conn.execute(_WRITE_SQL, params)
                for statement in _RELEASE_SQL:
                    await conn.execute(statement, params | {"releases": batch.releases})
                fence = await cursor.fetchone()
        if batch.marks and (fence is None or fence[0] < len(batch.marks)):
            # What was recorded is kept (the same statement); nothing more is sent.
            raise JournalError(self._refusal(fence))

    def _refusal(self, fence: tuple[Any, ...] | None) -> str:
        """Why a mark was refused, from the campaign row the write statement read."""
        if fence is None:
            reason = "its campaign is gone from the database"
        elif fence[2]:
            reason = "the campaign was cancelled (proactive-async cancel)"
        elif not fence[1]:
            reason = "another run took the campaign over"
        else:
            reason = "a line to send has already ended (sent, rejected or duplicate)"
        return (
            f"the journal {self.where} refused to mark lines in flight: {reason};"
            " nothing more is sent"
        )

    def _check_usable(self) -> None:
        check_usable(self.where, self._group.failure, self._closed)

    def _write_error(self, exc: Exception) -> Exception:
        return exc if isinstance(exc, JournalError) else self._error("write", exc)

    def _error(self, what: str, exc: Exception) -> JournalError:
        return _journal_error(what, self.where, exc)


def _journal_error(what: str, where: str, exc: Exception) -> JournalError:
    """``cannot <what> the journal <where>: <error's type>: <its first line>``."""
    return JournalError(
        f"cannot {what} the journal {where}: {type(exc).__name__}: {first_line(exc)}"
    )


async def _opening(where: str, step: Awaitable[T]) -> T:
    """``step`` of opening; a database error is a JournalError naming the journal."""
    import psycopg

    try:
        return await step
    except psycopg.Error as exc:
        raise _journal_error("open", where, exc) from None


async def _close_unlocked(conn: psycopg.AsyncConnection[Any], campaign: str | None) -> None:
    """Release the campaign's advisory lock (if held), then close. Closing alone releases
    it too, but only once the server has seen the connection go: a moment later, when the
    same process may already be opening the campaign again and would find it "in use"."""
    if campaign is not None and not conn.closed:
        with contextlib.suppress(Exception):  # a broken connection: closing releases it
            await conn.execute(
                "SELECT pg_advisory_unlock(hashtext(%s))", (_LOCK_NAMESPACE + campaign,)
            )
    await conn.close()


async def _try_lock(conn: psycopg.AsyncConnection[Any], campaign: str) -> bool:
    cursor = await conn.execute(
        "SELECT pg_try_advisory_lock(hashtext(%s))", (_LOCK_NAMESPACE + campaign,)
    )
    row = await cursor.fetchone()
    return bool(row and row[0])


def _entry(row: tuple[Any, ...]) -> JournalEntry:
    line, state, outcome = row
    if state == IN_FLIGHT or outcome is None:
        return JournalEntry(line=line, state=IN_FLIGHT)
    return JournalEntry(line=line, state=state, outcome=_OUTCOME.decode(outcome))
