"""The PostgreSQL journal: campaign state in a database many processes can share.

psycopg 3 (async) rather than asyncpg: it is the maintained successor of psycopg2 that
most deployments already run, speaks libpq's URLs and environment (``PGPASSWORD``,
``sslmode``) unchanged, and has COPY and pipelining from asyncio for bulk loads.

Tables (created when missing):

* ``proactive_campaign``: one row per campaign: its id, the identity it is checked
  against (template, input fingerprint, planning options), created/planned/finished/
  cancelled times.
* ``proactive_record``: one row per input line that reached the sending stage (or, for a
  distributed campaign, that was planned): ``state`` and the stored ``outcome`` (JSON,
  with every secret scrubbed), and for a distributed campaign its ``chunk`` and target.

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
marked before stays in flight (``unknown`` on resume), never sent twice.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Collection, Sequence
from secrets import token_hex
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from .._errors import JournalError
from .._records import Outcome, OutcomeStatus
from .._secrets import display_url as display_dsn  # the one rule for hiding a password
from ._base import (
    IN_FLIGHT,
    OUTCOME_WIRE_NAMES,
    CampaignIdentity,
    JournalEntry,
    SecretScrubber,
    check_identity,
    kept_secrets,
    process_name,
    refuse_secrets,
)
from ._group_commit import GroupCommit, JournalOp, Mark, Record, Release, check_usable, coalesce

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "SCHEMA",
    "PostgresJournal",
    "campaign_location",
    "check_stored_identity",
    "connect",
    "display_dsn",
    "ensure_schema",
    "index_sql",
    "outcome_json_sql",
    "split_location",
]

T = TypeVar("T")

DEFAULT_CAMPAIGN: Final = "default"
_LOCK_NAMESPACE: Final = "proactive-async:"

RECORD_FILLFACTOR: Final = 50
"""Percent of a ``proactive_record`` page filled by inserts: the rest keeps the versions
its rows' updates (``mark``, ``record``) write on the same page, as HOT updates (no index
entry, pruned in place). Full pages (the default, 100) made most updates write a new
version elsewhere, with an entry in each of the table's three indexes, and every later
lookup by line wade through them. Measured (20k records, in batches of 8 a mark then a
record of ~200-byte outcomes, the backend's CPU from /proc): 378-502 us a record at 100,
47-53 at 50, 50 at 70; the table and its indexes 11.2 MB -> 13.1 MB."""


def index_sql(name: str, on: str) -> str:
    """``CREATE INDEX IF NOT EXISTS name ON on``, run only when no such index exists:
    PostgreSQL checks that the role owns the table before it sees the index is there, so
    a role given the tables (not their owner) could not open a journal at all."""
    return f"""DO $$ BEGIN
        IF to_regclass('{name}') IS NULL THEN
            CREATE INDEX IF NOT EXISTS {name} ON {on};
        END IF;
    END $$"""


SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS proactive_campaign (
        id text PRIMARY KEY,
        template text NOT NULL,
        input_fingerprint text NOT NULL,
        options text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        planned_at timestamptz,
        finished_at timestamptz,
        cancelled_at timestamptz,
        settings text NOT NULL DEFAULT '{}',
        chunks bigint NOT NULL DEFAULT 0,
        chunks_done bigint NOT NULL DEFAULT 0,
        records bigint NOT NULL DEFAULT 0,
        owner text
    )""",
    # Tables made before the owner fence get its column once (only their owner can).
    """DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                       WHERE table_schema = current_schema()
                       AND table_name = 'proactive_campaign' AND column_name = 'owner') THEN
            ALTER TABLE proactive_campaign ADD COLUMN owner text;
        END IF;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'proactive_campaign has no column owner (an older version made it)'
            ' and this role cannot add it: open the journal once as the tables'' owner';
    END $$""",
    f"""CREATE TABLE IF NOT EXISTS proactive_record (
        campaign_id text NOT NULL REFERENCES proactive_campaign (id) ON DELETE CASCADE,
        line bigint NOT NULL,
        state text NOT NULL,
        outcome text,
        chunk bigint,
        recipient text,
        contact_id bigint,
        PRIMARY KEY (campaign_id, line)
    ) WITH (fillfactor = {RECORD_FILLFACTOR})""",
    # Tables made before the fill factor was set get it for their new pages.
    # Only an optimisation: a role that does not own the table leaves it as it is.
    f"""DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = 'proactive_record'::regclass
                       AND reloptions @> ARRAY['fillfactor={RECORD_FILLFACTOR}']) THEN
            ALTER TABLE proactive_record SET (fillfactor = {RECORD_FILLFACTOR});
        END IF;
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END $$""",
    index_sql(
        "proactive_record_chunk", "proactive_record (campaign_id, chunk) WHERE chunk IS NOT NULL"
    ),
    """CREATE TABLE IF NOT EXISTS proactive_chunk (
        campaign_id text NOT NULL REFERENCES proactive_campaign (id) ON DELETE CASCADE,
        chunk bigint NOT NULL,
        variables text,
        state text NOT NULL DEFAULT 'queued',
        PRIMARY KEY (campaign_id, chunk)
    )""",
)
"""The tables every campaign uses; a distributed campaign adds its own
(``proactive_async.distributed._store.SCHEMA``), created with these by ``ensure_schema``."""
_RELEASE_SQL: Final = (
    "DELETE FROM proactive_record WHERE campaign_id = %s AND state = 'in_flight'"
    " AND chunk IS NULL AND line = ANY(%b::bigint[])",
    "UPDATE proactive_record SET state = 'planned' WHERE campaign_id = %s"
    " AND state = 'in_flight' AND chunk IS NOT NULL AND line = ANY(%b::bigint[])",
)
RESENDABLE_STATES: Final = (IN_FLIGHT, OutcomeStatus.UNKNOWN.value, OutcomeStatus.FAILED.value)
"""States a line's row may be in when it is marked in flight again: a resume sending it
again as asked (``resend_unknown``, ``resend_failed``). ``sent``, ``rejected`` and
``duplicate`` are final: a mark of such a line is refused, whatever asked for it."""
_RESENDABLE: Final = ", ".join(f"'{state}'" for state in RESENDABLE_STATES)

