"""Distributed campaigns, engine aside: planning into slices, the lease and its fence
(a live owner, a dead one, a lost session, a paused owner, two racing owners), cancel,
abort, status and report."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from proactive_async import (
    AsyncClient,
    CampaignOptions,
    JournalMismatchError,
    ProactiveConversationRequest,
)
from proactive_async.distributed import (
    SendSettings,
    SliceBusyError,
    SliceRunner,
    campaign_status,
    cancel_campaign,
    plan_campaign,
    write_report,
)
from proactive_async.simulator import Simulator, SimulatorConfig

TOKEN = "dist-token-" + "x" * 16
TEMPLATE = ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3)


def write_targets(path: Path, count: int, *, extra: list[str] | None = None) -> Path:
    rows = [f"+55119{index:08d},Ana" for index in range(count)] + (extra or [])
    path.write_text("phone,name\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture
def dsn(postgres_server: Any) -> str:
    return str(postgres_server.create_database(f"dist_{uuid.uuid4().hex[:10]}"))


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig(token=TOKEN)) as simulator:
        yield simulator


def rows(dsn: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def execute(dsn: str, sql: str, *params: object) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql, params)  # type: ignore[arg-type]


def processed_once(sim: Simulator, count: int) -> None:
    """The server processed ``count`` targets, none of them twice."""
    seen = sim.audit.snapshot()
    assert all(times == 1 for times in seen.values()), "a target processed twice"
    assert len(seen) == count


class Gate:
    """A rate limit that holds every acquire until opened: an owner waiting to send."""

    rate = None

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.waiting = asyncio.Event()

    async def acquire(self, weight: float = 1.0) -> None:
        self.waiting.set()
        await self.opened.wait()

    async def on_success(self, weight: float) -> None:
        return None

    async def on_throttle(self, weight: float, retry_after: float | None) -> bool:
        return False

    async def on_busy(self, seconds: float) -> None:
        return None

    async def aclose(self) -> None:
        return None


def gated(gate: Gate) -> Any:
    def build(template: ProactiveConversationRequest, settings: SendSettings) -> Gate:
        return gate

    return build


async def plan(dsn: str, name: str, targets: Path, **options: Any) -> Any:
    job_size = options.pop("job_size", 1000)
    return await plan_campaign(
        f"{dsn}?campaign={name}",
        template=TEMPLATE,
        targets=targets,
        options=CampaignOptions(**options),
        job_size=job_size,
    )


async def test_planning_cuts_the_records_into_slices_of_whole_chunks(
    dsn: str, tmp_path: Path
) -> None:
    targets = write_targets(tmp_path / "t.csv", 95, extra=["not-a-phone,Bo", "+5511900000000,Cy"])
    result = await plan(dsn, "a", targets, chunk_size=10, job_size=25)
    assert (result.records, result.rejected, result.duplicates, result.chunks) == (97, 1, 1, 10)
    assert result.slices == 4 and result.pending_slices == [1, 2, 3, 4]
    sizes = rows(dsn, "SELECT slice, records FROM proactive_slice ORDER BY slice")
    assert sizes == [(1, 30), (2, 30), (3, 30), (4, 5)]  # a chunk is never split
    states = dict(rows(dsn, "SELECT state, count(*) FROM proactive_record GROUP BY state"))
    assert states == {"planned": 95, "rejected": 1, "duplicate": 1}
    again = await plan(dsn, "a", targets, chunk_size=10, job_size=25)
    assert again.already_planned and again.pending_slices == result.pending_slices
    assert rows(dsn, "SELECT count(*) FROM proactive_record")[0][0] == 97
    other = ProactiveConversationRequest(channel_id=9, bot_id=2, conversation_template_id=3)
    with pytest.raises(JournalMismatchError):
        await plan_campaign(
            f"{dsn}?campaign=a", template=other, targets=targets, options=CampaignOptions()
        )


async def test_every_slice_run_sends_each_record_once_and_finishes_the_campaign(
    dsn: str, tmp_path: Path, sim: Simulator
) -> None:
    targets = write_targets(tmp_path / "t.csv", 60)
    result = await plan(dsn, "b", targets, chunk_size=1, job_size=25)
    async with AsyncClient(sim.url, TOKEN) as client:
        runner = SliceRunner(dsn, client, concurrency=8)
        for number in result.pending_slices:
            assert (await runner.run("b", number)).state == "done"
        for number in result.pending_slices:  # a redelivered job finds nothing to send
            again = await runner.run("b", number)
            assert again.state == "done" and again.counts == {}
        await runner.aclose()
    processed_once(sim, 60)
    status = await campaign_status(f"{dsn}?campaign=b")
    assert status.finished and status.counts == {"sent": 60}
    assert status.slices_done == status.slices == 3
    out = io.BytesIO()
    assert await write_report(f"{dsn}?campaign=b", out) == 60
    lines = [msgspec.json.decode(line) for line in out.getvalue().splitlines()]
    assert [line["line"] for line in lines] == list(range(1, 61))
    assert all(line["status"] == "sent" and line["conversationIds"] for line in lines)


async def test_what_a_dead_owner_left_in_flight_ends_unknown_and_is_not_resent(
    dsn: str, tmp_path: Path, sim: Simulator
) -> None:
    targets = write_targets(tmp_path / "t.csv", 10)
    await plan(dsn, "c", targets, chunk_size=10)
    # An owner took the slice, marked 1-3 in flight, and died: its lease ran out.
    execute(
        dsn,
        "UPDATE proactive_slice SET owner = 'dead/1/x', fence = 1,"
        " lease_until = clock_timestamp() - interval '1 second'",
    )
    execute(dsn, "UPDATE proactive_record SET state = 'in_flight', fence = 1 WHERE line <= 3")
    async with AsyncClient(sim.url, TOKEN) as client:
        runner = SliceRunner(dsn, client)
        assert (await runner.run("c", 1)).state == "done"
        await runner.aclose()
    processed_once(sim, 7)  # lines 4-10 only
    outcomes = dict(rows(dsn, "SELECT line, state FROM proactive_record WHERE campaign_id = 'c'"))
    assert [outcomes[line] for line in (1, 2, 3)] == ["unknown"] * 3
    assert all(outcomes[line] == "sent" for line in range(4, 11))


async def test_a_slice_a_live_owner_holds_is_refused_until_its_lease_expires(
    dsn: str, tmp_path: Path, sim: Simulator
) -> None:
    targets = write_targets(tmp_path / "t.csv", 5)
    await plan(dsn, "d", targets)
    execute(
        dsn,
        "UPDATE proactive_slice SET owner = 'alive/1/x', fence = 1,"
        " lease_until = clock_timestamp() + interval '1 second'",
    )
    async with AsyncClient(sim.url, TOKEN) as client:
        runner = SliceRunner(dsn, client)
        with pytest.raises(SliceBusyError) as busy:
            await runner.run("d", 1)
        assert 0 < busy.value.retry_after <= 1
        assert sim.audit.snapshot() == {}
        await asyncio.sleep(busy.value.retry_after + 0.05)  # the owner stopped renewing
        assert (await runner.run("d", 1)).state == "done"
        await runner.aclose()
    processed_once(sim, 5)
    assert rows(dsn, "SELECT fence, owner FROM proactive_slice") == [(2, None)]


async def test_a_lost_session_between_claim_and_first_call_sends_nothing_twice(
    dsn: str, tmp_path: Path, sim: Simulator
) -> None:
    """The issue's reproduction: A claims and waits on its rate limit; every session of A
    is ended (a failover, a pooler, an idle timeout); B, a redelivery, tries the slice;
    A wakes and sends. With the lease in the data, B is refused and A sends once."""
    targets = write_targets(tmp_path / "t.csv", 20)
    await plan(dsn, "e", targets, chunk_size=1)
    gate = Gate()
    async with AsyncClient(sim.url, TOKEN) as client:
        a = SliceRunner(dsn, client, rate_limit_for=gated(gate), lease=3)
        b = SliceRunner(dsn, client, lease=3)
        running = asyncio.create_task(a.run("e", 1))
        await gate.waiting.wait()
        execute(
            dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        with pytest.raises(SliceBusyError):
            await b.run("e", 1)
        gate.opened.set()
        result = await running
        assert result.state == "done" and result.counts == {"sent": 20}
        await a.aclose()
        await b.aclose()
    processed_once(sim, 20)


async def test_an_owner_paused_past_its_lease_sends_nothing_after_waking(
    dsn: str, tmp_path: Path, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A freezes (no renewal, no call) before its first call; its lease expires; B takes
    the slice over and sends it; A wakes and sends nothing: every target once."""
    targets = write_targets(tmp_path / "t.csv", 12)
    await plan(dsn, "f", targets, chunk_size=1)
    gate = Gate()
    async with AsyncClient(sim.url, TOKEN) as client:
        a = SliceRunner(dsn, client, rate_limit_for=gated(gate), lease=2, concurrency=4)

        async def frozen(*_: object) -> None:
            await asyncio.Event().wait()  # the frozen process renews nothing

        monkeypatch.setattr(a, "_keep", frozen)
        running = asyncio.create_task(a.run("f", 1))
        await gate.waiting.wait()
        await asyncio.sleep(2.2)  # past A's lease
        b = SliceRunner(dsn, client, lease=2)
        assert (await b.run("f", 1)).counts == {"sent": 12}
        gate.opened.set()  # A wakes
        late = await running
        assert late.counts == {} and late.state == "open"
        await a.aclose()
        await b.aclose()
    processed_once(sim, 12)
    status = await campaign_status(f"{dsn}?campaign=f")
    assert status.finished and status.counts == {"sent": 12}


