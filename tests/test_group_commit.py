"""GroupCommit, the one writer behind every journal: batching, the timer and the size
threshold, a failure that fails every waiter and latches, a cancelled caller whose writes
still commit; and ``coalesce``, which must leave every line as call order would."""

from __future__ import annotations

import asyncio
import random

import pytest

from proactive_async import JournalError
from proactive_async.journal._group_commit import (
    GroupCommit,
    JournalOp,
    Mark,
    Record,
    Release,
    check_usable,
    coalesce,
)


class Database:
    """A fake writer: records each batch; ``gate`` holds a commit open; ``fail`` fails it."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.started = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def write(self, ops: list[str]) -> None:
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.batches.append(ops)


def group_of(db: Database, **tuning: float) -> GroupCommit[str]:
    return GroupCommit(db.write, error=lambda exc: JournalError(f"wrapped: {exc}"), **tuning)  # type: ignore[arg-type]


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_concurrent_commits_share_one_batch() -> None:
    db = Database()
    group = group_of(db)
    await asyncio.gather(*(group.commit(f"op{n}") for n in range(5)))
    assert db.batches == [[f"op{n}" for n in range(5)]]
    assert group.commits == 1


async def test_callers_arriving_during_a_commit_share_the_next_one() -> None:
    db = Database()
    db.gate = asyncio.Event()
    group = group_of(db)
    first = asyncio.create_task(group.commit("a"))
    await db.started.wait()  # the commit of "a" is running
    later = [asyncio.create_task(group.commit(op)) for op in ("b", "c", "d")]
    await settle()
    assert not any(task.done() for task in (first, *later))
    db.gate.set()
    await asyncio.gather(first, *later)
    assert db.batches == [["a"], ["b", "c", "d"]]
    assert group.commits == 2


async def test_buffered_ops_ride_along_in_the_next_commit_in_call_order() -> None:
    db = Database()
    group = group_of(db, flush_seconds=60)
    await group.add("record 1")
    await group.add("release 2")
    assert db.batches == []
    await group.commit("mark 3")
    assert db.batches == [["record 1", "release 2", "mark 3"]]


async def test_the_timer_commits_buffered_ops() -> None:
    db = Database()
    group = group_of(db, flush_seconds=0.0)
    await group.add("op")
    assert db.batches == []  # not at once: when the timer fires
    await asyncio.wait_for(db.started.wait(), 5)
    await settle()
    assert db.batches == [["op"]]
    assert not group.pending


async def test_buffered_ops_wait_for_the_timer_not_less() -> None:
    db = Database()
    group = group_of(db, flush_seconds=60)
    await group.add("op")
    await settle()
    assert db.batches == []
    assert group.pending
    await group.aclose()  # and closing commits them
    assert db.batches == [["op"]]


async def test_a_full_buffer_commits_at_once() -> None:
    db = Database()
    group = group_of(db, flush_seconds=60, flush_rows=3)
    await group.add("a", rows=2)
    assert db.batches == []
    await group.add("b", rows=1)  # returns once committed
    assert db.batches == [["a", "b"]]


async def test_a_failed_commit_fails_every_waiter_and_latches() -> None:
    db = Database()
    db.gate = asyncio.Event()
    db.fail = RuntimeError("disk full")
    group = group_of(db)
    first = asyncio.create_task(group.commit("a"))
    await db.started.wait()
    second = asyncio.create_task(group.commit("b"))  # waits for the next commit
    await settle()
    db.gate.set()
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert [str(result) for result in results] == ["wrapped: disk full"] * 2
    assert results[0] is group.failure
    db.fail = None  # the database is fine again: the journal still refuses
    with pytest.raises(JournalError, match="disk full"):
        await group.add("c")
    with pytest.raises(JournalError, match="disk full"):
        await group.commit("d")
    await group.aclose()  # writes nothing once failed
    assert db.batches == []


async def test_a_timer_commit_that_fails_latches_without_an_unretrieved_error() -> None:
    db = Database()
    db.fail = RuntimeError("gone")
    group = group_of(db, flush_seconds=0.0)
    await group.add("op")
    await asyncio.wait_for(db.started.wait(), 5)
    await settle()
    assert isinstance(group.failure, JournalError)


async def test_a_cancelled_caller_does_not_withdraw_its_op() -> None:
    db = Database()
    db.gate = asyncio.Event()
    group = group_of(db)
    first = asyncio.create_task(group.commit("a"))
    await db.started.wait()
    cancelled = asyncio.create_task(group.commit("b"))
    await settle()
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    db.gate.set()
    await first
    await group.commit()
    assert db.batches == [["a"], ["b"]]


async def test_a_caller_cancelled_during_its_commit_leaves_it_running() -> None:
    db = Database()
    db.gate = asyncio.Event()
    group = group_of(db)
    caller = asyncio.create_task(group.commit("a"))
    await db.started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    db.gate.set()
    await group.commit()
    assert db.batches == [["a"]]
    assert group.failure is None


async def test_a_cancelled_writer_fails_its_waiters_instead_of_leaving_them_hanging() -> None:
    db = Database()
    db.gate = asyncio.Event()
    group = group_of(db)
    caller = asyncio.create_task(group.commit("a"))
    await db.started.wait()
    (writer,) = [t for t in asyncio.all_tasks() if "_write_loop" in repr(t.get_coro())]
    writer.cancel()
    with pytest.raises(JournalError, match="interrupted"):
        await asyncio.wait_for(caller, 5)
    with pytest.raises(JournalError):
        await group.commit("b")


async def test_a_commit_with_nothing_buffered_writes_nothing() -> None:
    db = Database()
    group = group_of(db)
    await group.commit()
    await group.aclose()
    assert db.batches == []
    assert group.commits == 0


def test_check_usable_names_a_failure_before_a_close() -> None:
    check_usable("j.db", None, False)
    with pytest.raises(JournalError, match=r"j\.db failed earlier: disk full"):
        check_usable("j.db", JournalError("disk full"), True)
    with pytest.raises(JournalError, match=r"j\.db is closed"):
        check_usable("j.db", None, True)


# -- coalesce: one statement per kind must end where call order ends ------------------


def apply_in_order(ops: list[JournalOp]) -> dict[int, bytes]:
    """The model: each operation on the stored lines, one by one, as both backends' SQL
    does (a mark upserts in flight, a release deletes only lines in flight)."""
    stored: dict[int, bytes] = {}
    for op in ops:
        if isinstance(op, Mark):
            stored.update(dict.fromkeys(op.lines, b"in_flight"))
        elif isinstance(op, Release):
            for line in op.lines:
                if stored.get(line) == b"in_flight":
                    del stored[line]
        else:
            stored.update(zip(op.lines, op.outcomes, strict=True))
    return stored


def apply_batch(ops: list[JournalOp]) -> dict[int, bytes]:
    batch = coalesce(ops)
    stored = dict(batch.records)
    stored.update(dict.fromkeys(batch.marks, b"in_flight"))
    for line in batch.releases:
        if stored.get(line) == b"in_flight":
            del stored[line]
    return stored


def random_ops(rng: random.Random) -> list[JournalOp]:
    ops: list[JournalOp] = []
    for index in range(rng.randint(1, 8)):
        lines = rng.sample(range(1, 5), rng.randint(1, 3))
        kind = rng.choice("mrR")
        if kind == "m":
            ops.append(Mark(lines))
        elif kind == "r":
            ops.append(Release(lines))
        else:
            ops.append(Record(lines, [f"outcome {line}.{index}".encode() for line in lines]))
    return ops


def test_coalesced_batches_end_as_call_order_would() -> None:
    rng = random.Random(16)
    for _ in range(5000):
        ops = random_ops(rng)
        assert apply_batch(ops) == apply_in_order(ops), ops


def test_coalesced_records_and_marks_never_share_a_line() -> None:
    """PostgreSQL writes both in one statement, which may touch a row once."""
    rng = random.Random(17)
    for _ in range(5000):
        ops = random_ops(rng)
        batch = coalesce(ops)
        assert not set(batch.records) & set(batch.marks), ops


def test_a_line_marked_after_its_record_is_only_marked() -> None:
    batch = coalesce([Record([1, 2], [b"sent 1", b"sent 2"]), Mark([1])])
    assert batch.records == {2: b"sent 2"}
    assert batch.marks == [1]


def test_coalesce_keeps_the_last_outcome_of_a_line_recorded_twice() -> None:
    batch = coalesce([Record([1], [b"unknown"]), Record([1, 2], [b"sent 1", b"sent 2"])])
    assert batch.records == {1: b"sent 1", 2: b"sent 2"}
    assert batch.marks == [] and batch.releases == []


def test_journal_ops_are_tagged_structs() -> None:
    import msgspec

    encoded = msgspec.json.encode([Mark([1]), Release([2])])
    assert encoded == b'[{"type":"Mark","lines":[1]},{"type":"Release","lines":[2]}]'
