"""The journal one owner of a slice writes through: every change fenced by its lease.

A ``Journal`` (the protocol a ``ChunkSender`` talks to) whose ``mark_in_flight`` returns
the lines it moved: only those may be sent. Writes of concurrent chunks are group-committed
(one transaction, one statement per kind of change) on a connection of the slice's own,
which is reopened and the batch run again when lost (every statement is idempotent).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._errors import JournalError
from .._records import Outcome
from ..journal import JournalEntry, SecretScrubber
from ..journal._group_commit import GroupCommit
from ._connect import Database
from ._store import HELD, MARK, RECORD, RELEASE, WRITE

if TYPE_CHECKING:
    import psycopg

__all__ = ["Lease", "SliceJournal", "lease_clock"]

_ENCODER: Final = msgspec.json.Encoder()


@dataclasses.dataclass
class Lease:
    """One owner's hold on one slice: the fencing number its claim got, and until when
    (on this process's monotonic clock, with a margin) it may still send."""

    campaign: str
    slice: int
    owner: str
    fence: int
    seconds: float
    margin: float
    valid_until: float = 0.0
    lost: bool = False

    @property
    def params(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "slice": self.slice,
            "owner": self.owner,
            "fence": self.fence,
        }

    def renewed(self, asked_at: float) -> None:
        """The server extended the lease by ``seconds`` from no earlier than ``asked_at``."""
        self.valid_until = asked_at + self.seconds - self.margin

    def held(self) -> bool:
        """Still ours, by what this process knows: a frozen process that wakes past its
        lease finds it over (its clock moved on) before the server says so."""
        return not self.lost and lease_clock() < self.valid_until


def lease_clock() -> float:
    """Seconds that keep counting while the machine is suspended (CLOCK_BOOTTIME; a
    suspended VM's monotonic clock stands still, and it would wake believing it still
    holds its leases), else monotonic seconds where there is no such clock."""
    return time.clock_gettime(_CLOCK)


_CLOCK: Final = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


class _Mark(msgspec.Struct):
    lines: list[int]
    moved: set[int] = msgspec.field(default_factory=set)


class _Row(msgspec.Struct, gc=False):
    """One final outcome as the batch's JSON carries it to ``RECORD``."""

    line: int
    state: str
    outcome: Outcome


class _Record(msgspec.Struct):
    rows: list[_Row]


class _Release(msgspec.Struct):
    lines: list[int]


_Op = _Mark | _Record | _Release


class SliceJournal:
    """The fenced journal of one slice's owner (a ``Journal`` backend)."""

    resumed = True

    def __init__(self, db: Database, lease: Lease, scrubber: SecretScrubber) -> None:
        self.db = db
        self._lease = lease
        self._scrubber = scrubber
        self._group: GroupCommit[_Op] = GroupCommit(self._write, error=self._error)

    async def lookup(self, lines: Sequence[int]) -> dict[int, JournalEntry]:
        return {}  # the runner loads what it sends; nothing asks an owner's journal

    async def mark_in_flight(self, lines: Sequence[int]) -> set[int]:
        """Mark ``lines`` in flight while the lease holds; the lines it marked."""
        if not lines or not self._lease.held():
            return set()
        op = _Mark(list(lines))
        await self._group.commit(op)
        return op.moved

    async def still_in_flight(self, lines: Sequence[int]) -> set[int]:
        """The lines among ``lines`` still in flight under this owner's mark, while the
        lease holds and the campaign runs: the fence before a retry, read, not written."""
        if not lines or not self._lease.held():
            return set()
        params = self._lease.params | {"marked": _int_array(sorted(lines))}

        async def held(conn: psycopg.AsyncConnection[Any]) -> set[int]:
            cursor = await conn.execute(HELD, params)
            return {line for (line,) in await cursor.fetchall()}

        return await self.db.run(held, transaction=False)

    async def release(self, lines: Sequence[int]) -> None:
        if lines:
            await self._group.add(_Release(list(lines)), rows=len(lines))

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        if not outcomes:
            return
        op = _Record([_Row(o.line, o.status.value, o) for o in outcomes])
        await self._group.add(op, rows=len(outcomes))

    async def flush(self) -> None:
        await self._group.commit()

    async def aclose(self) -> None:
        """Commit what is buffered; the connection stays its owner's (the runner reuses it)."""
        await self._group.aclose()

    async def _write(self, ops: list[_Op]) -> None:
        # Each statement is safe alone and run again after a lost connection: no
        # transaction around them (BEGIN and COMMIT would be two more round trips).
        await self.db.run(lambda conn: self._apply(conn, ops), transaction=False)

    async def _apply(self, conn: psycopg.AsyncConnection[Any], ops: list[_Op]) -> None:
        # Sorted: rows are locked in one order, as a cancel's bulk update locks them.
        marks = [op for op in ops if isinstance(op, _Mark)]
        marked = sorted(line for op in marks for line in op.lines)
        rows = sorted((row for op in ops if isinstance(op, _Record) for row in op.rows), key=_line)
        released = sorted(line for op in ops if isinstance(op, _Release) for line in op.lines)
        recorded = [row.line for row in rows]
        touched = len(marked) + len(recorded) + len(released)
        if len(set(marked) | set(recorded) | set(released)) == touched:
            cursor = await conn.execute(WRITE, self._params(marked, rows, released))
            moved = {line for (line,) in await cursor.fetchall()}
        else:  # a line changed twice: in the order the changes were made
            moved = set()
            for run in _runs(ops):
                moved |= await self._apply_run(conn, run)
        for op in marks:
            op.moved = moved.intersection(op.lines)

    async def _apply_run(self, conn: psycopg.AsyncConnection[Any], run: list[_Op]) -> set[int]:
        marked = [line for op in run if isinstance(op, _Mark) for line in op.lines]
        rows = [row for op in run if isinstance(op, _Record) for row in op.rows]
        released = [line for op in run if isinstance(op, _Release) for line in op.lines]
        params = self._params(marked, rows, released)
        if marked:
            cursor = await conn.execute(MARK, params)
            return {line for (line,) in await cursor.fetchall()}
        await conn.execute(RECORD if rows else RELEASE, params)
        return set()

    def _params(self, marked: list[int], rows: list[_Row], released: list[int]) -> dict[str, Any]:
        payload = self._scrubber.scrub(_ENCODER.encode(rows)).decode()
        return self._lease.params | {
            "marked": _int_array(marked),
            "rows": payload,
            "released": _int_array(released),
        }

    def _error(self, exc: Exception) -> Exception:
        if isinstance(exc, JournalError):
            return exc
        return JournalError(f"cannot write the journal {self.db.where}: {type(exc).__name__}")


def _line(row: _Row) -> int:
    return row.line


def _int_array(values: list[int]) -> str:
    """A PostgreSQL array literal: one string for the driver to send, not a list to adapt
    element by element (a tenth of a worker's time went to that)."""
    return "{" + ",".join(map(str, values)) + "}"


def _runs(ops: list[_Op]) -> list[list[_Op]]:
    """``ops`` cut where the kind of change changes."""
    runs: list[list[_Op]] = []
    for op in ops:
        if runs and type(runs[-1][0]) is type(op):
            runs[-1].append(op)
        else:
            runs.append([op])
    return runs
