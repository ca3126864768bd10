"""One worker process's slices: those its engine delivers, and those the journal knows
nobody is running.

The queue (arq, Celery) is how a worker hears of work quickly; the journal is the truth.
Besides the jobs the engine hands it, a worker with a free slot looks in the journal every
``sweep_every`` seconds for slices nobody is running: a lease that expired (its owner was
killed, frozen, or cut off), a slice given back, or one no job came for (the queue lost
it: a Redis restarted empty, a job dropped). So a dead or frozen worker's slice is taken
over about a lease after its last renewal, whatever the engine's own timeouts, and a lost
queue never stalls a campaign while one worker is alive.

A job's run of a slice is shielded from the job's own cancellation (an engine timeout):
waiting on a rate limit is never what makes a slice fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from .._constants import DEFAULT_ARQ_JOBS
from .._errors import JournalError
from ._connect import Database, ensure_distributed_schema
from ._runner import SliceBusyError, SliceResult, SliceRunner
from ._store import SWEEP

if TYPE_CHECKING:
    import psycopg

__all__ = ["DEFAULT_SLICES", "SliceWorker", "check_journal"]

DEFAULT_SLICES: Final = DEFAULT_ARQ_JOBS
"""Slices one worker process runs at once (the settings' default)."""
SWEEP_EVERY: Final = 2.0
UNCLAIMED_AFTER: Final = 5.0
"""Seconds after planning before an idle worker takes from the journal a slice no job
came for. Short: a worker idle while slices wait means the queue lost their jobs or is
slower than the journal (two claiming one slice is settled by the claim)."""
_log = logging.getLogger("proactive_async")


async def check_journal(dsn: str) -> None:
    """Before a worker takes any job: the journal answers (JournalError naming it, without
    its password, if not), and has the campaign tables (created if missing: workers may
    start before the first enqueue)."""
    db = Database(dsn, patience=5.0)
    try:
        await db.run(ensure_distributed_schema, transaction=False)
    finally:
        await db.aclose()


class SliceWorker:
    """Runs slices in one worker process, from its engine's jobs and from the journal.

    Usage::

        worker = SliceWorker(runner)
        await worker.start()
        result = await worker.run("spring-sale", 7)    # a job
        await worker.aclose(grace=10)

    Parameters:
        runner: the process's ``SliceRunner``.
        slices: slices at once; the sweep takes one only while fewer run.
        sweep_every: seconds between two looks in the journal; None: never look.
    """

    def __init__(
        self,
        runner: SliceRunner,
        *,
        slices: int = DEFAULT_SLICES,
        sweep_every: float | None = SWEEP_EVERY,
        unclaimed_after: float = UNCLAIMED_AFTER,
    ) -> None:
        self.runner = runner
        self.slices = slices
        self._sweep_every = sweep_every
        self._unclaimed_after = unclaimed_after
        self._db = Database(runner.dsn)
        self._running: dict[tuple[str, int], asyncio.Task[SliceResult]] = {}
        self._slots = asyncio.Semaphore(slices)
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Start looking in the journal every ``sweep_every`` seconds for slices nobody runs."""
        if self._sweep_every is not None and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_loop())

    async def run(self, campaign: str, slice_: int) -> SliceResult | None:
        """A job's slice; None when a live owner elsewhere holds it (it is running, and if
        that owner dies the lease expires and a worker's sweep takes it over)."""
        task = self._spawn(campaign, slice_)
        try:
            return await asyncio.shield(task)
        except SliceBusyError:
            _log.info("slice %s of %s is held by a live worker; skipped", slice_, campaign)
            return None

    async def aclose(self, grace: float = 10.0, *, drain: bool = False) -> None:
        """Stop sweeping; stop the running slices (no new call; calls in flight get
        ``grace`` seconds to finish) and give them back. ``drain``: let them finish
        instead (a program that knows nothing else waits for it)."""
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        running = list(self._running.values())
        if running and not drain:
            self.runner.stop()
        if running:
            _, late = await asyncio.wait(running, timeout=None if drain else grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        await self._db.aclose()
        await self.runner.aclose()

    def _spawn(self, campaign: str, slice_: int) -> asyncio.Task[SliceResult]:
        key = (campaign, slice_)
        task = self._running.get(key)
        if task is None:
            task = asyncio.create_task(self._run(campaign, slice_))
            self._running[key] = task
            task.add_done_callback(lambda _: self._running.pop(key, None))
        return task

    async def _run(self, campaign: str, slice_: int) -> SliceResult:
        # At most ``slices`` at once, whatever the engine does: a job arq timed out keeps
        # its slice running (shielded), and the next job waits here for a slot.
        async with self._slots:
            result = await self.runner.run(campaign, slice_)
        if result.aborted:
            _log.error(
                "campaign %s ABORTED: %s. Fix the cause, then run the same enqueue again "
                "(--campaign %s) to resume it",
                campaign,
                result.aborted,
                campaign,
            )
        elif result.counts or result.state != "done":
            _log.info("%s", result.describe())
        return result

    async def _sweep_loop(self) -> None:
        assert self._sweep_every is not None
        while not self._closing:
            await asyncio.sleep(self._sweep_every)
            free = self.slices - len(self._running)
            if free <= 0:
                continue
            try:
                found = await self._db.run(self._sweeper_for(free))
            except JournalError as exc:
                _log.warning("looking for unowned slices: %s", exc)
                continue
            for campaign, slice_ in found:
                if (campaign, slice_) not in self._running and not self._closing:
                    task = self._spawn(campaign, slice_)
                    task.add_done_callback(_quiet_busy)

    def _sweeper_for(
        self, limit: int
    ) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[list[tuple[str, int]]]]:
        return lambda conn: _sweep(conn, limit, self._unclaimed_after)


async def _sweep(
    conn: psycopg.AsyncConnection[Any], limit: int, unclaimed_after: float
) -> list[tuple[str, int]]:
    cursor = await conn.execute(SWEEP, {"limit": limit, "unclaimed": unclaimed_after})
    return [(campaign, int(slice_)) for campaign, slice_ in await cursor.fetchall()]


def _quiet_busy(task: asyncio.Task[SliceResult]) -> None:
    """A swept slice another worker took first is no news; anything else is logged."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, SliceBusyError):
        _log.warning("a slice taken from the journal failed: %s", exc)
