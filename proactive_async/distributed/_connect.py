"""A PostgreSQL connection that outlives a restart of the server.

Every unit of work is a function of a connection, run in one transaction (or, for the
journal's batches, one statement at a time); when the connection is lost (a restart, a
failover, a pooler or an idle timeout ending the session, a network cut), it reconnects
with backoff and runs the unit again, for up to ``patience`` seconds. So every unit must
be safe to run twice: the statements of ``_store`` are (a claim names its own owner, a
mark returns lines this owner already marked, the rest move records only from the state
they expect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from .._errors import JournalError
from ..journal._pg_database import connect, display_dsn, ensure_schema
from ._store import SCHEMA

if TYPE_CHECKING:
    import psycopg

__all__ = ["CLOSE_WAIT", "DEFAULT_PATIENCE", "Database", "ensure_distributed_schema"]

T = TypeVar("T")
DEFAULT_PATIENCE: Final = 60.0
"""Seconds a unit of work keeps reconnecting before it fails (a restart takes a few)."""
_FIRST_WAIT: Final = 0.1
_MAX_WAIT: Final = 2.0
CLOSE_WAIT: Final = 5.0
"""Seconds ``aclose`` lets a running unit finish (a statement takes milliseconds; one
still running after this is stuck on a cut network, which shutdown does not wait out)."""
_log = logging.getLogger("proactive_async")


async def ensure_distributed_schema(conn: psycopg.AsyncConnection[Any]) -> None:
    await ensure_schema(conn, SCHEMA)


class Database:
    """One autocommit connection to ``dsn``, reopened when lost; one unit at a time."""

    def __init__(self, dsn: str, *, patience: float = DEFAULT_PATIENCE) -> None:
        self.dsn = dsn
        self.patience = patience
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._closing = False
        # Set by aclose: ends at once a unit's wait before it reconnects.
        self._closed = asyncio.Event()

    async def run(
        self,
        unit: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
        *,
        transaction: bool = True,
        retry: bool = True,
    ) -> T:
        """``unit(conn)`` in one transaction, run again on a new connection when the
        connection is lost; JournalError (never the password) once patience is out.

        ``transaction=False``: each statement commits on its own (no BEGIN and COMMIT
        round trips), for units whose statements need no atomicity together.
        ``retry=False``: a unit that must not run twice (it wrote somewhere else) fails
        with JournalError instead, once it started on a connection that was lost.
        """
        import psycopg

        deadline = time.monotonic() + self.patience
        wait = _FIRST_WAIT
        async with self._lock:
            while True:
                if self._closing:
                    raise JournalError(f"the journal {self.where} was closed")
                try:
                    conn = await self._connection()
                    if not transaction:
                        return await unit(conn)
                    async with conn.transaction():
                        return await unit(conn)
                except (psycopg.OperationalError, JournalError) as exc:
                    if isinstance(exc, JournalError) and self._conn is not None:
                        raise  # not a connection problem: the unit's own refusal
                    started = self._conn is not None
                    await self._drop()
                    out_of_time = time.monotonic() + wait > deadline
                    if (started and not retry) or out_of_time or self._closing:
                        raise self._error(exc) from None
                    _log.warning("journal %s unreachable (%s); retrying", self.where, _brief(exc))
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._closed.wait()
                    wait = min(_MAX_WAIT, wait * 2)
                except psycopg.Error as exc:  # e.g. tables missing: the wrong database
                    raise JournalError(f"the journal {self.where}: {_brief(exc)}") from None

    @property
    def where(self) -> str:
        return display_dsn(self.dsn)

    async def aclose(self) -> None:
        """Close once the running unit is done: one at work (a statement on its way, an
        outcome being recorded at shutdown) may finish, for up to ``CLOSE_WAIT`` seconds;
        one waiting to reconnect (the database is down) gives up at once instead of
        holding the close for its whole patience. Units not yet started never start."""
        self._closing = True
        self._closed.set()
        try:
            await asyncio.wait_for(self._lock.acquire(), CLOSE_WAIT)
        except TimeoutError:
            # Stuck (a cut network): its statement fails, and it does not try again.
            await self._drop()
            await self._lock.acquire()
        try:
            await self._drop()
        finally:
            self._lock.release()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            await self._drop()
            self._conn = await connect(self.dsn, **_keepalives(self.dsn))
            # A unit cut off mid-transaction must not hold its row locks for ever, nor a
            # unit wait for ever on one: both end in an error, and the unit runs again.
            await self._conn.execute(_SESSION)
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # already broken: nothing to close cleanly
                _log.debug("closing a lost journal connection failed", exc_info=True)

    def _error(self, exc: Exception) -> JournalError:
        return JournalError(f"the journal {self.where} is unreachable: {_brief(exc)}")


_SESSION: Final = "SET idle_in_transaction_session_timeout = '60s'; SET lock_timeout = '15s'"
_KEEPALIVES: Final = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}
"""A peer that vanished without a FIN (a cut network) is noticed in about 25 s, not the
kernel's two hours."""


def _keepalives(dsn: str) -> dict[str, str]:
    """The TCP keepalive parameters ``dsn`` does not set itself."""
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(dsn)
    return {key: value for key, value in _KEEPALIVES.items() if key not in given}


def _brief(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
