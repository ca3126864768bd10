"""Live progress of a running campaign for the CLI: a rich bar on a terminal, plain lines elsewhere.

Both displays poll ``Campaign.summary`` on a timer; nothing is rendered per outcome, so
a fast campaign is never slowed by its own progress display.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Protocol

from ._records import OutcomeStatus
from ._report import CampaignSummary

if TYPE_CHECKING:
    # rich.progress is imported by RichProgress only: plain progress lines do without it.
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = [
    "PlainProgress",
    "ProgressDisplay",
    "ProgressWatcher",
    "RateMeter",
    "RichProgress",
    "Snapshot",
    "take_snapshot",
]

# The window over which targets/s is measured: long enough to smooth out one slow
# call, short enough that a throttled server shows within a few seconds.
_RATE_WINDOW = 3.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The progress of a campaign at one instant."""

    records: int
    total: int | None
    targets_per_second: float
    counts: dict[OutcomeStatus, int]

    def counts_text(self) -> str:
        """``sent=1, failed=0, ...`` in OutcomeStatus order."""
        return ", ".join(f"{status}={self.counts.get(status, 0)}" for status in OutcomeStatus)


class ProgressDisplay(Protocol):
    """Where snapshots go; ``close`` is called once, after a last ``show``."""

    interval: float

    def show(self, snapshot: Snapshot) -> None: ...

    def note(self, text: str) -> None:
        """Print one message without garbling the display."""

    def close(self) -> None: ...


class RateMeter:
    """Targets per second over the last few seconds, from cumulative counts."""

    def __init__(self, window: float = _RATE_WINDOW) -> None:
        self._window = window
        self._points: deque[tuple[float, int]] = deque()

    def add(self, now: float, targets: int) -> float:
        points = self._points
        points.append((now, targets))
        while len(points) > 2 and now - points[1][0] >= self._window:
            points.popleft()
        first_time, first_targets = points[0]
        span = now - first_time
        return (targets - first_targets) / span if span > 0 else 0.0


def take_snapshot(summary: CampaignSummary, total: int | None, meter: RateMeter) -> Snapshot:
    """Read the live summary (only plain attribute reads: cheap, no locking needed)."""
    return Snapshot(
        records=summary.records,
        total=total,
        targets_per_second=meter.add(time.monotonic(), summary.targets_sent),
        counts=dict(summary.counts),
    )


def _two_line_progress(second_line: Callable[[], str], *columns: Any, **options: Any) -> Progress:
    """A rich Progress with the bar on one line and ``second_line()`` (the counts per status)
    under it: both fit in 80 columns."""
    from rich.console import RenderableType
    from rich.progress import Progress
    from rich.text import Text

    class TwoLineProgress(Progress):
        def get_renderables(self) -> Iterable[RenderableType]:
            yield self.make_tasks_table(self.tasks)
            yield Text(second_line())

    return TwoLineProgress(*columns, **options)


class RichProgress:
    """A progress bar on a terminal: records done of total, targets/s, ETA, counts per status."""

    interval = 0.2

    def __init__(self, console: Console, total: int | None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        self._counts = ""
        self._progress = _two_line_progress(
            lambda: self._counts,
            TextColumn("[bold]campaign"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            auto_refresh=False,  # refreshed by our poll, in the event loop's thread
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task: TaskID = self._progress.add_task("campaign", total=total, rate="")
        self._progress.start()

    def show(self, snapshot: Snapshot) -> None:
        self._counts = "  ".join(
            f"{status} {snapshot.counts.get(status, 0):,}" for status in OutcomeStatus
        )
        self._progress.update(
            self._task,
            completed=snapshot.records,
            rate=f"{snapshot.targets_per_second:,.0f} targets/s",
        )
        self._progress.refresh()

    def note(self, text: str) -> None:
        self._progress.console.print(text, highlight=False)

    def close(self) -> None:
        self._progress.stop()


class PlainProgress:
    """One line every couple of seconds, for logs and pipes."""

    interval = 2.0

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._last: str | None = None

    def show(self, snapshot: Snapshot) -> None:
        of_total = f"/{snapshot.total}" if snapshot.total is not None else ""
        line = (
            f"{snapshot.records}{of_total} records, "
            f"{snapshot.targets_per_second:.0f} targets/s, {snapshot.counts_text()}"
        )
        if line != self._last:  # an idle campaign (a long Retry-After) does not spam the log
            self._stream.write(line + "\n")
            self._stream.flush()
            self._last = line

    def note(self, text: str) -> None:
        self._stream.write(text + "\n")
        self._stream.flush()

    def close(self) -> None:
        pass


class ProgressWatcher:
    """Polls a live summary into a display until ``finish``, which shows the final state."""

    def __init__(self, summary: CampaignSummary, total: int | None, display: ProgressDisplay):
        self._summary = summary
        self._total = total
        self.display = display
        self._meter = RateMeter()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._meter.add(time.monotonic(), self._summary.targets_sent)
        self._task = asyncio.create_task(self._poll())

    async def finish(self, *, show: bool = True) -> None:
        """Stop polling; show the end state (the whole run's rate) and close the display."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if not show:
            self.display.close()
            return
        summary = self._summary
        final = take_snapshot(summary, self._total, self._meter)
        if summary.elapsed > 0:
            final = dataclasses.replace(final, targets_per_second=summary.targets_per_second)
        self.display.show(final)
        self.display.close()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.display.interval)
            self.display.show(take_snapshot(self._summary, self._total, self._meter))
