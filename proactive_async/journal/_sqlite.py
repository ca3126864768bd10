"""The SQLite journal: durable campaign state in one local file (a ``Journal`` backend).

The journal is one SQLite file (stdlib ``sqlite3``) in WAL mode with ``synchronous=NORMAL``.
It holds one row per input line that reached the sending stage:

* ``in_flight``: the line's call may be on the wire. It is committed *before* the call
  is made, so a resume never resends a record the server may have processed; a resume
  reports such a line ``unknown`` (see :func:`interrupted_outcome`).
* a final :class:`~proactive_async.OutcomeStatus` with the whole stored outcome.

Durability: a WAL commit with ``synchronous=NORMAL`` is written to the WAL file before
``COMMIT`` returns, so it survives the *process* dying (``kill -9``, a crash, an
interpreter abort), which is the failure the journal guards. It is not fsynced per commit,
so an OS crash or power loss may lose the last commits.

Performance: every SQLite call runs in one worker thread that owns the connection, so
WAL writes and checkpoint fsyncs never stall the event loop (``sqlite3`` releases the
GIL while a statement steps). Writes go through ``GroupCommit``: ``mark_in_flight``
callers that arrive while a commit is running share the next one, and buffered outcomes
and releases ride along in it.

Besides the file, SQLite may keep a ``-wal`` side file next to it (merged back into the
file when the journal closes); in exclusive locking mode it needs no ``-shm`` file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Sequence
from types import TracebackType
from typing import Any, Final, TypeVar

import msgspec

from .._errors import JournalError
from .._records import Outcome, OutcomeError, OutcomeStatus
from ._base import (
    IN_FLIGHT,
    OUTCOME_WIRE_NAMES,
    CampaignIdentity,
    JournalEntry,
    SecretScrubber,
    check_identity,
    kept_secrets,
    refuse_secrets,
)
from ._group_commit import GroupCommit, JournalOp, Mark, Record, Release, check_usable, coalesce

__all__ = ["SIDE_FILES", "SQLiteJournal", "check_format", "refusal"]

SIDE_FILES: Final = ("-wal", "-shm", "-journal")
"""Suffixes of the files SQLite may keep next to a journal file (``-wal`` in WAL mode; the
others only in modes this journal does not use, or while it converts an old file)."""

# "PAJ1" in the SQLite header's application_id: tells our journals from other databases.
_APPLICATION_ID: Final = 0x50414A31
_SCHEMA_VERSION: Final = 1

# Stays under SQLITE_MAX_VARIABLE_NUMBER of every SQLite build (999 before 3.32).
_LOOKUP_BATCH: Final = 500

# Small integers on disk; 0 is in flight, the rest follow OutcomeStatus.
_STATUSES: Final = tuple(OutcomeStatus)
_STATE_CODES: Final = {status: code for code, status in enumerate(_STATUSES, start=1)}
_STATE_NAMES: Final = (IN_FLIGHT, *(status.value for status in _STATUSES))

_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    # line is the rowid; conversation ids and error are JSON, NULL when absent.
    "CREATE TABLE lines ("
    " line INTEGER PRIMARY KEY,"
    " state INTEGER NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " recipient TEXT,"
    " contact_id INTEGER,"
    " conversation_ids TEXT,"
    " error TEXT,"
    " duplicate_of INTEGER)",
    f"PRAGMA application_id = {_APPLICATION_ID}",
    f"PRAGMA user_version = {_SCHEMA_VERSION}",
)
# Each write is one statement over a JSON array: the rows are built by SQLite in one
# sqlite3_step, which runs without the GIL, instead of one Python bind per row.
_MARK_SQL: Final = "INSERT OR REPLACE INTO lines (line, state) SELECT value, 0 FROM json_each(?)"
_RELEASE_SQL: Final = (
    "DELETE FROM lines WHERE state = 0 AND line IN (SELECT value FROM json_each(?))"
)
_STATE_CASE: Final = " ".join(
    f"WHEN '{status.value}' THEN {code}" for status, code in _STATE_CODES.items()
)


def _field(name: str) -> str:
    return f"json_extract(value, '$.{OUTCOME_WIRE_NAMES[name]}')"


# The columns of ``lines`` in order, each read from an encoded Outcome by its wire name.
_RECORD_SQL: Final = (
    "INSERT OR REPLACE INTO lines SELECT"
    f" {_field('line')},"
    f" CASE {_field('status')} {_STATE_CASE} END,"
    f" coalesce({_field('attempts')}, 0),"
    f" {_field('recipient')},"
    f" {_field('contact_id')},"
    f" nullif({_field('conversation_ids')}, '[]'),"
    f" {_field('error')},"
    f" {_field('duplicate_of')}"
    " FROM json_each(?)"
)
_SELECT_SQL: Final = "SELECT * FROM lines WHERE line IN ({})"

_ENCODER: Final = msgspec.json.Encoder()
_IDS_DECODER: Final = msgspec.json.Decoder(list[int])
_ERROR_DECODER: Final = msgspec.json.Decoder(OutcomeError)

_Row = tuple[int, int, int, str | None, int | None, str | None, str | None, int | None]
_T = TypeVar("_T")


class SQLiteJournal:
    """The durable state of one campaign, for resuming it after a kill.

    Usage::

        async with await SQLiteJournal.open("campaign.journal", identity) as journal:
            done = await journal.lookup(range(1, 1001))        # replay on resume
            await journal.mark_in_flight([4, 5, 6])             # durable before the call
            await journal.record(outcomes)                     # buffered

    Parameters (of :meth:`open`):
        path: the journal file; created when missing, resumed when it is this
            campaign's, refused (:class:`JournalMismatchError`) when it is another's.
        identity: the :class:`CampaignIdentity` of this run.
        secrets: strings that must never be written (the API token): ``open`` refuses
            an identity holding one, and error messages have them redacted.

    The file is locked for as long as the journal is open: a second campaign on the
    same file gets :class:`JournalError`. No per-record state is kept in memory.
    """

    resumed: bool
    """True when the journal already held records of this campaign."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        executor: concurrent.futures.ThreadPoolExecutor,
        *,
        path: str,
        resumed: bool,
        secrets: tuple[str, ...],
    ) -> None:
        self.resumed = resumed
        self.path = path
        self._conn = conn
        self._executor = executor
        # The JSON forms of the secrets, as they would appear in an encoded outcome.
        self._scrubber = SecretScrubber(secrets)
        # Guards the connection between the worker thread and counts().
        self._lock = threading.Lock()
        self._group: GroupCommit[JournalOp] = GroupCommit(self._write, error=_as_journal_error)
        self._closing = False
        self._closed_counts: dict[str, int] | None = None

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        identity: CampaignIdentity,
        *,
        secrets: Collection[str] = (),
    ) -> SQLiteJournal:
        """Create the journal at ``path``, or resume it when it is this campaign's."""
        kept = kept_secrets(secrets)
        refuse_secrets(identity, kept)
        path_str = os.fspath(path)
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="proactive-journal"
        )
        opening = executor.submit(_connect, path_str, identity)
        try:
            conn, resumed = await asyncio.wrap_future(opening)
        except BaseException:
            # Cancelled while the thread opens the file: the connection it still makes
            # holds the file's lock. It is closed as it comes, and the cancellation waits
            # for that (milliseconds), so that a resume right after finds the file free.
            opening.add_done_callback(_close_opened)
            executor.shutdown(wait=False)
            await _finished(opening)
            raise
        return cls(conn, executor, path=path_str, resumed=resumed, secrets=kept)

    async def __aenter__(self) -> SQLiteJournal:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def commits(self) -> int:
        """How many transactions this journal has committed (for summaries and tests)."""
        return self._group.commits

    async def lookup(self, lines: Sequence[int]) -> dict[int, JournalEntry]:
        """What the journal has committed for ``lines``; lines it never saw are absent.

        Outcomes recorded but not yet flushed are not seen (a campaign looks up lines
        before it works on them, so it never needs them); call :meth:`flush` first if
        you do.
        """
        self._check_usable()
        if not lines:
            return {}
        batch = list(lines)
        # A point read takes microseconds: do it here when no commit holds the
        # connection, rather than pay a thread hop per chunk while replaying.
        if self._lock.acquire(blocking=False):
            try:
                return self._lookup_sync(batch)
            finally:
                self._lock.release()
        return await self._run(self._locked_lookup, batch)

    async def mark_in_flight(self, lines: Sequence[int]) -> None:
        """Durably mark ``lines`` in flight; returns once committed (every line is marked).

        Callers arriving while a commit runs share the next one. Cancelling a caller
        does not withdraw its lines: they may still be committed in flight, which a
        resume reports ``unknown`` (never resent), the safe side.
        """
        self._check_usable()
        if lines:
            await self._group.commit(Mark(list(lines)))

    async def still_in_flight(self, lines: Sequence[int]) -> None:
        """None (every line), as ``mark_in_flight`` marks every line: no fence to lose."""
        self._check_usable()

    async def release(self, lines: Sequence[int]) -> None:
        """Withdraw in-flight marks of lines whose call was certainly never processed.

        Buffered like outcomes: if the release is lost in a crash the lines stay in
        flight and a resume reports them ``unknown``, the safe side.
        """
        self._check_usable()
        if lines:
            await self._group.add(Release(list(lines)), rows=len(lines))

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        """Buffer final outcomes; committed with the next commit, by size, or by time."""
        self._check_usable()
        if not outcomes:
            return
        encode = _ENCODER.encode
        op = Record([outcome.line for outcome in outcomes], [encode(o) for o in outcomes])
        await self._group.add(op, rows=len(outcomes))

    async def flush(self) -> None:
        """Commit every outcome recorded so far."""
        self._check_usable()
        await self._group.commit()

    def counts(self) -> dict[str, int]:
        """Committed rows per state (``in_flight`` or an outcome status); flush first.

        Blocks while a commit holds the connection (milliseconds at most): meant for
        summaries and tests, not for every record.
        """
        if self._closed_counts is not None:
            return dict(self._closed_counts)
        self._check_usable()
        with self._lock:
            return self._counts_sync()

    async def aclose(self) -> None:
        """Flush and close; idempotent. A failed journal is closed without flushing."""
        if self._closing:
            return
        self._closing = True
        try:
            await self._group.aclose()  # commits what is buffered, unless a commit failed
        finally:
            # Closed whatever comes (a cancellation here too: a campaign cancelled as it
            # ends): an unclosed connection would hold the file's lock for the rest of the
            # process. The close waits behind a commit still running in the thread.
            closing = self._executor.submit(self._close_sync)
            self._executor.shutdown(wait=False)
            try:
                self._closed_counts = await asyncio.shield(asyncio.wrap_future(closing))
            except asyncio.CancelledError:
                await _finished(closing)
                raise

    def _check_usable(self) -> None:
        check_usable(self.path, self._group.failure, self._closing)

    async def _write(self, ops: list[JournalOp]) -> None:
        await self._run(self._write_sync, ops)

    async def _run(self, func: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    # The *_sync methods run in the worker thread.

    def _write_sync(self, ops: list[JournalOp]) -> None:
        batch = coalesce(ops)  # here, not on the event loop: it loops over every line
        conn = self._conn
        with self._lock:
            try:
                conn.execute("BEGIN")
                # One statement per kind, in the order coalesce applies them. The JSON is
                # passed as str: SQLite 3.45+ would read a BLOB as its binary JSONB.
                if batch.records:
                    array = b"[" + b",".join(batch.records.values()) + b"]"
                    conn.execute(_RECORD_SQL, (self._scrubber.scrub(array).decode(),))
                if batch.marks:
                    conn.execute(_MARK_SQL, (_ENCODER.encode(batch.marks).decode(),))
                if batch.releases:
                    conn.execute(_RELEASE_SQL, (_ENCODER.encode(batch.releases).decode(),))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise JournalError(f"cannot write the journal {self.path}: {exc}") from exc

    def _locked_lookup(self, lines: list[int]) -> dict[int, JournalEntry]:
        with self._lock:
            return self._lookup_sync(lines)

    def _lookup_sync(self, lines: list[int]) -> dict[int, JournalEntry]:
        found: dict[int, JournalEntry] = {}
        try:
            for start in range(0, len(lines), _LOOKUP_BATCH):
                batch = lines[start : start + _LOOKUP_BATCH]
                sql = _SELECT_SQL.format(",".join("?" * len(batch)))
                for row in self._conn.execute(sql, batch):
                    entry = _entry(row)
                    found[entry.line] = entry
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read the journal {self.path}: {exc}") from exc
        return found

    def _counts_sync(self) -> dict[str, int]:
        try:
            rows = self._conn.execute("SELECT state, count(*) FROM lines GROUP BY state")
            return {_STATE_NAMES[code]: count for code, count in rows}
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read the journal {self.path}: {exc}") from exc

    def _close_sync(self) -> dict[str, int] | None:
        with self._lock:
            try:
                return self._counts_sync() if self._group.failure is None else None
            finally:
                # The last connection's close checkpoints the WAL into the main file.
                self._conn.close()


def _connect(path: str, identity: CampaignIdentity) -> tuple[sqlite3.Connection, bool]:
    """Open, lock and check the journal file; returns the connection and ``resumed``."""
    try:
        # isolation_level=None: transactions are begun and committed explicitly.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open the journal {path}: {exc}") from exc
    try:
        return conn, _prepare(conn, path, identity)
    except BaseException:
        conn.close()
        raise


async def _finished(future: concurrent.futures.Future[Any]) -> None:
    """Wait for ``future`` to end, whatever it ends with, through further cancellations."""
    done = asyncio.wrap_future(future)
    while not done.done():
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.shield(done)
    if not done.cancelled():
        done.exception()  # retrieved: its error is not news


def _close_opened(opening: concurrent.futures.Future[tuple[sqlite3.Connection, bool]]) -> None:
    """Close the connection of an open its caller gave up on (cancelled), if it made one."""
    if opening.cancelled() or opening.exception() is not None:
        return
    opening.result()[0].close()


def _prepare(conn: sqlite3.Connection, path: str, identity: CampaignIdentity) -> bool:
    try:
        # EXCLUSIVE before WAL: the write lock taken below is then held until close, so
        # a second campaign cannot share the file (and no -shm file is needed).
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode != "wal":
            raise JournalError(f"the journal {path} cannot use WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = NORMAL")
        _require_json(conn)
        conn.execute("BEGIN IMMEDIATE")
        resumed = _check_or_create(conn, path, identity)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise refusal(path, exc, f"{path} is not a usable campaign journal: {exc}") from exc
    return resumed


def _require_json(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("SELECT json_extract('[1]', '$[0]')").fetchone()
    except sqlite3.OperationalError as exc:
        raise JournalError(
            "the journal needs SQLite's JSON functions, which this Python's SQLite lacks"
        ) from exc


def _check_or_create(conn: sqlite3.Connection, path: str, identity: CampaignIdentity) -> bool:
    (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    if app_id == 0 and not tables:
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [(field, getattr(identity, field)) for field in identity.__struct_fields__],
        )
        return False
    check_format(conn, path)
    stored = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    check_identity(path, stored, identity)
    (held,) = conn.execute("SELECT EXISTS (SELECT 1 FROM lines)").fetchone()
    return bool(held)


def check_format(conn: sqlite3.Connection, path: str) -> None:
    """Refuse a file that is not a journal of this format (its header and tables)."""
    (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    if app_id != _APPLICATION_ID or not {"meta", "lines"} <= tables:
        raise JournalError(f"{path} is not a proactive-async campaign journal")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version != _SCHEMA_VERSION:
        raise JournalError(
            f"the journal {path} has format {version}; this version reads {_SCHEMA_VERSION}"
        )


def refusal(path: str, exc: sqlite3.Error, message: str) -> JournalError:
    """What SQLite refused, as a JournalError: a lock (a running campaign holds the file)
    said as such, anything else as ``message``."""
    if getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return JournalError(
            f"the journal {path} is locked: a running campaign is using it (try once it ends)"
        )
    return JournalError(message)


def _entry(row: _Row) -> JournalEntry:
    line, code, attempts, recipient, contact_id, ids, error, duplicate_of = row
    if code == 0:
        return JournalEntry(line=line, state=IN_FLIGHT)
    status = _STATUSES[code - 1]
    outcome = Outcome(
        line=line,
        status=status,
        recipient=recipient,
        contact_id=contact_id,
        conversation_ids=_IDS_DECODER.decode(ids) if ids else [],
        attempts=attempts,
        error=_ERROR_DECODER.decode(error) if error is not None else None,
        duplicate_of=duplicate_of,
    )
    return JournalEntry(line=line, state=status.value, outcome=outcome)


def _as_journal_error(exc: Exception) -> Exception:
    # _write_sync raises JournalError for what SQLite refuses; anything else is a bug.
    return exc if isinstance(exc, JournalError) else JournalError(f"{type(exc).__name__}: {exc}")
