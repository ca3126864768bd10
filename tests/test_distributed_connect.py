"""Closing a distributed campaign's ``Database`` while a unit of work runs: the unit at work
finishes (its write is kept), one stuck past ``CLOSE_WAIT`` is cut, and units not yet
started never start. (A unit waiting for a server that is down gives up at once:
``test_distributed.py``.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest

from proactive_async import JournalError
from proactive_async.distributed import _connect
from proactive_async.distributed._connect import Database


@pytest.fixture
def dsn(postgres_server: Any) -> str:
    url = str(postgres_server.create_database(f"conn_{uuid.uuid4().hex[:10]}"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int)")
    return url


def kept(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [n for (n,) in conn.execute("SELECT n FROM kept ORDER BY n").fetchall()]


def slow_write(seconds: float, started: asyncio.Event) -> Any:
    """A unit that takes ``seconds`` in the database, then writes (as a RECORD would)."""

    async def unit(conn: psycopg.AsyncConnection[Any]) -> str:
        started.set()
        await conn.execute("SELECT pg_sleep(%s)", (seconds,))
        await conn.execute("INSERT INTO kept VALUES (1)")
        return "done"

    return unit


async def test_a_unit_at_work_when_the_database_closes_finishes_and_its_write_is_kept(
    dsn: str,
) -> None:
    db = Database(dsn)
    started = asyncio.Event()
    running = asyncio.create_task(db.run(slow_write(0.5, started)))
    await started.wait()
    queued = asyncio.create_task(db.run(lambda conn: conn.execute("INSERT INTO kept VALUES (2)")))
    await asyncio.sleep(0)  # waiting for the unit at work
    await db.aclose()
    assert running.done() and running.result() == "done"
    with pytest.raises(JournalError, match="closed"):
        await queued  # never started: closed before its turn
    assert kept(dsn) == [1]


async def test_a_unit_stuck_past_close_wait_is_cut(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement that does not end (a cut network looks the same) holds the close for
    ``CLOSE_WAIT`` seconds at most: then its connection is closed, the unit fails and is
    not run again."""
    monkeypatch.setattr(_connect, "CLOSE_WAIT", 0.5)
    db = Database(dsn)
    started = asyncio.Event()
    running = asyncio.create_task(db.run(slow_write(30, started)))
    await started.wait()
    began = time.monotonic()
    await asyncio.wait_for(db.aclose(), 10)
    assert time.monotonic() - began < 5
    with pytest.raises(JournalError):
        await running
    assert kept(dsn) == []
