"""Distributed campaigns: planned once into PostgreSQL, sent chunk by chunk by any worker.

Architecture: ``plan_campaign`` reads and plans the input once (normalise, dedupe, group)
and stores, in one transaction, every record (``rejected`` and ``duplicate`` final at once,
the rest ``planned`` in a numbered chunk) and every chunk. The engine (arq, Celery) then
carries one job per chunk naming ``(campaign, chunk)``, nothing more: no token, no
password. ``ChunkRunner.run`` is what a job does, on any engine: take the chunk's lock,
load its planned records, and drive the same ``ChunkSender`` a one-process campaign uses,
with the PostgreSQL journal and the shared rate limit.

Every engine delivers at least once (a killed worker's job runs again), so exactly-once
comes from the journal, never from the engine:

* The chunk's session advisory lock is held by the running execution on its own
  connection. A second execution of the same chunk (a redelivery, a duplicate job) that
  cannot take the lock retries later: the first is alive. PostgreSQL drops the lock the
  moment the first one's connection dies (``kill -9``), so a redelivery runs at once.
* Under the lock, a record still ``planned`` was never sent: it is sent. A record
  ``in_flight`` was marked (durably, before its call) by an execution that died: it may
  have been processed, so it ends ``unknown`` (``interrupted``), never resent unless the
  campaign was enqueued with ``resend_unknown``. A final record is left alone.
* A chunk is ``done`` when all its records are final; the campaign is finished when every
  chunk is done. ``cancel_campaign`` ends every record still ``planned`` ``failed`` (kind
  ``cancelled``); records in flight finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import os
import secrets as _secrets
from collections.abc import AsyncIterator, Collection
from typing import IO, TYPE_CHECKING, Any, Final

import msgspec

from ._campaign import campaign_identity, file_records
from ._errors import JournalError
from ._journal import (
    INTERRUPTED,
    CampaignIdentity,
    SecretScrubber,
    kept_secrets,
    refuse_secrets,
)
from ._journal_pg import (
    PostgresJournal,
    campaign_location,
    check_stored_identity,
    connect,
    display_dsn,
    ensure_schema,
    split_location,
)
from ._models import ProactiveConversationRequest
from ._options import CAMPAIGN_RETRY, CampaignOptions
from ._planner import Chunk, PlannedTarget, Planner
from ._ratelimit import RateLimitBackend
from ._records import Outcome, OutcomeError, OutcomeStatus
from ._retry import RetryPolicy
from ._sender import ChunkSender, make_outcome

if TYPE_CHECKING:
    import psycopg

    from ._client import AsyncClient

__all__ = [
    "CANCELLED",
    "CampaignStatus",
    "ChunkBusyError",
    "ChunkRunner",
    "PlanResult",
    "SendSettings",
    "campaign_status",
    "cancel_campaign",
    "new_campaign_id",
    "plan_campaign",
    "write_report",
]

CANCELLED: Final = "cancelled"
"""``OutcomeError.kind`` of a record not sent because its campaign was cancelled."""
_ENCODER: Final = msgspec.json.Encoder()


class SendSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How workers send a campaign's chunks: stored with the campaign, read by every worker."""

    rate: float | None = None
    burst: float | None = None
    adaptive: bool | None = None
    max_attempts: int = CAMPAIGN_RETRY.max_attempts
    retry_ambiguous: bool = False
    resend_unknown: bool = False

    @classmethod
    def from_options(cls, options: CampaignOptions) -> SendSettings:
        return cls(
            rate=options.rate,
            burst=options.burst,
            adaptive=options.adaptive,
            max_attempts=options.retry.max_attempts,
            retry_ambiguous=options.retry.retry_ambiguous,
            resend_unknown=options.resend_unknown,
        )

    @property
    def retry(self) -> RetryPolicy:
        return dataclasses.replace(
            CAMPAIGN_RETRY, max_attempts=self.max_attempts, retry_ambiguous=self.retry_ambiguous
        )

    @property
    def paced(self) -> bool:
        """False only for ``adaptive=False`` with no rate: no limit at all."""
        return self.rate is not None or self.adaptive is not False


@dataclasses.dataclass(frozen=True)
class PlanResult:
    """What ``plan_campaign`` stored (or found already stored)."""

    campaign: str
    records: int
    chunks: int
    rejected: int
    duplicates: int
    pending_chunks: list[int]
    """Chunks not yet done: the ones to enqueue."""
    already_planned: bool


