"""The Journal protocol, run against every backend: what a campaign may rely on from any of them.

Only what ``proactive_async.journal.Journal`` and ``open_journal`` promise is tested,
through them alone.
A backend joins by adding one entry to ``BACKENDS``: a context manager that, given a
``tmp_path``, yields a ``Backend`` (and tears down what it made, e.g. a throwaway database).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import msgspec
import pytest

from proactive_async import Journal, JournalError, JournalMismatchError, open_journal
from proactive_async._records import Outcome, OutcomeError, OutcomeStatus
from proactive_async.journal import IN_FLIGHT, CampaignIdentity, JournalEntry

TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2Vu.s1gnature-Tok3n"
IDENTITY = CampaignIdentity.build(
    {"channelId": 1, "botId": 2, "conversationTemplateId": 7},
    input_fingerprint="sha256:aaaa",
    options={"default_region": "BR", "dedupe": True},
)


class Backend(Protocol):
    """One journal backend as the suite sees it."""

    def location(self) -> str:
        """A fresh location (a path or URL for ``open_journal``) where no journal exists."""

    def stored_bytes(self, location: str) -> bytes:
        """Every byte the backend has persisted for ``location``."""


class SQLiteBackend:
    """Journals as files in one directory, named by a plain path or a ``sqlite:///`` URL."""

    def __init__(self, directory: Path, *, url: bool) -> None:
        self._directory = directory
        self._url = url
        self._count = 0

    def location(self) -> str:
        self._count += 1
        path = self._directory / f"journal-{self._count}.db"
        return f"sqlite:///{path}" if self._url else str(path)

    def stored_bytes(self, location: str) -> bytes:
        path = Path(location.removeprefix("sqlite://"))
        files = [path.with_name(path.name + side) for side in ("", "-wal", "-shm", "-journal")]
        return b"".join(file.read_bytes() for file in files if file.exists())


class PostgresBackend:
    """Campaigns in one throwaway database of the session's PostgreSQL, one per location."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn

    def location(self) -> str:
        return f"{self._dsn}?campaign=c-{uuid.uuid4().hex}"

    def stored_bytes(self, location: str) -> bytes:
        import psycopg

        dumped = []
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            for table in ("proactive_campaign", "proactive_record", "proactive_chunk"):
                exists = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
                if exists is None or exists[0] is None:
                    continue  # nothing was ever written
                rows = conn.execute(f"SELECT row_to_json(t)::text FROM {table} t").fetchall()
                dumped += [row[0] for row in rows]
        return "\n".join(dumped).encode()


_DATABASES: dict[int, str] = {}


@contextlib.contextmanager
def _postgres(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """One database for the whole suite (each location is a campaign of its own)."""
    server = request.getfixturevalue("postgres_server")
    if id(server) not in _DATABASES:
        _DATABASES[id(server)] = server.create_database("conformance")
    yield PostgresBackend(_DATABASES[id(server)])


BACKENDS: dict[str, Callable[[Path, pytest.FixtureRequest], AbstractContextManager[Backend]]] = {
    "sqlite-path": lambda tmp, _: contextlib.nullcontext(SQLiteBackend(tmp, url=False)),
    "sqlite-url": lambda tmp, _: contextlib.nullcontext(SQLiteBackend(tmp, url=True)),
    "postgresql": lambda _, request: _postgres(request),
}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with BACKENDS[request.param](tmp_path, request) as made:
        yield made


@pytest.fixture
def location(backend: Backend) -> str:
    return backend.location()


@contextlib.asynccontextmanager
async def opened(
    location: str, identity: CampaignIdentity = IDENTITY, *, secrets: Collection[str] = ()
) -> AsyncIterator[Journal]:
    journal = await open_journal(location, identity, secrets=secrets)
    try:
        yield journal
    finally:
        await journal.aclose()


def outcome(line: int, status: str, **fields: Any) -> Outcome:
    return Outcome(line=line, status=OutcomeStatus(status), **fields)


def sent(line: int, *ids: int) -> Outcome:
    return outcome(line, "sent", conversation_ids=list(ids), attempts=1)


async def test_a_new_journal_is_a_journal_and_is_not_resumed(location: str) -> None:
    async with opened(location) as journal:
        assert isinstance(journal, Journal)
        assert journal.resumed is False
        assert await journal.lookup([1, 2]) == {}


@pytest.mark.parametrize("finished", [False, True], ids=["in-flight", "finished"])
async def test_reopening_a_journal_holding_lines_is_resumed(location: str, finished: bool) -> None:
    async with opened(location) as journal:
        await journal.mark_in_flight([1])
        if finished:
            await journal.record([sent(1, 10)])
    async with opened(location) as journal:
        assert journal.resumed is True


async def test_reopening_an_empty_journal_is_not_resumed(location: str) -> None:
    async with opened(location):
        pass
    async with opened(location) as journal:
        assert journal.resumed is False


async def test_marked_lines_are_in_flight_after_a_close_and_reopen(location: str) -> None:
    async with opened(location) as journal:
        await journal.mark_in_flight([5, 6, 7])
        assert (await journal.lookup([5]))[5] == JournalEntry(line=5, state=IN_FLIGHT)
    async with opened(location) as journal:
        entries = await journal.lookup(range(1, 10))
    assert entries == {line: JournalEntry(line=line, state=IN_FLIGHT) for line in (5, 6, 7)}


async def test_the_check_before_a_retry_finds_every_line_still_marked_and_changes_nothing(
    location: str,
) -> None:
    """``still_in_flight``, asked before a retry: every line is still this run's (None
    from a journal whose marks nothing can take back, SQLite's; the lines from a fenced
    one, PostgreSQL's), and the lines stay in flight."""
    async with opened(location) as journal:
        marked = await journal.mark_in_flight([1, 2])
        held = await journal.still_in_flight([1, 2])
        assert marked in (None, [1, 2]) and held == marked
        entries = await journal.lookup([1, 2])
    assert entries == {line: JournalEntry(line=line, state=IN_FLIGHT) for line in (1, 2)}


