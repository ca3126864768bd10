"""Live progress of a running campaign for the CLI: a rich bar on a terminal, plain lines elsewhere.

Both displays poll ``Campaign.summary`` on a timer; nothing is rendered per outcome, so
a fast campaign is never slowed by its own progress display. Besides the counts they say
why nothing is being sent: the latest failed call (``retrying: ConnectError x 12, next in
4 s``), the shared pause after a 429, and what the rate limit says of itself (a shared
limit whose Redis is away: its ``problem``). The ETA follows the rate of the last few seconds
at which this run handles records: those a resume replays from the journal (thousands a
second) are left out of it, and it starts at the first record handled, so neither a resume
nor the first call's wait skews the first seconds' ETA.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Protocol, runtime_checkable

from ._records import OutcomeStatus
from ._report import CampaignSummary

if TYPE_CHECKING:
    # rich.progress is imported by RichProgress only: plain progress lines do without it.
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = [
    "LimitProblem",
    "PlainProgress",
    "ProgressDisplay",
    "ProgressWatcher",
    "RateMeter",
    "RichProgress",
    "Snapshot",
    "choose_display",
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
    eta: float | None = None
    """Seconds left at the records rate of the last few seconds; None: no rate to go by."""
    problem: str | None = None
    """Why calls are failing or waiting, while they are (``retrying: ConnectError x 3, ...``)."""

    def counts_text(self) -> str:
        """``sent=1, failed=0, ...`` in OutcomeStatus order."""
        return ", ".join(f"{status}={self.counts.get(status, 0)}" for status in OutcomeStatus)

    def eta_text(self) -> str:
        """``0:01:05``, or ``-:--:--`` when nothing is moving."""
        if self.eta is None:
            return "-:--:--"
        seconds = round(self.eta)
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@runtime_checkable
class LimitProblem(Protocol):
    """A rate limit that can say why it holds calls back (``SharedRateLimit``: Redis away)."""

    @property
    def problem(self) -> str | None: ...


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

    @property
    def started(self) -> bool:
        return bool(self._points)

    def add(self, now: float, targets: int) -> float:
        points = self._points
        points.append((now, targets))
        while len(points) > 2 and now - points[1][0] >= self._window:
            points.popleft()
        first_time, first_targets = points[0]
        span = now - first_time
        return (targets - first_targets) / span if span > 0 else 0.0


def take_snapshot(
    summary: CampaignSummary,
    total: int | None,
    meter: RateMeter,
    records_meter: RateMeter | None = None,
    paused: Callable[[], float] | None = None,
    limit: object = None,
) -> Snapshot:
    """Read the live summary (only plain attribute reads: cheap, no locking needed).

    A ``limit`` with a ``problem`` (Redis away) is the reason shown first: while it holds
    every call back, the last failed call is old news."""
    now = time.monotonic()
    if total is not None:
        total = max(total, summary.records)  # the count is an estimate (lines of the file)
    eta: float | None = None
    handled = summary.records - summary.resumed
    if records_meter is not None and (handled or records_meter.started):
        records_rate = records_meter.add(now, handled)
        if total is not None and records_rate > 0:
            eta = max(0, total - summary.records) / records_rate
    failure = summary.last_failure
    problem = limit.problem if isinstance(limit, LimitProblem) else None
    if problem is None and failure is not None:
        problem = failure.text(now, paused() if paused is not None else 0.0)
    return Snapshot(
        records=summary.records,
        total=total,
        targets_per_second=meter.add(now, summary.targets_sent),
        counts=dict(summary.counts),
        eta=eta,
        problem=problem,
    )


def _two_line_progress(
    more_lines: Callable[[], list[str]], *columns: Any, **options: Any
) -> Progress:
    """A rich Progress with the bar on one line and ``more_lines()`` (the counts per status,
    then why calls fail, if they do) under it: each fits in 80 columns."""
    from rich.console import RenderableType
    from rich.progress import Progress
    from rich.text import Text

    class TwoLineProgress(Progress):
        def get_renderables(self) -> Iterable[RenderableType]:
            yield self.make_tasks_table(self.tasks)
            for line in more_lines():
                yield Text(line, overflow="ellipsis", no_wrap=True)

    return TwoLineProgress(*columns, **options)


class RichProgress:
    """A progress bar on a terminal: records done of total, targets/s, ETA, counts per status,
    and the latest error while calls fail."""

    interval = 0.2

    def __init__(self, console: Console, total: int | None, label: str = "campaign") -> None:
        from rich.markup import escape
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

        self._lines: list[str] = []
        self._progress = _two_line_progress(
            lambda: self._lines,
            TextColumn(f"[bold]{escape(label)}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("eta {task.fields[eta]}"),
            console=console,
            auto_refresh=False,  # refreshed by our poll, in the event loop's thread
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task: TaskID = self._progress.add_task("campaign", total=total, rate="", eta="")
        self._progress.start()

    def show(self, snapshot: Snapshot) -> None:
        counts = "  ".join(
            f"{status} {snapshot.counts.get(status, 0):,}" for status in OutcomeStatus
        )
        self._lines = [counts] if snapshot.problem is None else [counts, snapshot.problem]
        self._progress.update(
            self._task,
            total=snapshot.total,
            completed=snapshot.records,
            rate=f"{snapshot.targets_per_second:,.0f} targets/s",
            eta=snapshot.eta_text(),
        )
        self._progress.refresh()

    def note(self, text: str) -> None:
        self._progress.console.print(text, highlight=False)

    def close(self) -> None:
        self._progress.stop()


class PlainProgress:
    """A line every couple of seconds, for logs and pipes; at once when calls start failing
    in a new way (a new error kind, or a pause)."""

    interval = 0.25
    every = 2.0
    """Seconds between two progress lines when nothing new happens."""

    def __init__(self, stream: IO[str], clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._clock = clock
        self._last: str | None = None
        self._last_at = float("-inf")
        self._last_problem: str | None = None

    def show(self, snapshot: Snapshot) -> None:
        now = self._clock()
        problem = _problem_key(snapshot.problem)
        news = problem is not None and problem != self._last_problem
        self._last_problem = problem
        if not news and now - self._last_at < self.every:
            return
        of_total = f"/{snapshot.total}" if snapshot.total is not None else ""
        line = (
            f"{snapshot.records}{of_total} records, "
            f"{snapshot.targets_per_second:.0f} targets/s, {snapshot.counts_text()}"
        )
        if snapshot.eta is not None:
            line += f", eta {snapshot.eta_text()}"
        if snapshot.problem is not None:
            line += f"; {snapshot.problem}"
        if line != self._last:  # an idle campaign (a long Retry-After) does not spam the log
            self._stream.write(line + "\n")
            self._stream.flush()
            self._last = line
            self._last_at = now

    def note(self, text: str) -> None:
        self._stream.write(text + "\n")
        self._stream.flush()

    def close(self) -> None:
        pass


def choose_display(
    progress: bool, total: int | None, console: Console, label: str = "campaign"
) -> ProgressDisplay:
    """The bar on a terminal (unless ``progress`` is off), plain lines anywhere else."""
    if progress and console.is_terminal:
        return RichProgress(console, total, label)
    return PlainProgress(console.file)


def _problem_key(problem: str | None) -> str | None:
    """``retrying: ConnectError`` of ``retrying: ConnectError x 3, ...``: what is new news."""
    return None if problem is None else problem.partition(" x ")[0]


class ProgressWatcher:
    """Polls a live summary into a display until ``finish``, which shows the final state.

    ``paused``: seconds left in the rate limit's shared pause (after a 429), if it tells;
    ``limit``: the campaign's rate limit, whose ``problem`` (if it has one) is shown.
    """

    def __init__(
        self,
        summary: CampaignSummary,
        total: int | None,
        display: ProgressDisplay,
        paused: Callable[[], float] | None = None,
        *,
        limit: object = None,
    ):
        self._summary = summary
        self._limit = limit
        self._total = total
        self.display = display
        self._paused = paused
        self._meter = RateMeter()
        self._records_meter = RateMeter()
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
        final = self._snapshot()
        final = dataclasses.replace(final, eta=None, problem=None)  # the summary tells
        if not summary.interrupted and summary.aborted is None:
            # A whole run handled every record: the total counted from the file's lines (a
            # blank line, a multi-line value) gives way to what was read.
            final = dataclasses.replace(final, total=summary.records)
        if summary.elapsed > 0:
            final = dataclasses.replace(final, targets_per_second=summary.targets_per_second)
        if isinstance(self.display, PlainProgress):
            self.display.every = 0.0  # the end state is always shown
        self.display.show(final)
        self.display.close()

    def _snapshot(self) -> Snapshot:
        return take_snapshot(
            self._summary, self._total, self._meter, self._records_meter, self._paused, self._limit
        )

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.display.interval)
            self.display.show(self._snapshot())
