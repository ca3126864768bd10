"""What a campaign tells: the JSONL report file and the summary's running statistics.

A report is written to a temporary file beside its path and renamed over it when it is
complete (``ReportWriter.close``): a run that fails before it has a report leaves the
earlier one as it was, and a reader never sees half a report under the final name.
"""

from __future__ import annotations

import contextlib
import csv
import heapq
import io
import os
import random
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, TYPE_CHECKING, Final, NamedTuple

import msgspec

from ._files import open_beside, replaceable
from ._records import Outcome, OutcomeStatus

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "REPORT_FORMATS",
    "CampaignSummary",
    "ErrorCount",
    "FailedAttempt",
    "LatencySample",
    "ReportWriter",
    "outcome_lines",
    "report_format",
]

_OUTCOME_DECODER: Final = msgspec.json.Decoder(Outcome)

REPORT_FORMATS: Final = ("jsonl", "csv")
_CSV_COLUMNS: Final = (
    "line", "status", "recipient", "contact_id", "conversation_ids", "attempts",
    "error_kind", "error_status", "error_message", "duplicate_of", "trace_id",
)  # fmt: skip
_CSV_HEADER: Final = (",".join(_CSV_COLUMNS) + "\r\n").encode()


def report_format(path: str) -> str:
    """The format a report path asks for: ``csv`` for ``*.csv``, else ``jsonl``."""
    return "csv" if path.lower().endswith(".csv") else "jsonl"


def _csv_line(outcome: Outcome) -> bytes:
    """One outcome as a CSV row (for spreadsheets): ids space-separated, the error split."""
    error = outcome.error
    row = [
        outcome.line,
        outcome.status.value,
        outcome.recipient or "",
        "" if outcome.contact_id is None else outcome.contact_id,
        " ".join(str(i) for i in outcome.conversation_ids),
        outcome.attempts,
        error.kind if error else "",
        "" if error is None or error.status is None else error.status,
        error.message if error else "",
        "" if outcome.duplicate_of is None else outcome.duplicate_of,
        error.trace_id or "" if error else "",
    ]
    text = io.StringIO()
    csv.writer(text).writerow(row)
    return text.getvalue().encode()


# Lines held for an earlier line before they are spilled to a temporary file; and how many
# spilled runs may be open before they are merged into one (each holds a file descriptor).
_MAX_HELD = 20_000
_MAX_RUNS = 16
_BUFFER_SIZE: Final = 1 << 16  # bytes buffered before they are written


