"""What a run did second by second (records sent, failed, unknown; 429s): the HTML report's
chart. Kept in memory while the command runs (one small entry per second of activity) and
added to a SQLite journal when the run ends (``journal._sqlite_report.add_timeline``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, NamedTuple

from ._records import Outcome, OutcomeStatus

__all__ = ["SERIES", "Timeline", "TimelineRow"]

SERIES: Final = ("sent", "failed", "unknown", "throttled")
"""The counts of a second, in the order of ``TimelineRow``'s fields after ``second``."""

_INDEX: Final = {
    OutcomeStatus.SENT: 0,
    OutcomeStatus.FAILED: 1,
    OutcomeStatus.UNKNOWN: 2,
}
_THROTTLED: Final = 3


class TimelineRow(NamedTuple):
    """One second of a run: records that ended sent, failed, unknown in it, and the 429s."""

    second: int
    """Unix time, in whole seconds (UTC)."""
    sent: int = 0
    failed: int = 0
    unknown: int = 0
    throttled: int = 0


class Timeline:
    """Counts per wall-clock second; rejected and duplicate records are not activity."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._seconds: dict[int, list[int]] = {}

    def note_outcome(self, outcome: Outcome) -> None:
        """Count a record that ended sent, failed or unknown, in this second."""
        index = _INDEX.get(outcome.status)
        if index is not None:
            self._count(index)

    def note_throttle(self) -> None:
        """Count a 429, in this second."""
        self._count(_THROTTLED)

    def _count(self, index: int) -> None:
        second = int(self._clock())
        counts = self._seconds.get(second)
        if counts is None:
            counts = self._seconds[second] = [0, 0, 0, 0]
        counts[index] += 1

    def rows(self) -> list[TimelineRow]:
        """The seconds with activity, in order."""
        return [TimelineRow(second, *counts) for second, counts in sorted(self._seconds.items())]

    def __len__(self) -> int:
        return len(self._seconds)
