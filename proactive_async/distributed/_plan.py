"""Planning a distributed campaign: the input read once, stored as records, chunks and slices.

``plan_campaign`` normalises, dedupes and groups the input (the one-process campaign's
``Planner``) and stores, in one transaction, every record (``rejected`` and ``duplicate``
final at once, the rest ``planned``), every chunk (the targets of one call) and every
slice (whole chunks, about ``job_size`` records: what one job sends). Records and chunks
stream into PostgreSQL with COPY: flat memory, and a crash mid-way leaves nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import secrets as _secrets
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._campaign import campaign_identity, file_records
from .._errors import JournalError
from .._input import count_records
from .._models import ProactiveConversationRequest
from .._options import CAMPAIGN_RETRY, CampaignOptions
from .._planner import Chunk, Planner
from .._records import Outcome, OutcomeStatus
from .._retry import RetryPolicy
from ..journal import CampaignIdentity, SecretScrubber, kept_secrets, refuse_secrets
from ..journal._pg_database import check_stored_identity, connect, display_dsn, split_location
from ._connect import ensure_distributed_schema
from ._store import ANALYZE

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "DEFAULT_JOB_SIZE",
    "PlanResult",
    "SendSettings",
    "new_campaign_id",
    "plan_campaign",
    "reopen_campaign",
]

DEFAULT_JOB_SIZE: Final = 1000
"""Records per slice (one job). Measured with benchmark 10: 250 records per job spent a
fifth of the time claiming and finishing slices; past 1,000 the gain is under noise while
a dead worker's slice takes longer to finish elsewhere."""
_ENCODER: Final = msgspec.json.Encoder()


class SendSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How workers send a campaign's slices: stored with the campaign, read by every worker."""

    rate: float | None = None
    burst: float | None = None
    adaptive: bool | None = None
    max_attempts: int = CAMPAIGN_RETRY.max_attempts
    retry_ambiguous: bool = False
    resend_unknown: bool = False

    @classmethod
    def from_options(cls, options: CampaignOptions) -> SendSettings:
        """The settings a campaign's options give its workers."""
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
        """The campaign's retry policy with these attempts and ``retry_ambiguous``."""
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
    slices: int
    rejected: int
    duplicates: int
    pending_slices: list[int]
    """Slices not yet done: the jobs to enqueue."""
    already_planned: bool


