"""Operating a distributed campaign: its status (from its records), cancel, the report."""

from __future__ import annotations

import dataclasses
from typing import IO, TYPE_CHECKING, Any, Final

import msgspec

from .._errors import JournalError
from .._records import OutcomeError
from ..journal._postgres import connect, display_dsn, split_location
from ._store import FINISH_CAMPAIGN

if TYPE_CHECKING:
    import psycopg

__all__ = ["CANCELLED", "CampaignStatus", "campaign_status", "cancel_campaign", "write_report"]

CANCELLED: Final = "cancelled"
"""``OutcomeError.kind`` of a record not sent because its campaign was cancelled."""
_UNFINISHED: Final = ("planned", "in_flight")


@dataclasses.dataclass(frozen=True)
class CampaignStatus:
    """Counts per record state, and whether every record has its outcome.

    ``aborted`` is the fatal answer that stopped the workers (a 401, a 403, a TLS
    failure), None while none did; ``owners`` counts the worker processes holding a live
    lease on one of its slices right now.
    """

    campaign: str
    counts: dict[str, int]
    slices: int
    slices_done: int
    cancelled: bool
    finished: bool
    aborted: str | None = None
    owners: int = 0

    @property
    def unfinished(self) -> int:
        return sum(self.counts.get(state, 0) for state in _UNFINISHED)

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


async def campaign_status(location: str) -> CampaignStatus:
    """The campaign's status, computed from its records (never from counters)."""
    dsn, campaign = split_location(location)
    conn = await connect(dsn)
    try:
        head = await _head(conn, campaign, dsn)
        cursor = await conn.execute(
            "SELECT state, count(*) FROM proactive_record WHERE campaign_id = %s GROUP BY state",
            (campaign,),
        )
        counts = {state: count for state, count in await cursor.fetchall()}
        cursor = await conn.execute(
            "SELECT count(*) FILTER (WHERE state = 'done'), count(DISTINCT"
            " split_part(owner, '/', 1) || '/' || split_part(owner, '/', 2))"
            " FILTER (WHERE lease_until > clock_timestamp())"
            " FROM proactive_slice WHERE campaign_id = %s",
            (campaign,),
        )
        slices_done, owners = await cursor.fetchone() or (0, 0)
    finally:
        await conn.close()
    cancelled, planned, slices, aborted = head
    unfinished = sum(counts.get(state, 0) for state in _UNFINISHED)
    return CampaignStatus(
        campaign=campaign,
        counts=counts,
        slices=slices,
        slices_done=slices_done,
        cancelled=cancelled,
        finished=planned and unfinished == 0,
        aborted=aborted,
        owners=owners,
    )


async def _head(
    conn: psycopg.AsyncConnection[Any], campaign: str, dsn: str
) -> tuple[bool, bool, int, str | None]:
    try:
        cursor = await conn.execute(
            "SELECT cancelled_at IS NOT NULL, planned_at IS NOT NULL, slices,"
            " CASE WHEN aborted_at IS NOT NULL THEN coalesce(abort_reason, 'aborted') END"
            " FROM proactive_campaign WHERE id = %s",
            (campaign,),
        )
        head = await cursor.fetchone()
    except Exception as exc:  # no tables: nothing was ever enqueued in that database
        raise JournalError(
            f"no campaign {campaign!r} in {display_dsn(dsn)} ({type(exc).__name__})"
        ) from None
    if head is None:
        raise JournalError(f"no campaign {campaign!r} in {display_dsn(dsn)}")
    return bool(head[0]), bool(head[1]), int(head[2] or 0), head[3]


async def cancel_campaign(location: str) -> int:
    """Cancel: every record still ``planned`` ends ``failed`` (``cancelled``); how many.

    Once this returns, no record of the campaign is marked in flight any more (every mark
    checks the campaign in the same statement), so what is sent afterwards is at most the
    calls that were already in flight.
    """
    dsn, campaign = split_location(location)
    error = msgspec.json.encode(
        OutcomeError(kind=CANCELLED, message="not sent: the campaign was cancelled")
    ).decode()
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
            await conn.execute(
                "UPDATE proactive_slice s SET state = 'done' WHERE campaign_id = %s"
                " AND state = 'open' AND NOT EXISTS (SELECT 1 FROM proactive_record r"
                " WHERE r.campaign_id = s.campaign_id AND r.slice = s.slice"
                " AND r.state IN ('planned', 'in_flight'))",
                (campaign,),
            )
            await conn.execute(FINISH_CAMPAIGN, {"campaign": campaign})
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