@dataclasses.dataclass(frozen=True)
class CampaignStatus:
    """Counts per record state, and whether every record has its outcome."""

    campaign: str
    counts: dict[str, int]
    chunks: int
    chunks_done: int
    cancelled: bool
    finished: bool

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class ChunkBusyError(JournalError):
    """Another execution of this chunk holds its lock (alive): retry later."""


def new_campaign_id() -> str:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    return f"c-{stamp}-{_secrets.token_hex(3)}"


# -- planning (the enqueue side) --------------------------------------------------------


async def plan_campaign(
    location: str,
    *,
    template: ProactiveConversationRequest,
    targets: str | os.PathLike[str],
    options: CampaignOptions,
    secrets: Collection[str] = (),
) -> PlanResult:
    """Plan ``targets`` once into the journal at ``location`` (``?campaign=`` names it).

    Idempotent: a campaign already planned (the same identity) is not planned again; its
    chunks not yet done are returned for enqueuing. Another campaign's name is refused.
    Records stream into PostgreSQL with COPY in one transaction: flat memory, and a crash
    mid-way leaves nothing half-planned.
    """
    dsn, campaign = split_location(location)
    where = f"{display_dsn(dsn)} (campaign {campaign!r})"
    identity = campaign_identity(template, targets, options)
    kept = kept_secrets(secrets)
    refuse_secrets(identity, kept)
    conn = await connect(dsn)
    try:
        await ensure_schema(conn)
        found = await _existing(conn, campaign, identity, where)
        if found is not None:
            return found
        return await _store_plan(conn, campaign, identity, template, targets, options, kept)
    finally:
        await conn.close()


async def _existing(
    conn: psycopg.AsyncConnection[Any], campaign: str, identity: CampaignIdentity, where: str
) -> PlanResult | None:
    cursor = await conn.execute(
        "SELECT template, input_fingerprint, options, records, chunks FROM proactive_campaign"
        " WHERE id = %s",
        (campaign,),
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    check_stored_identity(where, row, identity)
    cursor = await conn.execute(
        "SELECT chunk FROM proactive_chunk WHERE campaign_id = %s AND state <> 'done'"
        " ORDER BY chunk",
        (campaign,),
    )
    pending = [chunk for (chunk,) in await cursor.fetchall()]
    counts = await _state_counts(conn, campaign)
    return PlanResult(
        campaign=campaign,
        records=row[3],
        chunks=row[4],
        rejected=counts.get("rejected", 0),
        duplicates=counts.get("duplicate", 0),
        pending_chunks=pending,
        already_planned=True,
    )


async def _store_plan(
    conn: psycopg.AsyncConnection[Any],
    campaign: str,
    identity: CampaignIdentity,
    template: ProactiveConversationRequest,
    targets: str | os.PathLike[str],
    options: CampaignOptions,
    secrets: tuple[str, ...],
) -> PlanResult:
    scrubber = SecretScrubber(secrets)
    settings = _ENCODER.encode(SendSettings.from_options(options)).decode()
    records = rejected = duplicates = 0
    chunks: list[tuple[int, str | None]] = []
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO proactive_campaign (id, template, input_fingerprint, options, settings)"
            " VALUES (%s, %s, %s, %s, %s)",
            (campaign, identity.template, identity.input_fingerprint, identity.options, settings),
        )
        cursor = conn.cursor()
        copy_sql = (
            "COPY proactive_record (campaign_id, line, state, outcome, chunk, recipient,"
            " contact_id) FROM STDIN"
        )
        async with cursor.copy(copy_sql) as copy:
            planner = Planner(options.planner)
            source = file_records(targets, multiline=options.multiline_values)
            async with contextlib.aclosing(planner.plan(source)) as plan:
                async for item in plan:
                    if isinstance(item, Outcome):
                        records += 1
                        rejected += item.status is OutcomeStatus.REJECTED
                        duplicates += item.status is OutcomeStatus.DUPLICATE
                        encoded = scrubber.scrub(_ENCODER.encode(item)).decode()
                        await copy.write_row(
                            (campaign, item.line, item.status.value, encoded, None, None, None)
                        )
                        continue
                    number = len(chunks) + 1
                    variables = None if item.variables is None else _json(item.variables)
                    chunks.append((number, variables))
                    for target in item.targets:
                        records += 1
                        await copy.write_row(
                            (
                                campaign,
                                target.line,
                                "planned",
                                None,
                                number,
                                target.recipient,
                                target.contact_id,
                            )
                        )
        async with cursor.copy(
            "COPY proactive_chunk (campaign_id, chunk, variables) FROM STDIN"
        ) as copy:
            for number, variables in chunks:
                await copy.write_row((campaign, number, variables))
        await conn.execute(
            "UPDATE proactive_campaign SET planned_at = now(), records = %s, chunks = %s"
            " WHERE id = %s",
            (records, len(chunks), campaign),
        )
        if not chunks:
            await conn.execute(
                "UPDATE proactive_campaign SET finished_at = now() WHERE id = %s", (campaign,)
            )
    return PlanResult(
        campaign=campaign,
        records=records,
        chunks=len(chunks),
        rejected=rejected,
        duplicates=duplicates,
        pending_chunks=[number for number, _ in chunks],
        already_planned=False,
    )