class ReportWriter:
    """Writes one line per outcome (JSON; CSV for a ``.csv`` path), by ``line``, in flat memory.

    The lines go to a temporary file in the report's directory, renamed over ``path`` by
    ``close()`` or ``flush()``; ``discard()`` (or leaving a ``with`` block by an exception)
    drops it and leaves ``path`` as it was. Written in place instead: with ``append``, a
    path that is no regular file (``/dev/stdout``, a pipe), or a file object given as
    ``path`` (JSONL unless ``format`` says otherwise; never closed here).

    Outcomes arrive in completion order. A line is written once every earlier line has been;
    later ones wait, up to ``max_held`` in memory, past that sorted into temporary files
    (runs) that are merged back as the gap fills, or at ``close()``. A line that never
    comes (a record left unsent by a stop) holds the rest back until ``close()``, which
    writes every line still held in order. Buffered; flushed past 64 KiB and on ``close()``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | IO[bytes],
        *,
        append: bool = False,
        max_held: int = _MAX_HELD,
        format: str | None = None,
    ) -> None:
        self._replace: tuple[str, str] | None = None  # (temporary, final) until published
        self._owns_file = True
        if isinstance(path, str | os.PathLike):
            self.path: str = os.fspath(path)
            self.format: str = format or report_format(self.path)
        else:
            self.path = getattr(path, "name", "-")
            self.format = format or "jsonl"
        if self.format not in REPORT_FORMATS:
            raise ValueError(f"a report is jsonl or csv, not {self.format!r}")
        if not isinstance(path, str | os.PathLike):
            self._file: IO[bytes] = path
            self._owns_file = False
        elif append or not replaceable(self.path):
            self._file = open(self.path, "ab" if append else "wb")  # noqa: SIM115
        else:
            self._file, self._replace = open_beside(self.path)
        self._encoder = msgspec.json.Encoder()
        self._json = self.format == "jsonl"
        if self.format == "csv" and self._file.tell() == 0:
            self._file.write(_CSV_HEADER)
        self._buffer = bytearray()
        self._max_held = max_held
        self._next = 1  # records are numbered from 1
        self._held: dict[int, bytes] = {}
        self._runs: list[tuple[int, int, _Run]] = []  # a heap by each run's first line
        self._spills = 0

    def write(self, outcome: Outcome) -> None:
        """Write one outcome's line, or hold it until every earlier line is written."""
        line = outcome.line
        if line == self._next:
            # The usual case (a line in order): a JSON line is encoded straight into the buffer.
            buffer = self._buffer
            if self._json:
                self._encoder.encode_into(outcome, buffer, -1)
                buffer += b"\n"
            else:
                buffer += _csv_line(outcome)
            self._next = line + 1
            if self._held or self._runs:
                self._advance()
            if len(buffer) >= _BUFFER_SIZE:
                self._write_buffer()
            return
        data = self._encode(outcome)
        if line < self._next or line in self._held:
            self._emit(data)  # a line seen again: nothing to wait for
        else:
            self._held[line] = data
            if len(self._held) > self._max_held:
                self._spill()

    def _encode(self, outcome: Outcome) -> bytes:
        if self.format == "csv":
            return _csv_line(outcome)
        return self._encoder.encode(outcome) + b"\n"

    def flush(self) -> None:
        """Write every line so far, the held ones too (in order across the gaps: a line
        coming later is written after them), for an exit that cannot wait."""
        for line, data in self._remaining():
            self._emit(data)
            self._next = max(self._next, line + 1)
        self._write_buffer()
        self._publish()

    def close(self) -> None:
        """Write what is held, close, and put the report in place (renamed over ``path``)."""
        if self._file.closed:
            return
        self.flush()
        if self._owns_file:
            self._file.close()

    def discard(self) -> None:
        """Drop a report not put in place yet: ``path`` keeps what it held before."""
        if not self._file.closed and self._owns_file:
            self._file.close()
        if self._replace is not None:
            temporary, self._replace = self._replace[0], None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        for _, _, run in self._runs:
            run.close()
        self._runs, self._held = [], {}

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:
            self.discard()

    def _emit(self, data: bytes) -> None:
        self._buffer.extend(data)
        if len(self._buffer) >= _BUFFER_SIZE:
            self._write_buffer()

    def _write_buffer(self) -> None:
        if self._buffer:
            self._file.write(self._buffer)
            self._buffer.clear()
        self._file.flush()

    def _publish(self) -> None:
        """Rename the temporary file over the report's path (the open file keeps writing
        to it: only ``flush`` for an exit that cannot wait publishes before ``close``)."""
        if self._replace is not None:
            temporary, final = self._replace
            os.replace(temporary, final)
            self._replace = None

    def _advance(self) -> None:
        """Write the lines that now follow on, from memory or from the runs."""
        held, runs = self._held, self._runs
        while True:
            data = held.pop(self._next, None)
            if data is None and runs and runs[0][0] <= self._next:
                first, _, run = runs[0]
                data = run.pop()
                self._replace_head(run)
                if first < self._next:  # a repeat of a line already written
                    self._emit(data)
                    continue
            if data is None:
                return
            self._emit(data)
            self._next += 1

    def _replace_head(self, run: _Run) -> None:
        if run.head is None:
            heapq.heappop(self._runs)
        else:
            heapq.heapreplace(self._runs, (run.head[0], self._spills, run))
            self._spills += 1

    def _spill(self) -> None:
        """Move the held lines to a sorted run on disk; merge the runs when there are many."""
        run = _Run(sorted(self._held.items()))
        self._held.clear()
        self._push(run)
        if len(self._runs) > _MAX_RUNS:
            merged = _Run(self._drain_runs())
            self._push(merged)

    def _push(self, run: _Run) -> None:
        if run.head is not None:
            heapq.heappush(self._runs, (run.head[0], self._spills, run))
            self._spills += 1

    def _drain_runs(self) -> Iterator[tuple[int, bytes]]:
        runs = [run for _, _, run in self._runs]
        self._runs = []
        return heapq.merge(*(iter(run) for run in runs), key=lambda item: item[0])

    def _remaining(self) -> Iterator[tuple[int, bytes]]:
        held = sorted(self._held.items())
        self._held = {}
        return heapq.merge(held, self._drain_runs(), key=lambda item: item[0])


