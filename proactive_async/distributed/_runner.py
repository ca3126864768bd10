"""What a job does for ``(campaign, slice)``, on any engine: claim, send, give back.

``SliceRunner.run`` claims the slice's lease (a new fencing number), settles what a dead
predecessor left in flight (``unknown``, or back to ``planned`` with ``resend_unknown``),
loads the planned records and sends them through the same ``ChunkSender`` a one-process
campaign uses: calls of many chunks in flight at once, their journal writes group-
committed, every mark fenced by the lease. A task renews the lease every few seconds;
when the lease is lost (expired while the process was frozen or cut off, or taken by
another owner) the sender stops at once and sends nothing more. At the end the lease is
given back, and the slice is ``done`` when every record of it is final.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._errors import JournalError
from .._models import ProactiveConversationRequest
from .._planner import Chunk, PlannedTarget
from .._records import Outcome, OutcomeStatus
from .._sender import ChunkSender, make_outcome
from ..journal import INTERRUPTED, SecretScrubber, kept_secrets
from ..journal._base import process_name
from ..journal._pg_database import display_dsn, split_location
from ..ratelimit import RateLimitBackend
from ._connect import Database
from ._journal import Lease, SliceJournal, lease_clock
from ._plan import SendSettings
from ._store import (
    ABORT,
    CANCEL_REST,
    CLAIM,
    FINISH_CAMPAIGN,
    FINISH_SLICE,
    IN_FLIGHT_OF_SLICE,
    LOAD_CHUNKS,
    LOAD_RECORDS,
    RENEW,
    REPLAN_IN_FLIGHT,
    SETTLE_DEAD,
    SLICE_STATE,
)

if TYPE_CHECKING:
    import psycopg

    from .._client import AsyncClient

__all__ = ["DEFAULT_LEASE", "SliceBusyError", "SliceResult", "SliceRunner"]

DEFAULT_LEASE: Final = 20.0
"""Seconds a slice stays its owner's without a renewal: a dead or frozen owner's slice
is taken over this long after its last renewal."""
_ENCODER: Final = msgspec.json.Encoder()
_IDLE_CONNECTIONS: Final = 4
"""Journal connections of ended slices kept for the next ones (more were only idle)."""
_log = logging.getLogger("proactive_async")
RateLimitFor = Callable[[ProactiveConversationRequest, SendSettings], RateLimitBackend | None]


class SliceBusyError(JournalError):
    """A live owner holds the slice's lease; ``retry_after``: seconds until it expires."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclasses.dataclass(frozen=True)
class SliceResult:
    """What one run of a slice did: its state after, the outcomes it settled, its time."""

    campaign: str
    slice: int
    state: str
    """``done``, ``open`` (given back unfinished: stopped, lease lost) or ``aborted``."""
    counts: dict[str, int]
    seconds: float
    aborted: str | None = None

    def describe(self) -> str:
        """One line for the worker's log: the state, the counts, the time, the rate."""
        counts = ", ".join(f"{name} {count:,}" for name, count in sorted(self.counts.items()))
        settled = sum(self.counts.values())
        rate = settled / self.seconds if self.seconds > 0 else 0.0
        line = (
            f"slice {self.slice} of {self.campaign}: {self.state} in {self.seconds:.1f} s"
            f" ({counts or 'nothing to send'}; {rate:,.0f} records/s)"
        )
        return f"{line}; aborted: {self.aborted}" if self.aborted else line


@dataclasses.dataclass
class _CampaignView:
    template: ProactiveConversationRequest
    settings: SendSettings
    rate_limit: RateLimitBackend | None


