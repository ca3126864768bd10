"""The CLI's progress displays: plain lines, the rich bar, and the rate they show."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from proactive_async import OutcomeStatus
from proactive_async._progress import (
    PlainProgress,
    RateMeter,
    RichProgress,
    Snapshot,
    take_snapshot,
)


def test_plain_progress_prints_records_rate_and_counts_and_skips_repeats() -> None:
    lines: list[str] = []

    class Sink:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    display = PlainProgress(Sink())  # type: ignore[arg-type]
    snap = Snapshot(
        records=12,
        total=20,
        targets_per_second=950.4,
        counts=dict.fromkeys(OutcomeStatus, 0) | {OutcomeStatus.SENT: 12},
    )
    display.show(snap)
    display.show(snap)
    assert lines == [
        "12/20 records, 950 targets/s, sent=12, failed=0, unknown=0, rejected=0, duplicate=0\n"
    ]


def test_the_rate_meter_measures_over_a_recent_window() -> None:
    meter = RateMeter(window=3.0)
    meter.add(0.0, 0)
    assert meter.add(1.0, 1000) == 1000.0
    meter.add(10.0, 1000)  # idle: the old points fall out of the window
    assert meter.add(14.0, 3000) == pytest.approx(500.0)


def test_the_terminal_progress_shows_the_bar_the_rate_and_the_counts() -> None:
    stream = io.StringIO()
    display = RichProgress(Console(file=stream, force_terminal=True, width=80), total=20)
    display.show(
        Snapshot(
            records=12,
            total=20,
            targets_per_second=950.0,
            counts=dict.fromkeys(OutcomeStatus, 0) | {OutcomeStatus.SENT: 12},
        )
    )
    display.note("a message")
    display.close()
    text = stream.getvalue()
    assert "12/20" in text and "950 targets/s" in text and "sent 12" in text
    assert "a message" in text


def test_records_replayed_from_the_journal_do_not_make_the_eta_of_a_resume() -> None:
    """A resume replays thousands of records a second: the ETA waits for records handled now."""
    from proactive_async._report import CampaignSummary

    summary = CampaignSummary()
    summary.records = summary.resumed = 1000
    meter, records_meter = RateMeter(), RateMeter()
    snap = take_snapshot(summary, 2000, meter, records_meter)
    assert snap.eta is None and not records_meter.started  # nothing handled now: no guess
    summary.records += 10
    take_snapshot(summary, 2000, meter, records_meter)
    assert records_meter.started


def test_a_total_counted_too_low_never_shows_more_records_than_the_total() -> None:
    from proactive_async._report import CampaignSummary

    summary = CampaignSummary()
    summary.records = 16
    assert take_snapshot(summary, 15, RateMeter(), RateMeter()).total == 16
