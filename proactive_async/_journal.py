"""The journal seam: what a campaign needs of durable state, and how one is chosen.

A journal makes a campaign resumable after a crash and is the fence of exactly-once: a
chunk's lines are committed *in flight* before its call is made, so no run ever resends a
line the server may have processed, whatever redelivered the work (a resume, a task queue).

``Journal`` is the protocol the runner and the chunk sender talk to; ``open_journal``
picks the backend from a path or URL. The SQLite journal (``_journal_sqlite``) is the
first backend; every backend passes the same conformance suite
(``tests/test_journal_conformance.py``). What every backend must do the same way (the
identity check, refusing the token) is written here once.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final, Protocol, runtime_checkable

import msgspec

from ._errors import JournalError, JournalMismatchError
from ._records import Outcome, OutcomeError, OutcomeStatus
from ._secrets import MIN_SECRET_LENGTH

__all__ = [
    "INTERRUPTED",
    "IN_FLIGHT",
    "CampaignIdentity",
    "Journal",
    "JournalEntry",
    "SecretScrubber",
    "check_identity",
    "interrupted_outcome",
    "kept_secrets",
    "open_journal",
    "refuse_secrets",
]

IN_FLIGHT: Final = "in_flight"
"""The state of a line whose call may have been sent but has no final outcome yet."""

INTERRUPTED: Final = OutcomeError(
    kind="interrupted",
    message="the campaign stopped while this record's call was in flight; it may have been sent",
)
"""The error of a record whose call was in flight when its campaign stopped."""


class CampaignIdentity(msgspec.Struct, frozen=True):
    """What makes two runs the same campaign; a journal only resumes its own campaign.

    Usage::

        identity = CampaignIdentity.build(
            template, input_fingerprint=_input.fingerprint_file("targets.csv"),
            options={"default_region": "BR", "dedupe": True},
        )

    Parameters:
        template: canonical JSON of the request template. It must never hold the API
            token (:meth:`Journal.open` refuses one it is told about).
        input_fingerprint: identifies the input, e.g. ``_input.fingerprint_file``; ``""``
            when it cannot be known (a Python iterable), in which case resuming with
            the same input is the caller's promise.
        options: canonical JSON of the options that change how lines are planned
            (default region, deduplication); ``""`` when there are none.
    """

    template: str
    input_fingerprint: str = ""
    options: str = ""

    @classmethod
    def build(
        cls,
        template: Mapping[str, Any],
        *,
        input_fingerprint: str = "",
        options: Mapping[str, Any] | None = None,
    ) -> CampaignIdentity:
        """An identity from plain mappings, each encoded as sorted-key JSON."""
        return cls(
            template=_canonical_json(template),
            input_fingerprint=input_fingerprint,
            options=_canonical_json(options) if options else "",
        )


class JournalEntry(msgspec.Struct, frozen=True):
    """What the journal knows of one input line.

    ``state`` is ``"in_flight"`` or an :class:`OutcomeStatus` value; ``outcome`` is the
    stored outcome of a finished line, ``None`` for one in flight.
    """

    line: int
    state: str
    outcome: Outcome | None = None


def interrupted_outcome(
    line: int, *, recipient: str | None = None, contact_id: int | None = None
) -> Outcome:
    """The ``unknown`` outcome a resume reports for a line left in flight."""
    return Outcome(
        line=line,
        status=OutcomeStatus.UNKNOWN,
        recipient=recipient,
        contact_id=contact_id,
        error=INTERRUPTED,
    )


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
    from ._journal_sqlite import SQLiteJournal  # a backend is imported when used

    text = os.fspath(location)
    scheme, sep, rest = text.partition("://")
    if not sep or len(scheme) == 1:  # a plain path (or a Windows drive letter)
        return await SQLiteJournal.open(text, identity, secrets=secrets)
    if scheme == "sqlite":
        return await SQLiteJournal.open(rest, identity, secrets=secrets)
    if scheme in ("postgres", "postgresql"):
        from ._journal_pg import PostgresJournal

        return await PostgresJournal.open(text, identity, secrets=secrets)
    raise JournalError(f"no journal backend for {scheme}:// (a path or sqlite:/// is)")


class SecretScrubber:
    """Replaces the JSON-encoded forms of secrets in encoded outcomes before they are stored."""

    def __init__(self, secrets: Collection[str]) -> None:
        self._forms = tuple(msgspec.json.encode(secret)[1:-1] for secret in secrets)

    def scrub(self, encoded: bytes) -> bytes:
        for form in self._forms:
            encoded = encoded.replace(form, b"[redacted]")
        return encoded


def kept_secrets(secrets: Collection[str]) -> tuple[str, ...]:
    """The secrets a journal guards: long enough that finding one is not a coincidence."""
    return tuple(secret for secret in secrets if len(secret) >= MIN_SECRET_LENGTH)


def _canonical_json(value: Mapping[str, Any]) -> str:
    return msgspec.json.encode(value, order="sorted").decode()


def refuse_secrets(identity: CampaignIdentity, secrets: tuple[str, ...]) -> None:
    for field in ("template", "options"):
        text: str = getattr(identity, field)
        if any(secret in text for secret in secrets):
            raise JournalError(
                f"the campaign {field} holds the API token; the journal never stores it"
            )


_IDENTITY_LABELS: Final = {
    "template": "request template",
    "input_fingerprint": "input",
    "options": "planning options",
}


def check_identity(path: str, stored: dict[str, str], identity: CampaignIdentity) -> None:
    differences = [
        f"the {label} differs (journal: {_excerpt(stored.get(field, ''))}, "
        f"this run: {_excerpt(getattr(identity, field))})"
        for field, label in _IDENTITY_LABELS.items()
        if stored.get(field, "") != getattr(identity, field)
    ]
    if differences:
        raise JournalMismatchError(
            f"the journal {path} belongs to another campaign: {'; '.join(differences)}. "
            "Resume with the original template and input, or use a new journal file."
        )


def _excerpt(text: str) -> str:
    if not text:
        return "none"
    return repr(text if len(text) <= 80 else f"{text[:77]}...")
