"""Group commit: many callers' writes to one database connection, committed together.

Callers add operations (tagged msgspec Structs the backend understands) and either wait
for them to be committed (``commit``) or leave them buffered until a timer or a size
threshold commits them. One writer task commits at a time; every operation added while
a commit is running goes into the next one, so the number of commits follows the
database's speed, not the number of callers. Used by both journal backends and by a
distributed slice's fenced journal.

Two rules, the safe side of each:

* A caller cancelled while it waits does not withdraw its operations: they are already
  buffered and the writer (a task of its own) still commits them. A line marked in flight
  by a cancelled caller is then in flight, which a resume reports ``unknown``, never resent.
* A failed commit fails every waiter (of that commit and of the next) and latches: every
  later call raises, because a journal that missed a write can no longer vouch for what
  it holds. Its owner decides whether to reopen.

The journal operations of the two backends (``Mark``, ``Release``, ``Record``) and the one
rule for applying a batch of them (``coalesce``) live here too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

import msgspec

from .._errors import JournalError

__all__ = [
    "Batch",
    "GroupCommit",
    "JournalOp",
    "Mark",
    "Record",
    "Release",
    "check_usable",
    "coalesce",
]

Op = TypeVar("Op")

# Defaults of every GroupCommit, read when one is built (tests patch them): buffered
# operations wait at most this long, or until this many rows are buffered.
FLUSH_SECONDS = 0.25
FLUSH_ROWS = 2048


class GroupCommit(Generic[Op]):
    """Buffers operations and commits them in batches through ``write``.

    Usage::

        group = GroupCommit(write_batch, error=lambda exc: JournalError(str(exc)))
        await group.add(Record(...), rows=3)   # buffered: committed by time or size
        await group.commit(Mark([4, 5]))       # returns once committed
        await group.aclose()                   # commits what is buffered

    Parameters:
        write: commits one batch, given in the order the operations were added.
        error: turns a write's exception into the error every waiter receives.
        flush_seconds: buffered operations are committed this long after the first.
        flush_rows: ... or as soon as this many rows are buffered.
    """

    def __init__(
        self,
        write: Callable[[list[Op]], Awaitable[None]],
        *,
        error: Callable[[Exception], Exception],
        flush_seconds: float | None = None,
        flush_rows: int | None = None,
    ) -> None:
        self._write = write
        self._error = error
        self._flush_seconds = FLUSH_SECONDS if flush_seconds is None else flush_seconds
        self._flush_rows = FLUSH_ROWS if flush_rows is None else flush_rows
        self._ops: list[Op] = []
        self._rows = 0
        # Futures of callers waiting for the next commit (commit(), a full buffer, the timer).
        self._waiters: list[asyncio.Future[None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.failure: Exception | None = None
        """The error of the commit that failed; every later call raises it."""
        self.commits = 0
        """Transactions committed so far (for summaries and tests)."""

    @property
    def pending(self) -> bool:
        """Operations are buffered or being committed."""
        return bool(self._ops) or (self._writer is not None and not self._writer.done())

    async def add(self, op: Op, *, rows: int = 1) -> None:
        """Buffer ``op``; commits now when the buffer is full, else within ``flush_seconds``."""
        self._check()
        self._ops.append(op)
        self._rows += rows
        if self._rows >= self._flush_rows:
            await self._committed()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_seconds, self._tick)

    async def commit(self, op: Op | None = None) -> None:
        """Add ``op`` (if any) and return once it and everything before it is committed."""
        self._check()
        if op is not None:
            self._ops.append(op)
        await self._committed()

    async def aclose(self) -> None:
        """Commit what is buffered (unless a commit failed) and stop the timer."""
        try:
            if self.failure is None and self.pending:
                await self._committed()
        finally:
            self._stop_timer()

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _tick(self) -> None:
        self._timer = None
        if self._ops and self.failure is None:
            future = asyncio.ensure_future(self._committed())
            future.add_done_callback(_retrieve)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _committed(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop())
        # Not shielded: a cancelled caller cancels only its own future, which the writer
        # skips; its operations stay in the batch (see the module docstring).
        await waiter

    async def _write_loop(self) -> None:
        """Commit what has gathered, again and again, until nobody waits."""
        while self._waiters:
            ops, self._ops = self._ops, []
            waiters, self._waiters = self._waiters, []
            self._rows = 0
            self._stop_timer()  # what it would have committed goes now
            if ops:
                try:
                    await self._write(ops)
                except Exception as exc:
                    self._fail(self._error(exc), waiters)
                    return
                except BaseException:
                    # The writer itself was cancelled mid-commit: whether it committed is
                    # unknown, and nobody may wait forever for it.
                    self._fail(self._error(_Interrupted("the commit was interrupted")), waiters)
                    raise
                self.commits += 1
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _fail(self, failure: Exception, waiters: list[asyncio.Future[None]]) -> None:
        self.failure = failure
        self._ops.clear()
        self._rows = 0
        self._stop_timer()
        for waiter in (*waiters, *self._waiters):
            if not waiter.done():
                waiter.set_exception(failure)
        self._waiters.clear()


class _Interrupted(Exception):
    """A commit whose writer task was cancelled before it finished."""


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # read, so that a failure is not "never retrieved"


class Mark(msgspec.Struct, tag=True, frozen=True):
    """Mark ``lines`` in flight: committed before their call is made."""

    lines: list[int]


class Release(msgspec.Struct, tag=True, frozen=True):
    """Withdraw the in-flight marks of ``lines`` (never a final outcome)."""

    lines: list[int]


class Record(msgspec.Struct, tag=True, frozen=True):
    """Final outcomes of ``lines``: each as msgspec encoded it when it was recorded (a
    snapshot), not yet scrubbed: the writer scrubs a whole batch at once."""

    lines: list[int]
    outcomes: list[bytes]


JournalOp = Mark | Release | Record


class Batch(msgspec.Struct, frozen=True):
    """A batch of journal operations as one statement per kind, applied in this order:
    ``records`` (line -> encoded outcome), then ``marks``, then ``releases``."""

    records: dict[int, bytes]
    marks: list[int]
    releases: list[int]


def coalesce(ops: Iterable[JournalOp]) -> Batch:
    """``ops`` (in call order) as a ``Batch`` that leaves every line as applying them one
    by one would: a later record of a line replaces an earlier one; a line marked after
    its outcome was recorded is in flight (it is being sent again: the record is dropped,
    the mark overwrites it anyway); a line recorded after its mark keeps its outcome; a
    line marked after its release is in flight; a release touches only lines in flight, so
    it never undoes an outcome. Records and marks never share a line (PostgreSQL writes
    both in one statement, which may touch a row once)."""
    records: dict[int, bytes] = {}
    marks: set[int] = set()
    releases: set[int] = set()
    for op in ops:
        if isinstance(op, Mark):
            if releases:
                releases.difference_update(op.lines)  # applied after marks, it would undo them
            if records:
                for line in op.lines:
                    records.pop(line, None)
            marks.update(op.lines)
        elif isinstance(op, Record):
            if marks and not marks.isdisjoint(op.lines):
                marks.difference_update(op.lines)  # applied after records, it would undo them
            records.update(zip(op.lines, op.outcomes, strict=True))
        else:
            releases.update(op.lines)
    return Batch(records=records, marks=sorted(marks), releases=sorted(releases))


def check_usable(where: str, failure: Exception | None, closed: bool) -> None:
    """Refuse a call to a journal that is closed, or whose commit failed (it can no longer
    vouch for what it holds)."""
    if failure is not None:
        raise JournalError(f"the journal {where} failed earlier: {failure}") from failure
    if closed:
        raise JournalError(f"the journal {where} is closed")