async def test_a_mark_after_the_lease_was_taken_over_moves_nothing(
    dsn: str, tmp_path: Path
) -> None:
    """The fence at its lowest level: a stale owner's mark, its clock not yet aware."""
    from proactive_async.distributed._connect import Database
    from proactive_async.distributed._journal import Lease, SliceJournal
    from proactive_async.journal import SecretScrubber

    targets = write_targets(tmp_path / "t.csv", 4)
    await plan(dsn, "g", targets)
    execute(
        dsn,
        "UPDATE proactive_slice SET owner = 'new/1/y', fence = 8,"
        " lease_until = clock_timestamp() + interval '30 seconds'",
    )
    stale = Lease("g", 1, "old/1/x", 7, seconds=30, margin=1)
    stale.renewed(asyncio.get_running_loop().time() + 1e9)  # it believes it holds the lease
    journal = SliceJournal(Database(dsn), stale, SecretScrubber(()))
    assert await journal.mark_in_flight([1, 2, 3, 4]) == set()
    await journal.aclose()
    await journal.db.aclose()
    states = {state for (state,) in rows(dsn, "SELECT state FROM proactive_record")}
    assert states == {"planned"}


async def test_two_owners_racing_for_one_slice_send_each_record_once(
    dsn: str, tmp_path: Path, sim: Simulator
) -> None:
    targets = write_targets(tmp_path / "t.csv", 40)
    await plan(dsn, "h", targets, chunk_size=1)
    async with AsyncClient(sim.url, TOKEN) as client:
        first, second = SliceRunner(dsn, client), SliceRunner(dsn, client)
        results = await asyncio.gather(
            first.run("h", 1), second.run("h", 1), return_exceptions=True
        )
        await first.aclose()
        await second.aclose()
    busy = [r for r in results if isinstance(r, SliceBusyError)]
    done = [r for r in results if not isinstance(r, BaseException)]
    assert len(busy) == 1 and len(done) == 1 and done[0].counts == {"sent": 40}
    processed_once(sim, 40)