# -- sending (the worker side) -----------------------------------------------------------


@dataclasses.dataclass
class _CampaignView:
    template: ProactiveConversationRequest
    settings: SendSettings
    journal: PostgresJournal
    rate_limit: RateLimitBackend | None


class ChunkRunner:
    """What a job does for ``(campaign, chunk)``, on any engine; one per worker process.

    Usage::

        runner = ChunkRunner(dsn, client, rate_limit_for=lambda template, settings: ...)
        await runner.run("c-20261127-1", 17)   # every record of chunk 17 ends final
        await runner.aclose()

    Parameters:
        dsn: the PostgreSQL journal's database (without ``?campaign=``).
        client: the worker's ``AsyncClient`` (its token from the worker's environment).
        rate_limit_for: builds the rate limit for a campaign (the shared one); None: none.
    """

    def __init__(
        self,
        dsn: str,
        client: AsyncClient,
        *,
        rate_limit_for: Any = None,
    ) -> None:
        self.dsn = split_location(dsn)[0]
        self.client = client
        self._rate_limit_for = rate_limit_for
        self._campaigns: dict[str, _CampaignView] = {}
        self._opening = asyncio.Lock()
        self._idle: list[psycopg.AsyncConnection[Any]] = []

    async def aclose(self) -> None:
        for view in self._campaigns.values():
            await view.journal.aclose()
            closer = getattr(view.rate_limit, "aclose", None)
            if closer is not None:
                await closer()
        self._campaigns.clear()
        for conn in self._idle:
            await conn.close()
        self._idle.clear()

    async def run(self, campaign: str, chunk: int) -> str:
        """Send the chunk's planned records; returns the chunk's state (``done``...).

        Raises ``ChunkBusyError`` when another execution of the chunk is alive.
        """
        view = await self._view(campaign)
        async with self._chunk_lock(campaign, chunk) as conn:
            cancelled, variables, rows = await _load_chunk(conn, campaign, chunk)
            planned = _targets(rows, "planned")
            died = _targets(rows, "in_flight")
            if died and view.settings.resend_unknown:
                planned, died = sorted(planned + died, key=lambda t: t.line), []
            outcomes = [make_outcome(t, OutcomeStatus.UNKNOWN, error=INTERRUPTED) for t in died]
            sender = ChunkSender(
                self.client,
                view.template,
                retry=view.settings.retry,
                rate_limit=view.rate_limit,
                journal=view.journal,
            )
            if cancelled:
                outcomes += [_cancelled(target) for target in planned]
            elif planned:
                await sender.send(Chunk(variables=variables, targets=planned))
            await view.journal.record(outcomes)
            await view.journal.flush()
            state = "aborted" if sender.aborted is not None else "done"
            await _finish_chunk(conn, campaign, chunk, state)
            return state

    async def _view(self, campaign: str) -> _CampaignView:
        view = self._campaigns.get(campaign)
        if view is not None:
            return view
        # Chunks of a new campaign often start together: one of them opens its journal.
        async with self._opening:
            view = self._campaigns.get(campaign)
            if view is not None:
                return view
            view = await self._open_view(campaign)
            self._campaigns[campaign] = view
            return view

    async def _open_view(self, campaign: str) -> _CampaignView:
        conn = await self._connection()
        try:
            cursor = await conn.execute(
                "SELECT template, settings FROM proactive_campaign WHERE id = %s", (campaign,)
            )
            row = await cursor.fetchone()
        finally:
            self._idle.append(conn)
        if row is None:
            raise JournalError(f"no campaign {campaign!r} in {display_dsn(self.dsn)}")
        template = _template(row[0])
        settings = msgspec.json.decode(row[1], type=SendSettings)
        journal = await PostgresJournal.attach(
            campaign_location(self.dsn, campaign),
            secrets=self.client.secrets,
        )
        limit = None
        if self._rate_limit_for is not None and settings.paced:
            limit = self._rate_limit_for(template, settings)
        return _CampaignView(template, settings, journal, limit)

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        return await connect(self.dsn)

    @contextlib.asynccontextmanager
    async def _chunk_lock(self, campaign: str, chunk: int) -> AsyncIterator[Any]:
        """Hold the chunk's advisory lock on a connection of its own while sending it."""
        conn = await self._connection()
        try:
            cursor = await conn.execute(_LOCK_SQL, (campaign, chunk))
            row = await cursor.fetchone()
        except BaseException:
            await conn.close()
            raise
        if not (row and row[0]):
            self._idle.append(conn)
            raise ChunkBusyError(f"chunk {chunk} of {campaign!r} is being sent elsewhere")
        try:
            yield conn
        except BaseException:
            await conn.close()  # closing drops the lock as well
            raise
        await conn.execute(_UNLOCK_SQL, (campaign, chunk))
        self._idle.append(conn)


