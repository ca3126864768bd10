"""What a campaign tells: the JSONL report file and the summary's running statistics."""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import IO

import msgspec

from ._records import Outcome, OutcomeStatus

__all__ = ["CampaignSummary", "LatencySample", "ReportWriter"]


class ReportWriter:
    """Appends one JSON line per outcome; buffered, flushed on ``flush()`` and ``close()``."""

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False) -> None:
        self.path = os.fspath(path)
        self._file: IO[bytes] = open(self.path, "ab" if append else "wb")  # noqa: SIM115
        self._encoder = msgspec.json.Encoder()
        self._buffer = bytearray()

    def write(self, outcome: Outcome) -> None:
        self._encoder.encode_into(outcome, self._buffer, -1)
        self._buffer.extend(b"\n")
        if len(self._buffer) >= 1 << 16:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._file.write(self._buffer)
            self._buffer.clear()
        self._file.flush()

    def close(self) -> None:
        if self._file.closed:
            return
        self.flush()
        self._file.close()


class LatencySample:
    """A bounded uniform sample of call latencies (reservoir sampling): flat memory."""

    def __init__(self, size: int = 50_000, *, seed: int = 0) -> None:
        self._size = size
        self._values: list[float] = []
        self._seen = 0
        self._random = random.Random(seed)
        self._sorted: tuple[int, list[float]] = (-1, [])  # (seen when sorted, values)

    def add(self, seconds: float) -> None:
        self._seen += 1
        if len(self._values) < self._size:
            self._values.append(seconds)
            return
        slot = self._random.randrange(self._seen)
        if slot < self._size:
            self._values[slot] = seconds

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0-100) in seconds, or None with no samples."""
        if not self._values:
            return None
        seen, ordered = self._sorted
        if seen != self._seen:  # p50, p95 and p99 of one summary sort once
            ordered = sorted(self._values)
            self._sorted = (self._seen, ordered)
        index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
        return ordered[index]


@dataclass
class CampaignSummary:
    """Counts and rates of a campaign, live while it runs and final after.

    ``counts`` has every OutcomeStatus; ``records`` the outcomes so far; ``calls`` the
    HTTP attempts made, ``retries`` those after a first, ``throttled`` the 429s seen.
    """

    counts: Counter[OutcomeStatus] = field(
        default_factory=lambda: Counter({status: 0 for status in OutcomeStatus})
    )
    records: int = 0
    targets_sent: int = 0
    calls: int = 0
    retries: int = 0
    throttled: int = 0
    elapsed: float = 0.0
    resumed: int = 0
    """Outcomes taken from the journal of an earlier run rather than sent now."""
    interrupted: bool = False
    """The campaign was stopped before the whole input was read and sent."""
    pending: int = 0
    """Records left unsent by a stop after certainly-unprocessed attempts (a resume sends them)."""
    aborted: str | None = None
    """Why the campaign was aborted (a fatal error, or 429s without end), if it was."""
    latency_p50: float | None = None
    latency_p95: float | None = None
    latency_p99: float | None = None

    @property
    def targets_per_second(self) -> float:
        return self.targets_sent / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def complete(self) -> bool:
        """Every record ended ``sent``, ``rejected`` or ``duplicate``."""
        return not self.interrupted and not (
            self.counts[OutcomeStatus.FAILED] or self.counts[OutcomeStatus.UNKNOWN]
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "records": self.records,
            "counts": {str(k): v for k, v in self.counts.items()},
            "targets_sent": self.targets_sent,
            "targets_per_second": round(self.targets_per_second, 1),
            "calls": self.calls,
            "retries": self.retries,
            "throttled": self.throttled,
            "elapsed": round(self.elapsed, 3),
            "resumed": self.resumed,
            "interrupted": self.interrupted,
            "pending": self.pending,
            "aborted": self.aborted,
            "latency_ms": {
                "p50": _ms(self.latency_p50),
                "p95": _ms(self.latency_p95),
                "p99": _ms(self.latency_p99),
            },
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 2)