def new_campaign_id() -> str:
    """A new campaign's id: ``c-``, the UTC time to the second, six random hex digits."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    return f"c-{stamp}-{_secrets.token_hex(3)}"


async def plan_campaign(
    location: str,
    *,
    template: ProactiveConversationRequest,
    targets: str | os.PathLike[str],
    options: CampaignOptions,
    secrets: Collection[str] = (),
    job_size: int = DEFAULT_JOB_SIZE,
) -> PlanResult:
    """Plan ``targets`` once into the journal at ``location`` (``?campaign=`` names it).

    Idempotent: a campaign already planned (the same identity) is not planned again; its
    slices not yet done are returned for enqueuing, and an abort (a fatal answer) is
    cleared so workers take it up again. Another campaign's name is refused.
    """
    if job_size < 1:
        raise ValueError("job_size must be at least 1")
    dsn, campaign = split_location(location)
    where = f"{display_dsn(dsn)} (campaign {campaign!r})"
    identity = campaign_identity(template, targets, options)
    kept = kept_secrets(secrets)
    refuse_secrets(identity, kept)
    conn = await connect(dsn)
    try:
        await ensure_distributed_schema(conn)
        found = await reopen_campaign(conn, campaign, identity, where)
        if found is not None:
            return found
        plan = _Storing(conn, campaign, SecretScrubber(kept), job_size)
        result = await plan.store(identity, template, targets, options)
        await conn.execute(ANALYZE)
        return result
    finally:
        await conn.close()


async def reopen_campaign(
    conn: psycopg.AsyncConnection[Any], campaign: str, identity: CampaignIdentity, where: str
) -> PlanResult | None:
    """The stored campaign (checked to be this one) with its abort cleared; None: none.
    A one-process campaign's row (never planned: planning is one transaction) is refused:
    its lines belong to the run that journals them, which workers would not be fenced by."""
    async with conn.transaction():
        cursor = await conn.execute(
            "SELECT template, input_fingerprint, options, records, chunks, slices,"
            " planned_at IS NULL FROM proactive_campaign WHERE id = %s FOR UPDATE",
            (campaign,),
        )
        row = await cursor.fetchone()
        if row is None:
            return None
        if row[6]:
            raise JournalError(
                f"{where} is a one-process campaign (`proactive-async campaign --journal`): "
                "resume it that way, or enqueue it under another campaign name"
            )
        check_stored_identity(where, row, identity)
        await conn.execute(
            "UPDATE proactive_campaign SET aborted_at = NULL, abort_reason = NULL WHERE id = %s",
            (campaign,),
        )
    cursor = await conn.execute(
        "SELECT slice FROM proactive_slice WHERE campaign_id = %s AND state = 'open'"
        " ORDER BY slice",
        (campaign,),
    )
    pending = [number for (number,) in await cursor.fetchall()]
    cursor = await conn.execute(
        "SELECT state, count(*) FROM proactive_record WHERE campaign_id = %s"
        " AND state IN ('rejected', 'duplicate') GROUP BY state",
        (campaign,),
    )
    counts = dict(await cursor.fetchall())
    return PlanResult(
        campaign=campaign,
        records=row[3],
        chunks=row[4],
        slices=row[5],
        rejected=counts.get("rejected", 0),
        duplicates=counts.get("duplicate", 0),
        pending_slices=pending,
        already_planned=True,
    )


class _Storing:
    """One planning pass: records and chunks by COPY, cut into slices as they come."""

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        campaign: str,
        scrubber: SecretScrubber,
        job_size: int,
    ) -> None:
        self.conn = conn
        self.campaign = campaign
        self.scrubber = scrubber
        self.job_size = job_size
        self.records = self.rejected = self.duplicates = 0
        self.chunks: list[tuple[int, str | None, int]] = []
        self.slice_sizes: list[int] = []

    async def store(
        self,
        identity: CampaignIdentity,
        template: ProactiveConversationRequest,
        targets: str | os.PathLike[str],
        options: CampaignOptions,
    ) -> PlanResult:
        conn, campaign = self.conn, self.campaign
        settings = _ENCODER.encode(SendSettings.from_options(options)).decode()
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO proactive_campaign (id, template, input_fingerprint, options,"
                " settings) VALUES (%s, %s, %s, %s, %s)",
                (
                    campaign,
                    identity.template,
                    identity.input_fingerprint,
                    identity.options,
                    settings,
                ),
            )
            await self._copy_records(targets, options)
            await self._copy_chunks_and_slices()
            await conn.execute(
                "UPDATE proactive_campaign SET planned_at = now(), records = %s, chunks = %s,"
                " slices = %s, finished_at = CASE WHEN %s THEN now() END WHERE id = %s",
                (self.records, len(self.chunks), len(self.slice_sizes), not self.chunks, campaign),
            )
        return PlanResult(
            campaign=campaign,
            records=self.records,
            chunks=len(self.chunks),
            slices=len(self.slice_sizes),
            rejected=self.rejected,
            duplicates=self.duplicates,
            pending_slices=list(range(1, len(self.slice_sizes) + 1)),
            already_planned=False,
        )

    async def _copy_records(
        self, targets: str | os.PathLike[str], options: CampaignOptions
    ) -> None:
        copy_sql = (
            "COPY proactive_record (campaign_id, line, state, outcome, chunk, slice, recipient,"
            " contact_id) FROM STDIN"
        )
        campaign = self.campaign
        async with self.conn.cursor().copy(copy_sql) as copy:
            source = file_records(
                targets,
                multiline=options.multiline_values,
                recipient_column=options.recipient_column,
            )
            # The file's size known up front: the dedupe table is built whole, not regrown.
            expected = count_records(targets, options.recipient_column)
            stream = Planner(options.planner).plan(source, expected=expected)
            async with contextlib.aclosing(stream) as plan:
                async for item in plan:
                    if isinstance(item, Outcome):
                        self._count_final(item)
                        encoded = self.scrubber.scrub(_ENCODER.encode(item)).decode()
                        row = (campaign, item.line, item.status.value, encoded)
                        await copy.write_row((*row, None, None, None, None))
                        continue
                    chunk, slice_ = self._add_chunk(item)
                    for target in item.targets:
                        self.records += 1
                        planned = (campaign, target.line, "planned", None, chunk, slice_)
                        await copy.write_row((*planned, target.recipient, target.contact_id))

    def _count_final(self, outcome: Outcome) -> None:
        self.records += 1
        self.rejected += outcome.status is OutcomeStatus.REJECTED
        self.duplicates += outcome.status is OutcomeStatus.DUPLICATE

    def _add_chunk(self, chunk: Chunk) -> tuple[int, int]:
        """Number the chunk and put it in the current slice (a new one when that is full)."""
        if not self.slice_sizes or self.slice_sizes[-1] >= self.job_size:
            self.slice_sizes.append(0)
        self.slice_sizes[-1] += len(chunk.targets)
        number = len(self.chunks) + 1
        variables = None if chunk.variables is None else _ENCODER.encode(chunk.variables).decode()
        self.chunks.append((number, variables, len(self.slice_sizes)))
        return number, len(self.slice_sizes)

    async def _copy_chunks_and_slices(self) -> None:
        cursor = self.conn.cursor()
        copy_sql = "COPY proactive_chunk (campaign_id, chunk, variables, slice) FROM STDIN"
        async with cursor.copy(copy_sql) as copy:
            for number, variables, slice_ in self.chunks:
                await copy.write_row((self.campaign, number, variables, slice_))
        async with cursor.copy(
            "COPY proactive_slice (campaign_id, slice, records) FROM STDIN"
        ) as copy:
            for index, size in enumerate(self.slice_sizes, start=1):
                await copy.write_row((self.campaign, index, size))
