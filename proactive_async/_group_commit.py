"""Group commit: many callers' writes to one database connection, committed together.

Callers add operations (tagged msgspec Structs the backend understands) and either wait
for them to be committed (``commit``) or leave them buffered until a timer or a size
threshold commits them. One writer task commits at a time; every operation added while
a commit is running goes into the next one, so the number of commits follows the
database's speed, not the number of callers. A failed commit fails every waiter and
latches: the journal is unusable afterwards (its owner decides whether to reopen).

A caller cancelled while waiting does not withdraw its operations: they may still commit,
so the waiter is shielded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final, Generic, TypeVar

__all__ = ["GroupCommit"]

Op = TypeVar("Op")
_FLUSH_SECONDS: Final = 0.25
_FLUSH_ROWS: Final = 2048


class GroupCommit(Generic[Op]):
    """Buffers operations and commits them in batches through ``write``.

    Parameters:
        write: commits one batch, in the order the operations were added.
        error: turns a write's exception into the error every waiter receives.
        flush_seconds: buffered operations are committed this long after the first.
        flush_rows: ... or as soon as this many rows are buffered.
    """

    def __init__(
        self,
        write: Callable[[list[Op]], Awaitable[None]],
        *,
        error: Callable[[Exception], Exception],
        flush_seconds: float = _FLUSH_SECONDS,
        flush_rows: int = _FLUSH_ROWS,
    ) -> None:
        self._write = write
        self._error = error
        self._flush_seconds = flush_seconds
        self._flush_rows = flush_rows
        self._ops: list[Op] = []
        self._rows = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.failure: Exception | None = None

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
            await self.commit()
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
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _tick(self) -> None:
        self._timer = None
        if self._ops and self.failure is None:
            future = asyncio.ensure_future(self._committed())
            future.add_done_callback(_retrieve)

    async def _committed(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop())
        await asyncio.shield(waiter)

    async def _write_loop(self) -> None:
        while self._waiters:
            ops, self._ops = self._ops, []
            waiters, self._waiters = self._waiters, []
            self._rows = 0
            try:
                if ops:
                    await self._write(ops)
            except Exception as exc:
                self.failure = self._error(exc)
                for waiter in waiters + self._waiters:
                    if not waiter.done():
                        waiter.set_exception(self.failure)
                self._waiters = []
                return
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # read, so that a failure is not "never retrieved"