# Records and marks in one statement (coalesce keeps their lines apart): autocommit makes
# it one transaction, without a BEGIN and a COMMIT around it. A line's state is its
# outcome's status, read from the outcome itself. Data-modifying WITH clauses run once,
# whatever the SELECT reads.
#
# The fence: ``holder`` locks the campaign's row (FOR SHARE) and reads its latest version.
# Marks are made only while this run is its owner, it is not cancelled and no line of
# theirs is final: all of them or none. A run taking the
# campaign over (its UPDATE of ``owner``) waits for a mark being made, then every later mark
# of the old owner finds another owner. The row lock is what makes that order certain: a
# plain read could see the owner as it was when the statement began.
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
    ), marked AS (
        INSERT INTO proactive_record (campaign_id, line, state)
        SELECT %(campaign)s, line, 'in_flight'
        FROM (SELECT DISTINCT unnest(%(marks)b::bigint[]) AS line) AS m
        WHERE EXISTS (SELECT 1 FROM holder WHERE ours AND NOT cancelled)
        AND NOT EXISTS (SELECT 1 FROM proactive_record f WHERE f.campaign_id = %(campaign)s
            AND f.line = ANY(%(marks)b::bigint[]) AND f.state NOT IN ({_RESENDABLE}))
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


def outcome_json_sql(**columns: str) -> str:
    """SQL that builds an ``Outcome``'s JSON, for an outcome written by SQL alone.

    ``columns``: an SQL expression per field, by its Python name; a field left out gets its
    default. The wire names, their order and the defaults come from ``Outcome`` itself,
    so the SQL cannot drift from what ``msgspec`` encodes and decodes::

        outcome_json_sql(line="line", status="'failed'", error="%s::json")
    """
    pairs = []
    for field in msgspec.structs.fields(Outcome):
        value = columns.pop(field.name, None)
        pairs.append(f"'{field.encode_name}', {value or _default_json(field)}")
    if columns:
        raise ValueError(f"Outcome has no field {', '.join(sorted(columns))}")
    return f"json_build_object({', '.join(pairs)})"


def _default_json(field: msgspec.structs.FieldInfo) -> str:
    if field.default is not msgspec.NODEFAULT:
        default = field.default
    elif field.default_factory is not msgspec.NODEFAULT:
        default = field.default_factory()
    else:
        raise ValueError(f"Outcome.{field.name} has no default: give its SQL")
    literal = _ENCODER.encode(default).decode().replace("'", "''")
    return f"'{literal}'::json"


def split_location(location: str) -> tuple[str, str]:
    """``postgresql://...?campaign=NAME`` -> (the DSN without it, the campaign id)."""
    parts = urlsplit(location)
    query = parse_qsl(parts.query, keep_blank_values=True)
    campaign = DEFAULT_CAMPAIGN
    kept = []
    for name, value in query:
        if name == "campaign":
            campaign = value
        else:
            kept.append((name, value))
    if not campaign:
        raise JournalError("the journal URL's campaign= is empty")
    return urlunsplit(parts._replace(query=urlencode(kept))), campaign


def campaign_location(dsn: str, campaign: str) -> str:
    """The journal location of ``campaign`` in the database at ``dsn`` (``split_location``'s
    inverse)."""
    return f"{dsn}{'&' if '?' in dsn else '?'}{urlencode({'campaign': campaign})}"


def check_stored_identity(where: str, row: Sequence[Any], identity: CampaignIdentity) -> None:
    """``check_identity`` for a row starting with template, input fingerprint, options."""
    stored = dict(zip(("template", "input_fingerprint", "options"), row[:3], strict=True))
    check_identity(where, stored, identity)


_GENERIC_PLANS: Final = "SET plan_cache_mode = force_generic_plan"
"""A statement the connection runs again and again (psycopg prepares it at its fifth run)
is planned once, not at each run. PostgreSQL kept custom plans for the journal's writes
(records, releases and marks in one statement, its fence's conditions): 267 us of planning
a run against 105 us executing (pg_stat_statements with track_planning, bench 10: 2,310 ms
planning for 8,639 runs); with the generic plan, 20 ms in all, and the run as fast. Bench
10's workers 3.6k-3.9k -> 4.5k-5.3k calls/s."""


async def connect(dsn: str, **options: str) -> psycopg.AsyncConnection[Any]:
    """An autocommit connection; JournalError (never the password) when it cannot be had.
    ``options``: more libpq parameters (``keepalives=1``...), the DSN's own win."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - the extra is in the dev install
        raise JournalError(
            "a PostgreSQL journal needs psycopg: pip install 'proactive-async[postgres]'"
        ) from exc
    try:
        conninfo = psycopg.conninfo.make_conninfo(dsn, **options) if options else dsn
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        if conn.info.server_version >= 120000:  # plan_cache_mode came with PostgreSQL 12
            await conn.execute(_GENERIC_PLANS)
        return conn
    except psycopg.Error as exc:
        raise JournalError(
            f"cannot open the journal database {display_dsn(dsn)}: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None


async def ensure_schema(conn: psycopg.AsyncConnection[Any], extra: Sequence[str] = ()) -> None:
    """Create the tables when missing; ``extra``: more statements, run after them."""
    async with conn.transaction():
        # Concurrent first opens must not race on CREATE TABLE.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('proactive-async:schema'))")
        for statement in (*SCHEMA, *extra):
            await conn.execute(statement)


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
            resumed = await _opening(where, open_campaign(writer, campaign, identity, where, owner))
            reader = await connect(dsn)
        except BaseException:
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

    async def mark_in_flight(self, lines: Sequence[int]) -> None:
        self._check_usable()
        if lines:
            await self._group.commit(Mark(list(lines)))

    async def still_in_flight(self, lines: Sequence[int]) -> None:
        """None (every line), as ``mark_in_flight`` marks every line: no fence to lose."""
        self._check_usable()

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
                    await conn.execute(statement, (self.campaign, batch.releases))
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
        return JournalError(
            f"cannot {what} the journal {self.where}: {type(exc).__name__}: {_first_line(exc)}"
        )


async def _opening(where: str, step: Awaitable[T]) -> T:
    """``step`` of opening; a database error is a JournalError naming the journal."""
    import psycopg

    try:
        return await step
    except psycopg.Error as exc:
        raise JournalError(
            f"cannot open the journal {where}: {type(exc).__name__}: {_first_line(exc)}"
        ) from None


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
