"""The journal package's surface: what it exports, how a location picks its backend (and
imports it only then), which files a journal may write, and what every backend shares."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

import proactive_async
import proactive_async.journal as journal_package
from proactive_async._records import Outcome, OutcomeError, OutcomeStatus
from proactive_async.journal import (
    CampaignIdentity,
    interrupted_outcome,
    journal_files,
    open_journal,
)
from proactive_async.journal._base import OUTCOME_WIRE_NAMES
from proactive_async.journal._sqlite import SQLiteJournal

IDENTITY = CampaignIdentity.build({"channelId": 1}, input_fingerprint="sha256:aaaa")


def test_the_journal_package_all_is_sorted_and_resolves() -> None:
    def isort_order(name: str) -> tuple[int, str]:  # constants, classes, then functions
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert journal_package.__all__ == sorted(journal_package.__all__, key=isort_order)
    for name in journal_package.__all__:
        assert getattr(journal_package, name) is not None, name


def test_the_top_level_names_are_the_journal_packages_own() -> None:
    for name in ("Journal", "JournalError", "JournalMismatchError", "open_journal"):
        assert getattr(proactive_async, name) is getattr(journal_package, name), name


def test_importing_the_package_imports_no_backend() -> None:
    code = (
        "import sys, proactive_async, proactive_async.journal\n"
        "print(sorted(m for m in sys.modules if m.startswith('proactive_async.journal.')))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    backends = {
        "proactive_async.journal._sqlite",
        "proactive_async.journal._postgres",
        "proactive_async.journal._pg_database",
    }
    assert backends.isdisjoint(eval(found)), found


@pytest.mark.parametrize("url", [False, True], ids=["path", "sqlite-url"])
async def test_a_path_or_a_sqlite_url_opens_the_sqlite_journal(tmp_path: Path, url: bool) -> None:
    path = tmp_path / "j.db"
    journal = await open_journal(f"sqlite://{path}" if url else path, IDENTITY)
    try:
        assert isinstance(journal, SQLiteJournal)
        assert journal.path == str(path)
    finally:
        await journal.aclose()


def test_a_sqlite_journal_may_write_its_file_and_side_files() -> None:
    expected = ("/d/j.db", "/d/j.db-wal", "/d/j.db-shm", "/d/j.db-journal")
    assert journal_files("/d/j.db") == expected
    assert journal_files(Path("/d/j.db")) == expected
    assert journal_files("sqlite:///d/j.db") == expected


def test_a_database_journal_writes_no_local_file() -> None:
    assert journal_files("postgresql://u@h/db?campaign=c") == ()


def test_identity_build_ignores_key_order() -> None:
    a = CampaignIdentity.build({"a": 1, "b": {"d": 2, "c": 3}}, options={"y": 1, "x": 2})
    b = CampaignIdentity.build({"b": {"c": 3, "d": 2}, "a": 1}, options={"x": 2, "y": 1})
    assert a == b
    assert a.template == '{"a":1,"b":{"c":3,"d":2}}'


def test_interrupted_outcome_is_unknown_with_the_interrupted_error() -> None:
    outcome = interrupted_outcome(3, recipient="+5511999990000")
    assert outcome.status is OutcomeStatus.UNKNOWN
    assert outcome.recipient == "+5511999990000"
    assert outcome.error == OutcomeError(
        kind="interrupted",
        message=(
            "the campaign stopped while this record's call was in flight; it may have been sent"
        ),
    )


def test_outcome_wire_names_are_the_keys_msgspec_writes() -> None:
    full = Outcome(
        line=1,
        status=OutcomeStatus.FAILED,
        recipient="+5511999990000",
        contact_id=7,
        conversation_ids=[1],
        attempts=2,
        error=OutcomeError(kind="x", message="y"),
        duplicate_of=1,
    )
    keys = list(msgspec.json.decode(msgspec.json.encode(full)))
    assert list(OUTCOME_WIRE_NAMES.values()) == keys
    assert OUTCOME_WIRE_NAMES["contact_id"] == "contactId"