class SliceRunner:
    """Runs slices of distributed campaigns in one worker process.

    Usage::

        runner = SliceRunner("postgresql://app@db/campaigns", client, concurrency=32)
        result = await runner.run("spring-sale", 7)   # SliceBusyError: a live owner has it
        await runner.aclose()

    Parameters:
        dsn: the PostgreSQL journal's database (without ``?campaign=``).
        client: the worker's ``AsyncClient`` (its token from the worker's settings).
        rate_limit_for: builds the rate limit of a campaign (the shared one); None: none.
        concurrency: calls in flight in this process, over all the slices it runs.
        lease: seconds a slice is held without renewal (renewed every fifth of it).
    """

    def __init__(
        self,
        dsn: str,
        client: AsyncClient,
        *,
        rate_limit_for: RateLimitFor | None = None,
        concurrency: int = 16,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if lease < 2:
            raise ValueError("a lease of under 2 s cannot be renewed in time")
        self.dsn: str = split_location(dsn)[0]
        self.client = client
        self.concurrency = concurrency
        self.lease = lease
        self._rate_limit_for = rate_limit_for
        self._db = Database(self.dsn)
        # Connections of slices' journals that ended, for the next slice: opening one per
        # slice cost a PostgreSQL backend's start-up each time.
        self._idle: list[Database] = []
        self._slots = asyncio.Semaphore(concurrency)
        self._views: dict[str, _CampaignView] = {}
        self._opening = asyncio.Lock()
        self._senders: set[ChunkSender] = set()
        self._stopping = False
        self._name = process_name()

    @property
    def where(self) -> str:
        """The journal's database, its password hidden: for logs."""
        return display_dsn(self.dsn)

    def stop(self) -> None:
        """No new call from now on (calls in flight finish); slices are given back."""
        self._stopping = True
        for sender in list(self._senders):
            sender.stop()

    async def aclose(self) -> None:
        """Stop, and close the campaigns' rate limits and the database connections."""
        self.stop()
        for view in self._views.values():
            if view.rate_limit is not None:
                await view.rate_limit.aclose()
        self._views.clear()
        for db in self._idle:
            await db.aclose()
        self._idle.clear()
        await self._db.aclose()

    async def run(self, campaign: str, slice_: int) -> SliceResult:
        """Send the slice's planned records; every one ends final unless stopped."""
        started = time.monotonic()
        view = await self._view(campaign)
        lease = await self._claim(campaign, slice_, view.settings)
        if lease is None:
            return SliceResult(campaign, slice_, "done", {}, time.monotonic() - started)
        counts: Counter[str] = Counter()

        async def count(outcome: Outcome) -> None:
            counts[outcome.status.value] += 1

        db = self._idle.pop() if self._idle else Database(self.dsn)
        journal = SliceJournal(db, lease, SecretScrubber(self._secrets()))
        sender = ChunkSender(
            self.client,
            view.template,
            retry=view.settings.retry,
            rate_limit=view.rate_limit,
            journal=journal,
            on_outcome=count,
            guard=lease.held,
        )
        self._senders.add(sender)
        if self._stopping:
            sender.stop()
        keeper = asyncio.create_task(self._keep(lease, sender))
        try:
            chunks = await self._db.run(lambda conn: _load(conn, lease))
            await self._send_all(sender, chunks)
            await journal.flush()
        except BaseException:
            await self._abandon(sender, keeper, journal, lease)
            raise
        await self._close(sender, keeper, journal)
        reason = sender.summary.aborted  # "kind: message" of the fatal answer, or None
        if reason is not None:
            await self._db.run(lambda conn: _abort(conn, campaign, reason))
        state = await self._give_back(lease)
        elapsed = time.monotonic() - started
        if reason is not None:
            state = "aborted"
        return SliceResult(campaign, slice_, state, dict(counts), elapsed, reason)

    # -- the lease -----------------------------------------------------------------------

    async def _claim(self, campaign: str, slice_: int, settings: SendSettings) -> Lease | None:
        owner = f"{self._name}/{secrets.token_hex(4)}"
        lease = Lease(campaign, slice_, owner, 0, self.lease, margin=self.lease / 4)
        asked = lease_clock()
        resend = settings.resend_unknown
        fence = await self._db.run(lambda conn: _take(conn, lease, resend))
        if fence is None:
            state = await self._db.run(lambda conn: _slice_state(conn, campaign, slice_))
            if state is None:
                raise JournalError(f"no slice {slice_} in campaign {campaign!r} at {self.where}")
            done, held_for, aborted = state
            if done or aborted:
                return None
            raise SliceBusyError(
                f"slice {slice_} of {campaign!r} is held by a live worker", held_for
            )
        lease.fence = fence
        lease.renewed(asked)
        return lease

    async def _keep(self, lease: Lease, sender: ChunkSender) -> None:
        """Renew the lease every fifth of it; stop the sender once it is lost."""
        every = lease.seconds / 5
        while True:
            await asyncio.sleep(every)
            asked = lease_clock()
            try:
                found = await self._db.run(lambda conn: _renew(conn, lease))
            except JournalError as exc:
                _log.warning("cannot renew the lease of slice %s: %s", lease.slice, exc)
                if not lease.held():
                    break
                continue
            if found is None:
                break
            lease.renewed(asked)
            if found:  # cancelled or aborted: nothing more is marked, let calls finish
                sender.stop()
        lease.lost = True
        sender.stop()
        _log.warning(
            "slice %s of %s: the lease was lost (frozen, cut off, or taken over); sending stopped",
            lease.slice,
            lease.campaign,
        )

    async def _close(
        self, sender: ChunkSender, keeper: asyncio.Task[None], journal: SliceJournal
    ) -> None:
        self._senders.discard(sender)
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        if await _quietly(journal.aclose()) and len(self._idle) < _IDLE_CONNECTIONS:
            self._idle.append(journal.db)
        else:
            await journal.db.aclose()

    async def _abandon(
        self, sender: ChunkSender, keeper: asyncio.Task[None], journal: SliceJournal, lease: Lease
    ) -> None:
        """A run that failed (the journal unreachable past patience, cancelled): give the
        lease back if the database lets us, else it expires and another worker takes it."""
        await asyncio.shield(self._close(sender, keeper, journal))
        try:
            await asyncio.shield(self._give_back(lease))
        except (JournalError, asyncio.CancelledError):
            _log.debug("giving back slice %s failed; its lease expires", lease.slice)

    async def _give_back(self, lease: Lease) -> str:
        if lease.lost:
            return "open"
        state = await self._db.run(lambda conn: _finish(conn, lease))
        return state or "open"

    # -- sending -------------------------------------------------------------------------

    async def _send_all(self, sender: ChunkSender, chunks: list[Chunk]) -> None:
        """Chunks of the slice in flight at once, within the process's slots."""
        pending = iter(chunks)

        async def work() -> None:
            for chunk in pending:
                if sender.stopping:
                    return
                async with self._slots:
                    await sender.send(chunk)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(self.concurrency, len(chunks))):
                group.create_task(work())

    # -- campaigns -----------------------------------------------------------------------

    async def _view(self, campaign: str) -> _CampaignView:
        view = self._views.get(campaign)
        if view is not None:
            return view
        async with self._opening:  # slices of a new campaign often start together
            view = self._views.get(campaign)
            if view is None:
                view = await self._open_view(campaign)
                self._views[campaign] = view
            return view

    async def _open_view(self, campaign: str) -> _CampaignView:
        row = await self._db.run(lambda conn: _campaign_row(conn, campaign))
        if row is None:
            raise JournalError(
                f"no campaign {campaign!r} in {self.where}: is this worker's journal the "
                "database `enqueue` planned into?"
            )
        template = template_from_json(row[0])
        settings = msgspec.json.decode(row[1], type=SendSettings)
        limit = None
        if self._rate_limit_for is not None and settings.paced:
            limit = self._rate_limit_for(template, settings)
        return _CampaignView(template, settings, limit)

    def _secrets(self) -> tuple[str, ...]:
        return kept_secrets(self.client.secrets)


