"""Operating a distributed campaign: its status (from its records), cancel, the report.

Each is a unit of work on a reconnecting connection (``_connect.Database``): a database
that restarts for a few seconds delays the answer, it does not fail it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import IO, TYPE_CHECKING, Any, Final, NamedTuple, TypeVar

from .._errors import JournalError
from ..journal._pg_database import display_dsn, split_location
from ._connect import Database
from ._store import (
    CANCEL_CAMPAIGN,
    CANCEL_PLANNED,
    CANCELLED,
    CLOSE_SETTLED_SLICES,
    FINISH_CAMPAIGN,
    IN_FLIGHT_COUNT,
    ONE_PROCESS_HEAD,
    REPORT,
    STATUS_COUNTS,
    STATUS_HEAD,
    STATUS_SLICES,
)

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "CANCELLED",
    "CampaignStatus",
    "Cancelled",
    "campaign_status",
    "cancel_campaign",
    "write_report",
]

T = TypeVar("T")
_UNFINISHED: Final = ("planned", "in_flight")
_PATIENCE: Final = 20.0
"""Seconds an operator's command keeps reconnecting to a restarting database."""


@dataclasses.dataclass(frozen=True)
class CampaignStatus:
    """Counts per record state, and whether every record has its outcome (a distributed
    campaign's; a one-process campaign's records so far).

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
    distributed: bool = True
    """False for a one-process campaign (``campaign --journal postgresql://...``): its run
    sends it, and only that run knows how many records it has (``finished`` stays False)."""

    @property
    def unfinished(self) -> int:
        """Records still ``planned`` or ``in_flight``."""
        return sum(self.counts.get(state, 0) for state in _UNFINISHED)

    def as_dict(self) -> dict[str, object]:
        """The status as plain JSON values (``status --json``)."""
        return dataclasses.asdict(self)


class Cancelled(int):
    """What ``cancel_campaign`` returns: the records it ended ``failed`` (an ``int``), and
    in ``in_flight`` the records whose call was already in flight: they finish."""

    in_flight: int

    def __new__(cls, cancelled: int, in_flight: int) -> Cancelled:
        value = super().__new__(cls, cancelled)
        value.in_flight = in_flight
        return value


async def campaign_status(location: str) -> CampaignStatus:
    """The campaign's status, computed from its records (never from counters)."""
    dsn, campaign = split_location(location)
    return await _once(dsn, lambda conn: _status(conn, campaign, dsn))


async def _status(conn: psycopg.AsyncConnection[Any], campaign: str, dsn: str) -> CampaignStatus:
    params = {"campaign": campaign}
    cancelled, planned, slices, aborted, has_slices = await _head(conn, campaign, dsn)
    cursor = await conn.execute(STATUS_COUNTS, params)
    counts = {state: count for state, count in await cursor.fetchall()}
    slices_done, owners = 0, 0
    if has_slices:
        cursor = await conn.execute(STATUS_SLICES, params)
        slices_done, owners = await cursor.fetchone() or (0, 0)
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
        distributed=planned,
    )


async def _has_slices(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Are the distributed tables there? A database only one-process campaigns have used
    has the campaign and record tables alone."""
    cursor = await conn.execute("SELECT to_regclass('proactive_slice') IS NOT NULL")
    found = await cursor.fetchone()
    return bool(found and found[0])


class _Head(NamedTuple):
    cancelled: bool
    planned: bool
    slices: int
    aborted: str | None
    has_slices: bool
    """The distributed tables are there (``_has_slices``)."""


async def _head(conn: psycopg.AsyncConnection[Any], campaign: str, dsn: str) -> _Head:
    cursor = await conn.execute("SELECT to_regclass('proactive_campaign') IS NOT NULL")
    exists = await cursor.fetchone()
    if not (exists and exists[0]):
        raise JournalError(f"no campaign {campaign!r} in {display_dsn(dsn)} (no campaign tables)")
    has_slices = await _has_slices(conn)
    cursor = await conn.execute(
        STATUS_HEAD if has_slices else ONE_PROCESS_HEAD, {"campaign": campaign}
    )
    head = await cursor.fetchone()
    if head is None:
        raise JournalError(f"no campaign {campaign!r} in {display_dsn(dsn)}")
    return _Head(bool(head[0]), bool(head[1]), int(head[2] or 0), head[3], has_slices)


async def cancel_campaign(location: str) -> Cancelled:
    """Cancel: every record still ``planned`` ends ``failed`` (``cancelled``); how many,
    and how many were in flight then. A one-process campaign (``campaign --journal
    postgresql://...``) stops at its next mark or retry: its journal checks the same
    ``cancelled_at`` (its lines not yet reached have no record to end).

    Once this returns, no record of the campaign is marked in flight any more (every mark
    checks the campaign in the same statement), so what is sent afterwards is at most the
    calls that were already in flight; a record of theirs released as certainly not sent
    ends cancelled too.
    """
    dsn, campaign = split_location(location)
    return await _once(dsn, lambda conn: _cancel(conn, campaign, dsn))


async def _cancel(conn: psycopg.AsyncConnection[Any], campaign: str, dsn: str) -> Cancelled:
    params = {"campaign": campaign}
    head = await _head(conn, campaign, dsn)
    cursor = await conn.execute(CANCEL_CAMPAIGN, params)
    if await cursor.fetchone() is None:
        raise JournalError(f"no campaign {campaign!r} in {display_dsn(dsn)}")
    cursor = await conn.execute(CANCEL_PLANNED, params)
    cancelled = cursor.rowcount
    if head.has_slices:
        await conn.execute(CLOSE_SETTLED_SLICES, params)
        await conn.execute(FINISH_CAMPAIGN, params)
    cursor = await conn.execute(IN_FLIGHT_COUNT, params)
    in_flight = await cursor.fetchone()
    return Cancelled(cancelled, int(in_flight[0]) if in_flight else 0)


async def write_report(location: str, out: IO[bytes]) -> int:
    """The campaign's report, one JSON line per finished record in input order; how many.

    A campaign the journal does not hold is a ``JournalError`` before anything is written.
    """
    dsn, campaign = split_location(location)
    db = Database(dsn, patience=_PATIENCE)
    try:
        await db.run(lambda conn: _head(conn, campaign, dsn))
        # One pass, streamed: not a unit to run again (the lines are already written).
        return await db.run(lambda conn: _stream(conn, campaign, out), retry=False)
    finally:
        await db.aclose()


async def _stream(conn: psycopg.AsyncConnection[Any], campaign: str, out: IO[bytes]) -> int:
    written = 0
    async with conn.cursor(name="proactive_report") as cursor:
        await cursor.execute(REPORT, {"campaign": campaign})
        async for (outcome,) in cursor:
            out.write(outcome.encode() + b"\n")
            written += 1
    return written


async def _once(dsn: str, unit: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
    db = Database(dsn, patience=_PATIENCE)
    try:
        return await db.run(unit)
    finally:
        await db.aclose()