_LOCK_SQL: Final = "SELECT pg_try_advisory_lock(hashtext(%s), %s)"
_UNLOCK_SQL: Final = "SELECT pg_advisory_unlock(hashtext(%s), %s)"


async def _load_chunk(
    conn: psycopg.AsyncConnection[Any], campaign: str, chunk: int
) -> tuple[bool, dict[str, Any] | None, list[tuple[int, str, str | None, int | None]]]:
    cursor = await conn.execute(
        "SELECT c.cancelled_at IS NOT NULL, k.variables FROM proactive_campaign c"
        " JOIN proactive_chunk k ON k.campaign_id = c.id WHERE c.id = %s AND k.chunk = %s",
        (campaign, chunk),
    )
    head = await cursor.fetchone()
    if head is None:
        raise JournalError(f"no chunk {chunk} in campaign {campaign!r}")
    cursor = await conn.execute(
        "SELECT line, state, recipient, contact_id FROM proactive_record"
        " WHERE campaign_id = %s AND chunk = %s ORDER BY line",
        (campaign, chunk),
    )
    rows = await cursor.fetchall()
    variables = None if head[1] is None else msgspec.json.decode(head[1])
    return bool(head[0]), variables, rows


async def _finish_chunk(
    conn: psycopg.AsyncConnection[Any], campaign: str, chunk: int, state: str
) -> None:
    async with conn.transaction():
        cursor = await conn.execute(
            "UPDATE proactive_chunk SET state = %s WHERE campaign_id = %s AND chunk = %s"
            " AND state <> 'done' RETURNING chunk",
            (state, campaign, chunk),
        )
        if state == "done" and await cursor.fetchone() is not None:
            await _count_done(conn, campaign, 1)


async def _count_done(conn: psycopg.AsyncConnection[Any], campaign: str, done: int) -> None:
    """Chunks newly done; the campaign is finished when all are (a counter, not a scan)."""
    if done:
        await conn.execute(
            "UPDATE proactive_campaign SET chunks_done = chunks_done + %s,"
            " finished_at = CASE WHEN finished_at IS NULL AND planned_at IS NOT NULL"
            " AND chunks_done + %s >= chunks THEN now() ELSE finished_at END WHERE id = %s",
            (done, done, campaign),
        )


def _targets(
    rows: list[tuple[int, str, str | None, int | None]], state: str
) -> list[PlannedTarget]:
    return [
        PlannedTarget(line=line, recipient=recipient, contact_id=contact)
        for line, found, recipient, contact in rows
        if found == state
    ]


def _template(stored: str) -> ProactiveConversationRequest:
    """The request template back from its stored JSON (wire names, as the identity has it)."""
    fields = msgspec.structs.fields(ProactiveConversationRequest)
    names = {field.encode_name: field.name for field in fields}
    data = msgspec.json.decode(stored)
    return ProactiveConversationRequest(**{names[key]: value for key, value in data.items()})