def template_from_json(stored: str) -> ProactiveConversationRequest:
    """The request template back from its stored JSON (wire names, as the identity has it)."""
    fields = msgspec.structs.fields(ProactiveConversationRequest)
    names = {field.encode_name: field.name for field in fields}
    data = msgspec.json.decode(stored)
    return ProactiveConversationRequest(**{names[key]: value for key, value in data.items()})


# -- units of work (each one transaction, safe to run twice) ---------------------------


async def _take(conn: psycopg.AsyncConnection[Any], lease: Lease, resend: bool) -> int | None:
    params = lease.params | {"lease": lease.seconds}
    cursor = await conn.execute(CLAIM, params)
    row = await cursor.fetchone()
    if row is None:
        return None
    fence = int(row[0])
    params["fence"] = fence
    if resend:
        await conn.execute(REPLAN_IN_FLIGHT, params)  # a live campaign's only
    # What is still in flight (all of it, unless resent above) may have been processed.
    await _settle_dead(conn, params)
    await conn.execute(CANCEL_REST, params)
    return fence


async def _settle_dead(conn: psycopg.AsyncConnection[Any], params: dict[str, Any]) -> None:
    """What the previous owner left in flight may have been processed: ``unknown``."""
    cursor = await conn.execute(IN_FLIGHT_OF_SLICE, params)
    dead = [
        make_outcome(
            PlannedTarget(line=line, recipient=recipient, contact_id=contact),
            OutcomeStatus.UNKNOWN,
            error=INTERRUPTED,
        )
        for line, recipient, contact in await cursor.fetchall()
    ]
    if dead:
        await conn.execute(
            SETTLE_DEAD,
            params
            | {
                "lines": [o.line for o in dead],
                "states": [o.status.value for o in dead],
                "outcomes": [_ENCODER.encode(o).decode() for o in dead],
            },
        )


