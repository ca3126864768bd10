"""The PostgreSQL tables of every campaign, and the one way to connect to them.

psycopg 3 (async) rather than asyncpg: it is the maintained successor of psycopg2 that
most deployments already run, speaks libpq's URLs and environment (``PGPASSWORD``,
``sslmode``) unchanged, and has COPY and pipelining from asyncio for bulk loads.

Tables (created when missing):

* ``proactive_campaign``: one row per campaign: its id, the identity it is checked
  against (template, input fingerprint, planning options), created/planned/finished/
  cancelled times, and the run that owns it (a one-process campaign's fence).
* ``proactive_record``: one row per input line that reached the sending stage (or, for a
  distributed campaign, that was planned): ``state`` and the stored ``outcome`` (JSON,
  with every secret scrubbed), and for a distributed campaign its ``chunk`` and target.

The one-process journal (``_postgres``) and the distributed campaign both use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from .._errors import JournalError
from .._records import Outcome
from .._secrets import display_url as display_dsn  # the one rule for hiding a password
from .._secrets import hide_url_secrets
from ._base import CampaignIdentity, check_identity

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "DEFAULT_CAMPAIGN",
    "RECORD_FILLFACTOR",
    "SCHEMA",
    "campaign_location",
    "check_stored_identity",
    "connect",
    "display_dsn",
    "ensure_schema",
    "first_line",
    "index_sql",
    "outcome_json_sql",
    "split_location",
]

DEFAULT_CAMPAIGN: Final = "default"

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

_ENCODER: Final = msgspec.json.Encoder()


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
            f"{type(exc).__name__}: {hide_url_secrets(first_line(exc), dsn)}"
        ) from None


async def ensure_schema(conn: psycopg.AsyncConnection[Any], extra: Sequence[str] = ()) -> None:
    """Create the tables when missing; ``extra``: more statements, run after them."""
    async with conn.transaction():
        # Concurrent first opens must not race on CREATE TABLE.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('proactive-async:schema'))")
        for statement in (*SCHEMA, *extra):
            await conn.execute(statement)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