_KILLED_RUN = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from proactive_async import open_journal
    from proactive_async.journal import CampaignIdentity
    from proactive_async._records import Outcome, OutcomeStatus

    async def main() -> None:
        identity = CampaignIdentity(sys.argv[2], sys.argv[3], sys.argv[4])
        journal = await open_journal(sys.argv[1], identity)
        await journal.mark_in_flight([1, 2, 3])
        await journal.record([Outcome(line=3, status=OutcomeStatus.SENT, conversation_ids=[9])])
        await journal.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # no aclose: the process just dies

    asyncio.run(main())
    """
)


async def test_marks_and_flushed_outcomes_survive_a_killed_process(location: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLED_RUN, location, *msgspec.structs.astuple(IDENTITY)
    )
    assert await process.wait() == -signal.SIGKILL
    async with opened(location) as journal:
        assert journal.resumed is True
        entries = await journal.lookup([1, 2, 3, 4])
    assert [entries[line].state for line in (1, 2)] == [IN_FLIGHT, IN_FLIGHT]
    assert entries[3].outcome == Outcome(line=3, status=OutcomeStatus.SENT, conversation_ids=[9])
    assert 4 not in entries


BAD = OutcomeError(kind="BadRequestError", message='campo "inválido" \\ ☃', status=400)
SLOW = OutcomeError(kind="ReadTimeout", message="no answer in 30 s")
OUTCOMES = [
    outcome(1, "sent", recipient="+5511999990001", conversation_ids=[101, 2**53 + 1], attempts=2),
    outcome(2, "failed", contact_id=2**53 + 1, attempts=3, error=BAD),
    outcome(3, "unknown", recipient="+5511999990003", contact_id=0, attempts=1, error=SLOW),
    outcome(4, "rejected", recipient="+55 x", error=OutcomeError(kind="invalid", message="no")),
    outcome(5, "duplicate", recipient="+5511999990001", duplicate_of=1),
]


async def test_recorded_and_flushed_outcomes_round_trip_every_field(location: str) -> None:
    lines = [o.line for o in OUTCOMES]
    async with opened(location) as journal:
        await journal.mark_in_flight(lines[:3])
        await journal.record(OUTCOMES)
        await journal.flush()
        before = await journal.lookup(lines)
    async with opened(location) as journal:
        after = await journal.lookup(lines)
    expected = {
        o.line: JournalEntry(line=o.line, state=o.status.value, outcome=o) for o in OUTCOMES
    }
    assert before == expected
    assert after == expected


async def test_a_recorded_outcome_replaces_the_in_flight_mark(location: str) -> None:
    async with opened(location) as journal:
        await journal.mark_in_flight([1, 2])
        await journal.record([sent(1, 10)])
        await journal.flush()
        entries = await journal.lookup([1, 2])
    assert entries[1] == JournalEntry(line=1, state="sent", outcome=sent(1, 10))
    assert entries[2] == JournalEntry(line=2, state=IN_FLIGHT)


async def test_release_withdraws_in_flight_lines_but_never_finished_ones(location: str) -> None:
    async with opened(location) as journal:
        await journal.mark_in_flight([1, 2, 3])
        await journal.record([sent(2, 20), sent(4, 40)])
        await journal.flush()
        await journal.release([1, 2, 4, 99])
        await journal.flush()
        entries = await journal.lookup([1, 2, 3, 4, 99])
    assert sorted(entries) == [2, 3, 4]
    assert entries[2].outcome == sent(2, 20)
    assert entries[3].state == IN_FLIGHT
    assert entries[4].outcome == sent(4, 40)
    async with opened(location) as journal:
        assert await journal.lookup([1, 2, 3, 4, 99]) == entries


async def test_a_line_marked_again_after_its_release_is_in_flight(location: str) -> None:
    async with opened(location) as journal:
        await journal.mark_in_flight([1])
        await journal.release([1])
        await journal.mark_in_flight([1])  # returns once line 1 is committed in flight
        assert (await journal.lookup([1])).get(1) == JournalEntry(line=1, state=IN_FLIGHT)


async def test_writes_committed_together_leave_each_line_as_call_order_would(
    location: str,
) -> None:
    async with opened(location) as journal:
        await journal.mark_in_flight([1, 2, 3])
        await journal.record([outcome(1, "unknown")])
        await journal.record([sent(1, 10), outcome(4, "unknown")])  # line 1 again: this wins
        await journal.release([2])
        await journal.mark_in_flight([2, 4])  # one commit with the writes buffered above
        entries = await journal.lookup([1, 2, 3, 4])
    assert entries[1] == JournalEntry(line=1, state="sent", outcome=sent(1, 10))
    assert entries[2] == JournalEntry(line=2, state=IN_FLIGHT)  # marked after its release
    assert entries[3] == JournalEntry(line=3, state=IN_FLIGHT)
    assert entries[4] == JournalEntry(line=4, state=IN_FLIGHT)  # marked after its outcome


async def test_lookup_of_lines_never_seen_returns_nothing_for_them(location: str) -> None:
    async with opened(location) as journal:
        assert await journal.lookup([]) == {}
        await journal.mark_in_flight([2])
        await journal.record([sent(4)])
        await journal.flush()
        assert await journal.lookup([1, 3, 5, 1_000_000]) == {}
        assert sorted(await journal.lookup([1, 2, 3, 4, 5])) == [2, 4]


async def test_lookup_of_many_lines_at_once_finds_every_one(location: str) -> None:
    async with opened(location) as journal:
        await journal.mark_in_flight(range(1, 5001))
        await journal.record([sent(line) for line in range(3, 5001, 3)])
        await journal.flush()
        entries = await journal.lookup(range(1, 10_001))
    assert sorted(entries) == list(range(1, 5001))
    assert all(e.state == ("sent" if line % 3 == 0 else IN_FLIGHT) for line, e in entries.items())


async def test_concurrent_marks_and_records_from_many_tasks_all_commit(location: str) -> None:
    async def work(journal: Journal, pair: int) -> None:
        await journal.mark_in_flight([2 * pair - 1, 2 * pair])
        await journal.record([sent(2 * pair, pair)])

    async with opened(location) as journal:
        await asyncio.gather(*(work(journal, pair) for pair in range(1, 201)))
        await journal.flush()
        live = await journal.lookup(range(1, 402))
    async with opened(location) as journal:
        assert await journal.lookup(range(1, 402)) == live
    assert sorted(live) == list(range(1, 401))
    assert all(live[line].state == IN_FLIGHT for line in range(1, 401, 2))
    assert all(live[2 * p].outcome == sent(2 * p, p) for p in range(1, 201))


async def test_aclose_is_idempotent_and_flushes_outcomes_and_releases(location: str) -> None:
    journal = await open_journal(location, IDENTITY)
    await journal.mark_in_flight([1, 2])
    await journal.record([sent(1, 10)])
    await journal.release([2])
    await journal.aclose()
    await journal.aclose()
    async with opened(location) as reopened:
        assert await reopened.lookup([1, 2]) == {
            1: JournalEntry(line=1, state="sent", outcome=sent(1, 10))
        }


LABELS = {
    "template": "request template",
    "input_fingerprint": "input",
    "options": "planning options",
}


@pytest.mark.parametrize(("field", "label"), LABELS.items())
async def test_another_campaigns_identity_is_refused_naming_what_differs(
    location: str, field: str, label: str
) -> None:
    async with opened(location) as journal:
        await journal.mark_in_flight([1])
    other = msgspec.structs.replace(IDENTITY, **{field: getattr(IDENTITY, field) + "x"})
    with pytest.raises(JournalMismatchError) as caught:
        await open_journal(location, other)
    message = str(caught.value)
    assert f"{label} differ" in message
    assert not any(f"{name} differ" in message for name in LABELS.values() if name != label)
    async with opened(location) as journal:  # the refusal left the journal as it was
        assert journal.resumed is True
        assert (await journal.lookup([1]))[1].state == IN_FLIGHT


async def test_a_closed_or_refused_journal_can_be_opened_again_at_once(location: str) -> None:
    other = msgspec.structs.replace(IDENTITY, template=IDENTITY.template + "x")
    for attempt in range(15):  # closed, then opened again by the same process at once
        async with opened(location) as journal:
            await journal.mark_in_flight([attempt + 1])
        with pytest.raises(JournalMismatchError):  # refused: nothing left held either
            await open_journal(location, other)


def _token_pieces(size: int = 6) -> set[str]:
    return {TOKEN[start : start + size] for start in range(len(TOKEN) - size + 1)}


@pytest.mark.parametrize("field", ["template", "options"])
async def test_an_identity_holding_the_token_is_refused_without_showing_it(
    backend: Backend, location: str, field: str
) -> None:
    leaky = msgspec.structs.replace(IDENTITY, **{field: f'{{"auth":"Bearer {TOKEN}"}}'})
    with pytest.raises(JournalError) as caught:
        await open_journal(location, leaky, secrets=[TOKEN])
    assert not isinstance(caught.value, JournalMismatchError)
    assert not any(piece in str(caught.value) for piece in _token_pieces())
    assert TOKEN.encode() not in backend.stored_bytes(location)


async def test_a_token_in_an_outcome_never_reaches_storage(backend: Backend, location: str) -> None:
    echoed = OutcomeError(kind="AuthenticationError", message=f"bad token {TOKEN}", status=401)
    async with opened(location, secrets=[TOKEN]) as journal:
        await journal.mark_in_flight([1])
        await journal.record([Outcome(line=1, status=OutcomeStatus.FAILED, error=echoed)])
        await journal.flush()
        assert TOKEN.encode() not in backend.stored_bytes(location)
        entry = (await journal.lookup([1]))[1]
    assert entry.state == "failed"
    assert entry.outcome is not None and entry.outcome.error is not None
    assert TOKEN not in entry.outcome.error.message
    assert TOKEN.encode() not in backend.stored_bytes(location)


async def test_a_second_open_of_a_journal_in_use_is_refused(location: str) -> None:
    async with opened(location) as journal:
        await journal.mark_in_flight([1])
        with pytest.raises(JournalError) as caught:
            await open_journal(location, IDENTITY)
        assert not isinstance(caught.value, JournalMismatchError)
        await journal.mark_in_flight([2])  # the first holder is unharmed
    async with opened(location) as journal:  # and free again once closed
        assert sorted(await journal.lookup([1, 2])) == [1, 2]


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "s3://bucket/campaign.db"])
async def test_a_url_scheme_no_backend_handles_is_refused(url: str) -> None:
    with pytest.raises(JournalError, match=url.partition(":")[0]):  # naming the scheme
        await open_journal(url, IDENTITY)
