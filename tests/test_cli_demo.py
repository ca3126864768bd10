"""``proactive-async demo``: a campaign against the simulator passes its own audit, and the
audit finds what it is there to find."""

from __future__ import annotations

from pathlib import Path

import pytest

from proactive_async import Outcome, OutcomeStatus
from proactive_async.cli import main
from proactive_async.cli.demo import audit_report


def test_demo_passes_its_own_audit(
    tmp_path: Path, no_proactive_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["demo", "--records", "600", "--workdir", str(tmp_path), "--no-progress"])

    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "audit: 600 records, 0 lost, 0 duplicated" in out and "OK" in out
    assert len((tmp_path / "report.jsonl").read_bytes().splitlines()) == 600


def outcome(line: int, status: OutcomeStatus, recipient: str) -> Outcome:
    return Outcome(line=line, status=status, recipient=recipient)


def test_the_audit_finds_a_record_sent_twice() -> None:
    report = [outcome(1, OutcomeStatus.SENT, "+5511970000000")]
    result = audit_report(report, {"+5511970000000": 2}, records=1)
    assert not result.ok and len(result.duplicated) == 1


def test_the_audit_finds_a_sent_record_the_server_never_processed() -> None:
    report = [outcome(1, OutcomeStatus.SENT, "+5511970000000")]
    result = audit_report(report, {}, records=1)
    assert not result.ok and len(result.lost) == 1


def test_the_audit_finds_lines_without_or_with_several_report_lines() -> None:
    report = [outcome(1, OutcomeStatus.FAILED, "+1"), outcome(1, OutcomeStatus.FAILED, "+1")]
    result = audit_report(report, {}, records=2)
    assert result.missing_lines == [2] and result.repeated_lines == [1]


def test_the_audit_allows_an_unknown_record_processed_at_most_once() -> None:
    report = [
        outcome(1, OutcomeStatus.UNKNOWN, "+5511970000000"),
        outcome(2, OutcomeStatus.DUPLICATE, "+5511970000000"),
    ]
    assert audit_report(report, {"+5511970000000": 1}, records=2).ok
    assert not audit_report(report, {"+5511970000000": 2}, records=2).ok
