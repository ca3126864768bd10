"""A SQLite journal after its campaign: read for a report, and the run's timeline added.

The timeline is an optional table beside ``meta`` and ``lines``; the format stays 1, so a
journal without it (written before it existed, by a run killed before its end, or by the
library's ``Campaign``, which keeps none) reads the same, and older versions ignore it::

    timeline (second INTEGER PRIMARY KEY, sent, failed, unknown, throttled)

One row per second of activity (Unix time): records that ended sent, failed or unknown in
it, and the 429s answered. A resumed campaign adds its seconds to the same table.

The file is opened as the journal opens it (exclusive locking: no ``-shm`` file, and the
``-wal`` merged back on close), so a report leaves the folder as it found it; a campaign
running on the journal holds its lock, and a report is refused until it ends.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote

from .._errors import JournalError
from .._records import Outcome
from .._timeline import TimelineRow
from ._base import interrupted_outcome
from ._sqlite import _entry, check_format, refusal

__all__ = ["JournalReader", "add_timeline"]

_TIMELINE_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS timeline (second INTEGER PRIMARY KEY, sent INTEGER NOT NULL,"
    " failed INTEGER NOT NULL, unknown INTEGER NOT NULL, throttled INTEGER NOT NULL)"
)
_ADD_SQL: Final = (
    "INSERT INTO timeline VALUES (?, ?, ?, ?, ?) ON CONFLICT (second) DO UPDATE SET"
    " sent = sent + excluded.sent, failed = failed + excluded.failed,"
    " unknown = unknown + excluded.unknown, throttled = throttled + excluded.throttled"
)
_BATCH: Final = 1000


class JournalReader:
    """A SQLite journal opened to be read (never written): outcomes in line order, counts of
    lines left in flight, the timeline.

    Usage::

        with JournalReader("campaign.db") as journal:
            for outcome in journal.outcomes():   # a line left in flight: unknown
                ...
            rows = journal.timeline()            # None: the journal has none
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn = _connect(path, query_only=True)
        try:
            _check_journal(self._conn, path)
        except BaseException:
            self._conn.close()
            raise
        self.in_flight = 0
        """Lines found in flight by ``outcomes()`` (a run that stopped while sending them)."""

    def outcomes(self) -> Iterator[Outcome]:
        """Every line's outcome by line; a line in flight is ``unknown`` (``interrupted``),
        as a resume reports it."""
        self.in_flight = 0
        rows = self._read("SELECT * FROM lines ORDER BY line")
        for row in rows:
            entry = _entry(row)
            if entry.outcome is None:
                self.in_flight += 1
                yield interrupted_outcome(entry.line)
            else:
                yield entry.outcome

    def timeline(self) -> list[TimelineRow] | None:
        """The seconds the command's runs recorded, in time order; None without a timeline."""
        tables = {name for (name,) in self._read("SELECT name FROM sqlite_master")}
        if "timeline" not in tables:
            return None
        rows = self._read("SELECT second, sent, failed, unknown, throttled FROM timeline")
        return [TimelineRow(*row) for row in sorted(rows)]

    def _read(self, sql: str) -> Iterator[Any]:
        try:
            cursor = self._conn.execute(sql)
            while batch := cursor.fetchmany(_BATCH):
                yield from batch
        except sqlite3.Error as exc:
            raise _read_error(self.path, exc) from exc

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> JournalReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def add_timeline(path: str, rows: Sequence[TimelineRow]) -> None:
    """Add a run's seconds to the journal's timeline (created when missing), in one commit."""
    if not rows:
        return
    conn = _connect(path, query_only=False)
    try:
        _check_journal(conn, path)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_TIMELINE_TABLE)
        conn.executemany(_ADD_SQL, rows)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        message = f"cannot add the timeline to the journal {path}: {exc}"
        raise refusal(path, exc, message) from exc
    finally:
        conn.close()


def _connect(path: str, *, query_only: bool) -> sqlite3.Connection:
    """The journal's file, never created here (``mode=rw``), locked as the journal locks it."""
    uri = f"file:{quote(path)}?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=0)
    except sqlite3.Error as exc:
        raise JournalError(
            f"cannot open the journal {path}: no such file, or not readable"
        ) from exc
    try:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        if query_only:
            conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        conn.close()
        raise _read_error(path, exc) from exc
    return conn


def _check_journal(conn: sqlite3.Connection, path: str) -> None:
    try:
        check_format(conn, path)
    except sqlite3.Error as exc:
        raise _read_error(path, exc) from exc


def _read_error(path: str, exc: sqlite3.Error) -> JournalError:
    return refusal(path, exc, f"cannot read the journal {path}: {exc}")