async def test_after_cancel_has_answered_nothing_more_is_marked_or_sent(
    dsn: str, tmp_path: Path, sim: Simulator
) -> None:
    targets = write_targets(tmp_path / "t.csv", 30)
    await plan(dsn, "i", targets, chunk_size=1)
    gate = Gate()
    async with AsyncClient(sim.url, TOKEN) as client:
        runner = SliceRunner(dsn, client, rate_limit_for=gated(gate), concurrency=4)
        running = asyncio.create_task(runner.run("i", 1))
        await gate.waiting.wait()  # loaded, waiting to send: the issue's "keeps sending"
        assert await cancel_campaign(f"{dsn}?campaign=i") == 30
        gate.opened.set()
        result = await running
        await runner.aclose()
    assert sim.audit.snapshot() == {} and result.counts == {}
    status = await campaign_status(f"{dsn}?campaign=i")
    assert status.finished and status.cancelled and status.counts == {"failed": 30}
    out = io.BytesIO()
    await write_report(f"{dsn}?campaign=i", out)
    failed = [msgspec.json.decode(line) for line in out.getvalue().splitlines()]
    assert all(line["error"]["kind"] == "cancelled" for line in failed)
    assert set(failed[0]) == {
        "line", "status", "recipient", "contactId", "conversationIds", "attempts", "error",
        "duplicateOf",
    }  # fmt: skip