def outcome_lines(write: Callable[[Outcome], None]) -> IO[bytes]:
    """A binary file taking outcomes as JSON lines (as a journal stores them): each is
    decoded and passed to ``write``. Close it (or flush it) to pass the last one."""
    return io.BufferedWriter(_JsonLines(write))


class _JsonLines(io.RawIOBase):
    """What ``outcome_lines`` buffers into: cuts lines, decodes each outcome."""

    def __init__(self, write: Callable[[Outcome], None]) -> None:
        self._write = write
        self._partial = b""

    def writable(self) -> bool:
        return True

    def write(self, data: WriteableBuffer, /) -> int:
        chunk = bytes(memoryview(data))
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                self._write(_OUTCOME_DECODER.decode(line))
        return len(chunk)

    def close(self) -> None:
        if not self.closed and self._partial.strip():
            self._write(_OUTCOME_DECODER.decode(self._partial))
            self._partial = b""
        super().close()


class _Run:
    """Report lines sorted by line number in a temporary file, read back one at a time."""

    def __init__(self, items: Iterator[tuple[int, bytes]] | list[tuple[int, bytes]]) -> None:
        self._file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self._file.writelines(b"%d\t%s" % item for item in items)
        self._file.seek(0)
        self.head: tuple[int, bytes] | None = self._read()

    def _read(self) -> tuple[int, bytes] | None:
        raw = self._file.readline()
        if not raw:
            self._file.close()
            return None
        tab = raw.index(b"\t")
        return int(raw[:tab]), raw[tab + 1 :]

    def close(self) -> None:
        self._file.close()
        self.head = None

    def pop(self) -> bytes:
        assert self.head is not None
        data = self.head[1]
        self.head = self._read()
        return data

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        while self.head is not None:
            item = self.head
            self.head = self._read()
            yield item


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
    errors: Counter[ErrorKey] = field(default_factory=Counter)
    """Records that ended failed, unknown or rejected, by (status, kind, HTTP status, message)."""
    last_failure: FailedAttempt | None = None
    """The latest failed call, while no call has succeeded since (live, for the display)."""

    @property
    def targets_per_second(self) -> float:
        """Targets sent per second of ``elapsed`` (0 before any time passed)."""
        return self.targets_sent / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def complete(self) -> bool:
        """Every record ended ``sent``, ``rejected`` or ``duplicate``."""
        return not self.interrupted and not (
            self.counts[OutcomeStatus.FAILED] or self.counts[OutcomeStatus.UNKNOWN]
        )

    def note_outcome(self, outcome: Outcome, *, resumed: bool = False) -> None:
        """Count one record's final outcome: its status, and the error of a record that did
        not end sent, for ``top_errors`` (``resumed``: taken from an earlier run's journal)."""
        self.counts[outcome.status] += 1
        self.records += 1
        if resumed:
            self.resumed += 1
        elif outcome.status is OutcomeStatus.SENT:
            self.targets_sent += 1
        self._note_error(outcome)

    def _note_error(self, outcome: Outcome) -> None:
        """Count the error by its key (distinct keys are bounded)."""
        error = outcome.error
        if error is None or outcome.status in (OutcomeStatus.SENT, OutcomeStatus.DUPLICATE):
            return
        message = error.message
        if outcome.status is OutcomeStatus.REJECTED:
            # "phone number '12' has no country code": one reason, whatever the number.
            message = _QUOTED.sub("'...'", message)
        key = ErrorKey(str(outcome.status), error.kind, error.status, message)
        if key not in self.errors and len(self.errors) >= _MAX_ERROR_KEYS:
            key = key._replace(message=_OTHER_MESSAGES)
        self.errors[key] += 1

    def note_failed_attempt(
        self, kind: str, status: int | None, message: str, *, at: float, wait: float | None
    ) -> None:
        """A call failed (``wait``: seconds until it is tried again; None: not retried)."""
        last = self.last_failure
        same = last is not None and (last.kind, last.status) == (kind, status)
        count = last.count + 1 if same and last is not None else 1
        self.last_failure = FailedAttempt(kind, status, message, count, at, wait)

    def note_success(self) -> None:
        """A call succeeded: ``last_failure`` is over."""
        self.last_failure = None

    def top_errors(
        self, limit: int = 5, *, statuses: tuple[OutcomeStatus, ...] = ()
    ) -> list[ErrorCount]:
        """The most frequent record errors (of ``statuses``; default: failed and unknown)."""
        wanted = {str(s) for s in statuses or (OutcomeStatus.FAILED, OutcomeStatus.UNKNOWN)}
        ranked = [(n, key) for key, n in self.errors.items() if key.status in wanted]
        ranked.sort(key=lambda item: (-item[0], item[1].kind, item[1].message))
        return [ErrorCount(n, *key) for n, key in ranked[:limit]]

    def as_dict(self) -> dict[str, object]:
        """The summary as plain JSON values (latencies in milliseconds), for a JSON summary."""
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
            "top_errors": [error.as_dict() for error in self.top_errors(10)],
        }