def _cancelled(target: PlannedTarget) -> Outcome:
    error = OutcomeError(kind=CANCELLED, message="not sent: the campaign was cancelled")
    return make_outcome(target, OutcomeStatus.FAILED, error=error)


def _json(value: object) -> str:
    return _ENCODER.encode(value).decode()


# -- operating -------------------------------------------------------------------------


async def campaign_status(location: str) -> CampaignStatus:
    dsn, campaign = split_location(location)
    conn = await connect(dsn)
    try:
        cursor = await conn.execute(
            "SELECT cancelled_at IS NOT NULL, chunks, planned_at IS NOT NULL"
            " FROM proactive_campaign WHERE id = %s",
            (campaign,),
        )
        head = await cursor.fetchone()
        if head is None:
            raise JournalError(f"no campaign {campaign!r} in {display_dsn(dsn)}")
        counts = await _state_counts(conn, campaign)
        cursor = await conn.execute(
            "SELECT count(*) FROM proactive_chunk WHERE campaign_id = %s AND state = 'done'",
            (campaign,),
        )
        done_row = await cursor.fetchone()
    finally:
        await conn.close()
    unfinished = counts.get("planned", 0) + counts.get("in_flight", 0)
    return CampaignStatus(
        campaign=campaign,
        counts=counts,
        chunks=head[1],
        chunks_done=done_row[0] if done_row else 0,
        cancelled=bool(head[0]),
        finished=bool(head[2]) and unfinished == 0,
    )


async def _state_counts(conn: psycopg.AsyncConnection[Any], campaign: str) -> dict[str, int]:
    cursor = await conn.execute(
        "SELECT state, count(*) FROM proactive_record WHERE campaign_id = %s GROUP BY state",
        (campaign,),
    )
    return {state: count for state, count in await cursor.fetchall()}


async def cancel_campaign(location: str) -> int:
    """Cancel: every record still ``planned`` ends ``failed`` (``cancelled``); how many."""
    dsn, campaign = split_location(location)
    error = _json(OutcomeError(kind=CANCELLED, message="not sent: the campaign was cancelled"))
    conn = await connect(dsn)
    try:
        async with conn.transaction():
            cursor = await conn.execute(
                "UPDATE proactive_campaign SET cancelled_at = coalesce(cancelled_at, now())"
                " WHERE id = %s RETURNING id",
                (campaign,),
            )
            if await cursor.fetchone() is None:
                raise JournalError(f"no campaign {campaign!r} in {display_dsn(dsn)}")
            cursor = await conn.execute(
                # The same fields, in the same order, as an Outcome the report writes.
                "UPDATE proactive_record SET state = 'failed', outcome = json_build_object("
                " 'line', line, 'status', 'failed', 'recipient', recipient,"
                " 'contactId', contact_id, 'conversationIds', '[]'::json, 'attempts', 0,"
                " 'error', %s::json, 'duplicateOf', NULL)::text"
                " WHERE campaign_id = %s AND state = 'planned'",
                (error, campaign),
            )
            cancelled = cursor.rowcount
            cursor = await conn.execute(
                "UPDATE proactive_chunk k SET state = 'done' WHERE campaign_id = %s"
                " AND state <> 'done' AND NOT EXISTS (SELECT 1 FROM proactive_record r"
                " WHERE r.campaign_id = %s AND r.chunk = k.chunk"
                " AND r.state IN ('planned', 'in_flight'))",
                (campaign, campaign),
            )
            await _count_done(conn, campaign, cursor.rowcount)
    finally:
        await conn.close()
    return cancelled


async def write_report(location: str, out: IO[bytes]) -> int:
    """The campaign's report, one JSON line per finished record in input order; how many."""
    dsn, campaign = split_location(location)
    conn = await connect(dsn)
    written = 0
    try:
        async with conn.transaction(), conn.cursor(name="proactive_report") as cursor:
            await cursor.execute(
                "SELECT outcome FROM proactive_record WHERE campaign_id = %s"
                " AND outcome IS NOT NULL ORDER BY line",
                (campaign,),
            )
            async for (outcome,) in cursor:
                out.write(outcome.encode() + b"\n")
                written += 1
    finally:
        await conn.close()
    return written