async def _slice_state(
    conn: psycopg.AsyncConnection[Any], campaign: str, slice_: int
) -> tuple[bool, float, bool] | None:
    cursor = await conn.execute(SLICE_STATE, {"campaign": campaign, "slice": slice_})
    row = await cursor.fetchone()
    if row is None:
        return None
    return row[0] == "done", float(row[1] or 0.0), bool(row[2])


async def _renew(conn: psycopg.AsyncConnection[Any], lease: Lease) -> bool | None:
    cursor = await conn.execute(RENEW, lease.params | {"lease": lease.seconds})
    row = await cursor.fetchone()
    return None if row is None else bool(row[0])


async def _finish(conn: psycopg.AsyncConnection[Any], lease: Lease) -> str | None:
    await conn.execute(CANCEL_REST, lease.params)
    cursor = await conn.execute(FINISH_SLICE, lease.params)
    row = await cursor.fetchone()
    if row is not None and row[0] == "done":
        await conn.execute(FINISH_CAMPAIGN, lease.params)
    return None if row is None else str(row[0])


async def _abort(conn: psycopg.AsyncConnection[Any], campaign: str, reason: str) -> None:
    await conn.execute(ABORT, {"campaign": campaign, "reason": reason})


async def _load(conn: psycopg.AsyncConnection[Any], lease: Lease) -> list[Chunk]:
    cursor = await conn.execute(LOAD_CHUNKS, lease.params)
    variables = {
        number: None if text is None else msgspec.json.decode(text)
        for number, text in await cursor.fetchall()
    }
    cursor = await conn.execute(LOAD_RECORDS, lease.params)
    chunks: dict[int, Chunk] = {}
    for line, number, recipient, contact in await cursor.fetchall():
        chunk = chunks.get(number)
        if chunk is None:
            chunk = chunks[number] = Chunk(variables=variables.get(number), targets=[])
        chunk.targets.append(PlannedTarget(line=line, recipient=recipient, contact_id=contact))
    return [chunks[number] for number in sorted(chunks)]


async def _campaign_row(conn: psycopg.AsyncConnection[Any], campaign: str) -> Any:
    cursor = await conn.execute(
        "SELECT template, settings FROM proactive_campaign WHERE id = %s", (campaign,)
    )
    return await cursor.fetchone()


async def _quietly(closing: Any) -> bool:
    """Await ``closing``; False (logged) when the journal had failed."""
    try:
        await closing
    except JournalError as exc:  # what was not committed stays in flight: unknown later
        _log.warning("closing a slice's journal: %s", exc)
        return False
    return True
