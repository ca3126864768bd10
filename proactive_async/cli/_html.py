"""The HTML report as the commands write it: the path checked before anything runs, the
page written whole, and a run's timeline kept in its SQLite journal for a later
``report --journal PATH --html OUT``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final

from .._errors import JournalError
from .._report_html import ReportPage, check_html_path, render_report, write_report_html
from ._common import UsageError, os_error_text

if TYPE_CHECKING:
    from rich.console import Console

    from .._report import CampaignSummary
    from .._report_html import RunRecorder
    from .._timeline import TimelineRow

__all__ = [
    "HTML_HELP",
    "check_html",
    "file_guards",
    "keep_timeline",
    "run_page",
    "write_html",
]

HTML_HELP: Final = (
    "also write PATH, one HTML page to open in a browser (no network needed): the outcome "
    "counts, sends and 429s over time, the top errors, and the failed and unknown records "
    "(the first 5,000 by line), searchable; phone numbers masked. An earlier HTML report "
    "at PATH is replaced whole; any other existing file is refused"
)
NO_SQLITE_TIMELINE: Final = (
    "this journal has no timeline (the command records one from this version on; a "
    "journal of an earlier version, of a run killed before its end, or of the library's "
    "Campaign has none)"
)


def file_guards(**files: str | None) -> list[tuple[str, str]]:
    """(what, path) pairs an HTML report must not be written over: ``journal`` with its
    side files, and any other file by its name (``input``, ``report``)."""
    from ..journal import journal_files

    guards: list[tuple[str, str]] = []
    for what, path in files.items():
        if path is None:
            continue
        if what == "journal":
            guards += [("the journal", name) for name in journal_files(path)]
        else:
            guards.append((f"the {what}", path))
    return guards


def check_html(path: str, guards: Iterable[tuple[str, str]]) -> None:
    try:
        check_html_path(path, guards)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def write_html(path: str, page: ReportPage, *, secrets: Sequence[str] = ()) -> None:
    try:
        write_report_html(path, render_report(page, secrets=secrets))
    except OSError as exc:
        raise UsageError(os_error_text(exc)) from exc


def run_page(
    summary: CampaignSummary,
    recorder: RunRecorder,
    *,
    kept: Sequence[TimelineRow] | None,
    source: str,
    report: str | None,
    journal: str | None,
    notes: Sequence[str],
) -> ReportPage:
    """The page of a run that just ended. ``kept``: the journal's whole timeline (every run
    of the campaign, a resume's earlier ones too), else the chart shows this run's."""
    if kept is None and journal is not None and _sqlite_file(journal) is None:
        notes = [*notes, "The chart shows this run only: a PostgreSQL journal keeps no timeline."]
    return ReportPage(
        summary=summary,
        attention=recorder.attention,
        source=source,
        full_list=f"the report {report} (status failed or unknown)" if report else "-",
        timeline=kept if kept is not None else recorder.timeline.rows(),
        run_figures=True,
        notes=notes,
    )


def keep_timeline(
    journal: str | None, recorder: RunRecorder, *, stderr: Console, read_back: bool = True
) -> list[TimelineRow] | None:
    """Add the run's timeline to its SQLite journal, if it has one; with ``read_back``, the
    journal's whole timeline after it (None without one, without ``read_back``, or when it
    cannot be kept: one line on stderr, the run stands)."""
    from ..journal._sqlite_report import JournalReader, add_timeline

    path = _sqlite_file(journal)
    if path is None or not os.path.exists(path):
        return None
    try:
        add_timeline(path, recorder.timeline.rows())
        if not read_back:
            return None
        with JournalReader(path) as reader:
            return reader.timeline()
    except JournalError as exc:
        stderr.print(f"the run's timeline is not kept in the journal: {exc}", highlight=False)
        return None


def _sqlite_file(journal: str | None) -> str | None:
    from ..journal import journal_files

    if journal is None:
        return None
    files = journal_files(journal)
    return files[0] if files else None