class ErrorKey(NamedTuple):
    """What record errors are counted by."""

    status: str
    kind: str
    http_status: int | None
    message: str


class ErrorCount(NamedTuple):
    """``records`` records ended ``status`` with this error."""

    records: int
    status: str
    kind: str
    http_status: int | None
    message: str

    def text(self) -> str:
        """``1,900 x HTTP 401 Unauthorized (AuthenticationError, failed)``."""
        return f"{self.records:,} x {self.message} ({self.kind}, {self.status})"

    def as_dict(self) -> dict[str, object]:
        """The count and its key as plain JSON values."""
        return {
            "records": self.records,
            "status": self.status,
            "kind": self.kind,
            "http_status": self.http_status,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """The latest failed call: its error, how many like it in a row, and the wait after it."""

    kind: str
    status: int | None
    message: str
    count: int
    at: float
    """When it failed (monotonic seconds)."""
    wait: float | None
    """Seconds until the next attempt; None: not retried."""

    def text(self, now: float, paused: float = 0.0) -> str:
        """``retrying: ConnectError x 12, next in 4 s`` (or ``paused`` while the limit is)."""
        what = self.kind if self.status is None else f"{self.kind} {self.status}"
        if paused > 0:
            return f"paused: {what} x {self.count:,}, resuming in {paused:.0f} s"
        if self.wait is None:
            return f"failing: {what} x {self.count:,}: {self.message}"
        left = max(0.0, self.at + self.wait - now)
        return f"retrying: {what} x {self.count:,}, next in {left:.0f} s: {self.message}"


_MAX_ERROR_KEYS = 1000
_QUOTED = re.compile(r"'[^']*'")
_OTHER_MESSAGES = "(other messages)"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 2)