async def test_a_fatal_answer_aborts_the_campaign_until_it_is_enqueued_again(
    dsn: str, tmp_path: Path, sim: Simulator
) -> None:
    targets = write_targets(tmp_path / "t.csv", 10)
    await plan(dsn, "j", targets, chunk_size=1, job_size=5)
    async with AsyncClient(sim.url, "wrong-token-" + "y" * 16) as client:
        runner = SliceRunner(dsn, client)
        result = await runner.run("j", 1)
        assert result.state == "aborted" and result.aborted and "401" in result.aborted
        assert (await runner.run("j", 2)).counts == {}  # nobody takes an aborted campaign
        await runner.aclose()
    status = await campaign_status(f"{dsn}?campaign=j")
    assert status.aborted and not status.finished and status.unfinished == 10
    await plan(dsn, "j", targets, chunk_size=1, job_size=5)  # fixed: enqueue again
    assert (await campaign_status(f"{dsn}?campaign=j")).aborted is None
    async with AsyncClient(sim.url, TOKEN) as client:
        runner = SliceRunner(dsn, client)
        for number in (1, 2):
            await runner.run("j", number)
        await runner.aclose()
    processed_once(sim, 10)
    assert (await campaign_status(f"{dsn}?campaign=j")).finished


async def test_no_token_is_stored_in_any_table(dsn: str, tmp_path: Path, sim: Simulator) -> None:
    targets = write_targets(tmp_path / "t.csv", 10)
    await plan_campaign(
        f"{dsn}?campaign=k", template=TEMPLATE, targets=targets, options=CampaignOptions(),
        secrets=[TOKEN],
    )  # fmt: skip
    async with AsyncClient(sim.url, TOKEN) as client:
        runner = SliceRunner(dsn, client)
        await runner.run("k", 1)
        await runner.aclose()
    dump = ""
    for table in ("proactive_campaign", "proactive_record", "proactive_chunk", "proactive_slice"):
        dump += "".join(r[0] for r in rows(dsn, f"SELECT row_to_json(t)::text FROM {table} t"))
    assert "+5511900000000" in dump and TOKEN not in dump


async def test_a_distributed_campaign_is_refused_to_a_one_process_run(
    dsn: str, tmp_path: Path
) -> None:
    from proactive_async import JournalError, open_journal
    from proactive_async._campaign import campaign_identity

    targets = write_targets(tmp_path / "t.csv", 5)
    await plan(dsn, "l", targets)
    identity = campaign_identity(TEMPLATE, targets, CampaignOptions())
    with pytest.raises(JournalError, match="distributed campaign"):
        await open_journal(f"{dsn}?campaign=l", identity)


async def test_a_one_process_campaign_is_refused_to_enqueue(dsn: str, tmp_path: Path) -> None:
    """Its lines are journaled by the run that owns it: workers given the same campaign
    would not be fenced by that run (and planning nothing would look like success)."""
    from proactive_async import JournalError, open_journal
    from proactive_async._campaign import campaign_identity

    targets = write_targets(tmp_path / "t.csv", 5)
    identity = campaign_identity(TEMPLATE, targets, CampaignOptions())
    journal = await open_journal(f"{dsn}?campaign=solo", identity)
    await journal.mark_in_flight([1])
    await journal.aclose()
    with pytest.raises(JournalError, match="one-process campaign"):
        await plan(dsn, "solo", targets)
    assert rows(dsn, "SELECT count(*) FROM proactive_slice") == [(0,)]


async def test_no_connection_is_left_open_after_aclose(
    dsn: str, tmp_path: Path, sim: Simulator
) -> None:
    targets = write_targets(tmp_path / "t.csv", 12)
    result = await plan(dsn, "m", targets, chunk_size=4, job_size=4)
    async with AsyncClient(sim.url, TOKEN) as client:
        runner = SliceRunner(dsn, client)
        await asyncio.gather(*(runner.run("m", n) for n in result.pending_slices))
        await runner.aclose()
    database = dsn.rsplit("/", 1)[1]
    sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
    for _ in range(200):  # the server sees a closed connection go a moment later
        left = rows(dsn, sql, database)[0][0]
        if left == 0:
            break
        await asyncio.sleep(0.01)
    assert left == 0


def test_the_public_module_is_the_engine_free_api_for_your_own_queue() -> None:
    import proactive_async.distributed as public

    assert all(hasattr(public, name) for name in public.__all__)
    assert {"plan_campaign", "SliceRunner", "SliceWorker", "campaign_status"} <= set(public.__all__)


