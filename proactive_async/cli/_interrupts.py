"""Running a campaign under the progress display and the signal handlers: the first
Ctrl-C (or SIGTERM) stops gently, with the grace period for calls in flight; the second
leaves at once, the report flushed and the journal consistent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from .._records import OutcomeStatus
from ..ratelimit import RateLimit
from ._common import EXIT_INTERRUPTED

if TYPE_CHECKING:
    from .._campaign import Campaign
    from .._progress import ProgressDisplay

__all__ = ["drive"]


async def drive(campaign: Campaign, display: ProgressDisplay, grace_period: float) -> bool:
    """Run the campaign under progress and signal handlers; True when it was interrupted."""
    from .._progress import ProgressWatcher

    loop = asyncio.get_running_loop()
    runner = asyncio.create_task(campaign.run())
    limit = campaign.rate_limit
    paused = (lambda: limit.paused) if isinstance(limit, RateLimit) else None
    watcher = ProgressWatcher(campaign.summary, campaign.total, display, paused, limit=limit)
    watcher.start()

    def stop() -> None:
        display.note(_interrupt_note(campaign, grace_period))
        campaign.stop()
        # stop() alone only ends the run once the feeder drains; cancelling runs the
        # campaign's own wind-down: feeder stopped, in-flight calls awaited, all recorded.
        runner.cancel()

    interrupts = _Interrupts(stop, lambda: _exit_now(campaign, display))
    interrupts.install(loop)
    try:
        await asyncio.wait([runner])
    finally:
        interrupts.remove(loop)
        failed = runner.done() and not runner.cancelled() and runner.exception() is not None
        await watcher.finish(show=not failed)  # an error message, not "0/N records", last
    if runner.cancelled():
        return True
    runner.result()  # raises what the run raised
    return False  # a signal that came after the end changes nothing


def _interrupt_note(campaign: Campaign, grace_period: float) -> str:
    """The first interrupt's line: what was already sent, and what a re-run would do."""
    sent = campaign.summary.counts[OutcomeStatus.SENT]
    if campaign.journal_path is None:
        already = f"{sent:,} already sent (no --journal: a re-run sends them again)"
    else:
        already = f"{sent:,} already sent (a resume with the same --journal does not resend them)"
    return (
        f"interrupted: {already}; no new calls; calls in flight get up to {grace_period:g}s "
        "to finish (interrupt again to exit at once)"
    )


class _Interrupts:
    """SIGINT / SIGTERM: the first calls ``first``; any later one calls ``again``."""

    signals = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, first: Callable[[], None], again: Callable[[], None]) -> None:
        self._first = first
        self._again = again
        self.fired = 0
        self._installed: list[signal.Signals] = []

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in self.signals:
            try:
                loop.add_signal_handler(sig, self._fire)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not the main thread, or no signal support: Ctrl-C stays default
            self._installed.append(sig)

    def remove(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in self._installed:
            loop.remove_signal_handler(sig)
        self._installed.clear()

    def _fire(self) -> None:
        self.fired += 1
        (self._first if self.fired == 1 else self._again)()


def _exit_now(campaign: Campaign, display: ProgressDisplay) -> NoReturn:
    """The second interrupt: flush what is cheap to flush, then leave at once."""
    # The report writer is the campaign's own; flushing its buffer here keeps the lines of
    # outcomes already decided. The journal needs nothing: each SQLite commit is atomic,
    # and a line left in flight is reported unknown on resume, never resent.
    with contextlib.suppress(OSError, ValueError):
        campaign.flush_report()
    display.close()
    sent = campaign.summary.counts[OutcomeStatus.SENT]
    if campaign.journal_path is None:
        then = "no --journal: a re-run sends them again, and those in flight may have been sent"
    else:
        then = (
            "resume with the same --journal; records that were in flight are reported "
            "unknown, not resent"
        )
    sys.stderr.write(f"interrupted again: exiting now; {sent:,} already sent; {then}.\n")
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)
