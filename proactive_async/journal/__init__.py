"""The journal seam: durable campaign state, and how a backend is chosen.

A journal makes a campaign resumable after a crash and is the fence of exactly-once: a
chunk's lines are committed *in flight* before its call is made, so no run ever resends a
line the server may have processed, whatever redelivered the work (a resume, a task queue).

What lives where:

* here: the ``Journal`` protocol the runner and the chunk sender talk to, and
  ``open_journal``, which picks the backend from a path or URL (imported when used);
* ``_base``: what every backend does the same way (``JournalEntry``, ``CampaignIdentity``
  and its check, keeping the token out, ``Outcome``'s wire names);
* ``_group_commit``: ``GroupCommit``, the one writer that batches every caller's writes
  (both backends and the distributed slice journal use it), and the journal operations;
* ``_sqlite``: ``SQLiteJournal``, one local file (its ``-wal`` side file included);
* ``_postgres``: ``PostgresJournal``, a one-process campaign's journal and its fence;
* ``_pg_database``: the PostgreSQL tables, the connection and the helpers the distributed
  campaign builds on too (psycopg is imported only when one connects).

Every backend passes one conformance suite (``tests/test_journal_conformance.py``).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from typing import Protocol, runtime_checkable

from .._errors import JournalError, JournalMismatchError
from .._records import Outcome
from ._base import (
    IN_FLIGHT,
    INTERRUPTED,
    CampaignIdentity,
    JournalEntry,
    SecretScrubber,
    check_identity,
    interrupted_outcome,
    kept_secrets,
    refuse_secrets,
)

__all__ = [
    "INTERRUPTED",
    "IN_FLIGHT",
    "CampaignIdentity",
    "Journal",
    "JournalEntry",
    "JournalError",
    "JournalMismatchError",
    "SecretScrubber",
    "check_identity",
    "interrupted_outcome",
    "is_postgres",
    "journal_files",
    "kept_secrets",
    "open_journal",
    "refuse_secrets",
]


@runtime_checkable
class Journal(Protocol):
    """The durable state of one campaign, as the runner needs it.

    Usage::

        journal = await open_journal("campaign.db", identity, secrets=client.secrets)
        try:
            known = await journal.lookup([1, 2, 3])     # what an earlier run finished
            await journal.mark_in_flight([1, 2])        # durable before the call
            await journal.record(outcomes)              # final outcomes (may be buffered)
        finally:
            await journal.aclose()

    A line marked in flight stays so until an outcome is recorded for it or it is
    released; a crash in between leaves it in flight, and a resume never resends it
    unless asked to.
    """

    resumed: bool
    """True when the journal already held lines of this campaign when opened."""

    async def lookup(self, lines: Sequence[int]) -> dict[int, JournalEntry]:
        """What is committed for ``lines``; lines never seen are absent."""

    async def mark_in_flight(self, lines: Sequence[int]) -> Collection[int] | None:
        """Durably mark ``lines`` in flight; returns once committed.

        None: every line was marked. A fenced journal (a distributed slice's) returns the
        lines it marked; a line it did not mark belongs to another owner, or its campaign
        was cancelled, and must not be sent.
        """

    async def still_in_flight(self, lines: Sequence[int]) -> Collection[int] | None:
        """Which of ``lines``, marked in flight by this journal, are still its to send:
        the fence checked again before a retry, as a read (nothing is written).

        None: every line (a journal whose marks nothing else can take back). A fenced
        journal returns the lines still in flight under its mark; a line it does not
        return was taken back (its owner's lease lost, or its campaign cancelled) and
        must not be sent again.
        """

    async def release(self, lines: Sequence[int]) -> None:
        """Withdraw in-flight marks of lines whose call was certainly never processed."""

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        """Store final outcomes (committed by :meth:`flush` at the latest)."""

    async def flush(self) -> None:
        """Commit everything recorded so far."""

    async def aclose(self) -> None:
        """Flush and close; idempotent."""


async def open_journal(
    location: str | os.PathLike[str],
    identity: CampaignIdentity,
    *,
    secrets: Collection[str] = (),
) -> Journal:
    """Open (create, or resume) the journal at ``location``: a file path or a URL.

    ``campaign.db`` or ``sqlite:///campaign.db``: the SQLite journal;
    ``postgresql://user@host/db?campaign=NAME``: the PostgreSQL journal. Raises
    :class:`JournalError` for a scheme no installed backend handles.
    """
    text = os.fspath(location)
    path = _sqlite_path(text)
    if path is not None:
        from ._sqlite import SQLiteJournal  # a backend is imported when used

        return await SQLiteJournal.open(path, identity, secrets=secrets)
    if is_postgres(text):
        from ._postgres import PostgresJournal

        return await PostgresJournal.open(text, identity, secrets=secrets)
    scheme = text.partition("://")[0]
    raise JournalError(f"no journal backend for {scheme}:// (a path or sqlite:/// is)")


def is_postgres(location: str | os.PathLike[str]) -> bool:
    """Does ``location`` name a PostgreSQL journal (``postgresql://`` or ``postgres://``)?"""
    return os.fspath(location).partition("://")[0] in ("postgres", "postgresql")


def journal_files(location: str | os.PathLike[str]) -> tuple[str, ...]:
    """The files the journal at ``location`` may write (none for a database): what a
    report, say, must never be written over."""
    path = _sqlite_path(os.fspath(location))
    if path is None:
        return ()
    from ._sqlite import SIDE_FILES

    return (path, *(path + side for side in SIDE_FILES))


def _sqlite_path(location: str) -> str | None:
    """The file of a SQLite journal location (a plain path or ``sqlite:///``), else None."""
    scheme, sep, rest = location.partition("://")
    if not sep or len(scheme) == 1:  # a plain path (or a Windows drive letter)
        return location
    return rest if scheme == "sqlite" else None