class GateAfter(Gate):
    """Lets ``free`` acquires through, then holds the rest until opened."""

    def __init__(self, free: int) -> None:
        super().__init__()
        self.free = free
        self.acquired = 0

    async def acquire(self, weight: float = 1.0) -> None:
        self.acquired += 1
        if self.acquired > self.free:
            await super().acquire(weight)


async def test_a_cancel_while_chunks_wait_between_attempts_ends_them_cancelled(
    dsn: str, tmp_path: Path
) -> None:
    """Every call meets a 429 (never processed), so each chunk is in flight, between
    attempts, when the cancel runs: the cancel leaves them to their owner, which stops
    and releases them; released after a cancel, they end cancelled, and the campaign
    finishes instead of waiting for ever on records put back to planned."""
    from proactive_async.simulator import Faults

    targets = write_targets(tmp_path / "t.csv", 4)
    await plan(dsn, "n", targets, chunk_size=1)
    gate = GateAfter(4)
    throttled = SimulatorConfig(token=TOKEN, faults=Faults(rate_429=1.0, retry_after=0.1))
    async with Simulator(throttled) as sim, AsyncClient(sim.url, TOKEN) as client:
        runner = SliceRunner(dsn, client, rate_limit_for=gated(gate), concurrency=4, lease=2)
        running = asyncio.create_task(runner.run("n", 1))
        await gate.waiting.wait()  # every chunk tried once, and waits to try again
        assert await cancel_campaign(f"{dsn}?campaign=n") == 0  # all four in flight
        await asyncio.sleep(1.0)  # the lease renewal hears of the cancel: the sender stops
        gate.opened.set()
        result = await running
        await runner.aclose()
    assert sim.audit.snapshot() == {}
    assert result.state == "done"
    status = await campaign_status(f"{dsn}?campaign=n")
    assert status.finished and status.counts == {"failed": 4}
    out = io.BytesIO()
    await write_report(f"{dsn}?campaign=n", out)
    errors = [msgspec.json.decode(line)["error"]["kind"] for line in out.getvalue().splitlines()]
    assert errors == ["cancelled"] * 4


async def test_closing_a_database_that_waits_for_its_server_does_not_wait_out_its_patience() -> (
    None
):
    """A worker's shutdown while PostgreSQL is down: the unit retrying its connection
    gives up at its next try, and the close returns in about a retry's wait."""
    import socket

    from proactive_async import JournalError
    from proactive_async.distributed._connect import Database

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    db = Database(f"postgresql://nobody@127.0.0.1:{port}/x", patience=60)
    waiting = asyncio.create_task(db.run(lambda conn: conn.execute("SELECT 1")))
    await asyncio.sleep(0.5)  # it has failed and is waiting to try again
    started = asyncio.get_running_loop().time()
    await db.aclose()
    with pytest.raises(JournalError):
        await waiting
    assert asyncio.get_running_loop().time() - started < 5


async def test_after_cancel_has_answered_no_retry_is_made(dsn: str, tmp_path: Path) -> None:
    """A chunk whose first call met a 429 would try again: once the cancel has answered,
    that retry checks the fence again (the campaign is cancelled) and makes no call, even
    before the lease's renewal hears of the cancel."""
    from proactive_async.simulator import Faults

    targets = write_targets(tmp_path / "t.csv", 4)
    await plan(dsn, "o", targets, chunk_size=1)
    gate = GateAfter(4)
    throttled = SimulatorConfig(token=TOKEN, faults=Faults(rate_429=1.0, retry_after=0.1))
    async with Simulator(throttled) as sim, AsyncClient(sim.url, TOKEN) as client:
        runner = SliceRunner(dsn, client, rate_limit_for=gated(gate), concurrency=4, lease=60)
        running = asyncio.create_task(runner.run("o", 1))
        await gate.waiting.wait()
        await asyncio.sleep(0.2)  # every chunk tried once (4 calls), and waits to retry
        calls = sim.audit.calls
        await cancel_campaign(f"{dsn}?campaign=o")
        gate.opened.set()  # at once: the renewal (every 12 s) has not run
        result = await running
        await runner.aclose()
    assert calls == 4 and sim.audit.calls == 4, "a retry went out after the cancel"
    assert result.counts == {}
    status = await campaign_status(f"{dsn}?campaign=o")
    assert status.finished and status.counts == {"failed": 4}
