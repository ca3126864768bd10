"""``proactive-async report``: a campaign's report, from its journal.

A one-process campaign's SQLite journal (``campaign --journal PATH``), or a distributed
campaign in PostgreSQL (``--journal postgresql://... --campaign ID``). ``--out`` writes the
JSONL (or CSV) report, one line per record; ``--html`` the page people look at
(``_report_html``). Each is written to a temporary file and renamed over its path once
whole: a journal that cannot be read leaves an earlier file as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from .._errors import JournalError
from .._records import Outcome
from .._report import ReportWriter, outcome_lines
from .._report_html import OutcomeTally, ReportPage
from ..journal import is_postgres
from ._common import (
    EXIT_OK,
    JOURNAL_PASSWORD_HELP,
    STDIN,
    UsageError,
    os_error_text,
    settings_from_flags,
)
from ._html import HTML_HELP, NO_SQLITE_TIMELINE, check_html, file_guards, write_html

if TYPE_CHECKING:
    from .._timeline import TimelineRow
    from ..distributed import CampaignStatus

__all__ = ["add_parser"]


def add_parser(commands: Any) -> None:
    """``report``: the journal, and the files to write (``--out``, ``--html``)."""
    r = commands.add_parser(
        "report",
        help="a campaign's report from its journal: JSONL/CSV (--out) or HTML (--html)",
        description="A campaign's report from its journal: a one-process campaign's SQLite "
        "file (--journal PATH), or a distributed campaign (--journal postgresql://... "
        "--campaign ID).",
        allow_abbrev=False,
    )
    r.add_argument(
        "--journal",
        metavar="PATH_OR_DSN",
        help="the SQLite journal of `campaign --journal PATH`, or postgresql://... for a "
        "distributed campaign (default: $PROACTIVE_JOURNAL); " + JOURNAL_PASSWORD_HELP,
    )
    r.add_argument(
        "--campaign", metavar="ID", help="the distributed campaign (PostgreSQL journals)"
    )
    r.add_argument(
        "--out",
        metavar="PATH",
        help="the report to write: JSONL, or CSV for a path ending .csv; - for standard "
        "output. Written whole or not at all (an earlier file stays until the report is ready)",
    )
    r.add_argument("--html", metavar="PATH", help=HTML_HELP.replace("also write", "write"))
    r.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    if args.out is None and args.html is None:
        raise UsageError("give --out PATH (JSONL or CSV), --html PATH, or both")
    journal = settings_from_flags(args, None, journal=args.journal).journal
    if not journal:
        raise UsageError(
            "give the journal: --journal PATH (a campaign's SQLite file), or --journal "
            "postgresql://... --campaign ID (or PROACTIVE_JOURNAL)"
        )
    if is_postgres(journal):
        if not args.campaign:
            raise UsageError("a PostgreSQL journal holds many campaigns: give --campaign ID")
        return _distributed(args, journal)
    if args.campaign:
        raise UsageError("--campaign is for a PostgreSQL journal; a SQLite journal holds one")
    return _local(args, journal)


def _check_paths(args: argparse.Namespace, journal: str | None) -> None:
    """Neither output is written over the journal, nor the page over the report."""
    from .._campaign import _check_report_path

    if args.out is not None and args.out != STDIN and journal is not None:
        try:
            _check_report_path(args.out, None, journal)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    if args.html is not None:
        out = args.out if args.out != STDIN else None
        check_html(args.html, file_guards(journal=journal, report=out))


class _Outputs:
    """Where each outcome read goes: the report (``--out``) and the page's tally."""

    def __init__(self, args: argparse.Namespace, stack: ExitStack) -> None:
        self.written = 0
        self.tally = OutcomeTally() if args.html is not None else None
        self.report: ReportWriter | None = None
        if args.out is not None:
            out = sys.stdout.buffer if args.out == STDIN else args.out
            self.report = stack.enter_context(ReportWriter(out))

    def write(self, outcome: Outcome) -> None:
        self.written += 1
        if self.report is not None:
            self.report.write(outcome)
        if self.tally is not None:
            self.tally.add(outcome)


# -- a SQLite journal -----------------------------------------------------------------


def _local(args: argparse.Namespace, journal: str) -> int:
    from ..journal import journal_files
    from ..journal._sqlite_report import JournalReader

    files = journal_files(journal)
    if not files:  # neither PostgreSQL nor a file: redis://, mysql://, ...
        raise UsageError(
            f"no journal backend for {journal.partition('://')[0]}:// (a path or sqlite:/// is)"
        )
    path = files[0]
    _check_paths(args, path)
    try:
        with ExitStack() as stack:
            reader = stack.enter_context(JournalReader(path))
            outputs = _Outputs(args, stack)
            for outcome in reader.outcomes():
                outputs.write(outcome)
            timeline = reader.timeline()
    except JournalError as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(os_error_text(exc)) from exc
    notes = []
    if reader.in_flight:
        notes.append(
            f"{reader.in_flight:,} record(s) were in flight when the last run stopped: shown "
            "unknown (they may have been sent); a resume with the same --journal does not "
            "resend them"
        )
    command = f"proactive-async report --journal {path} --out report.jsonl"
    _finish(args, outputs, f"journal {path}", command, notes, timeline, NO_SQLITE_TIMELINE)
    return EXIT_OK


# -- a distributed campaign -----------------------------------------------------------


def _distributed(args: argparse.Namespace, dsn: str) -> int:
    from .distributed import _location, _need, describe

    _need("postgres", "psycopg")
    location = _location(dsn, args.campaign)
    _check_paths(args, None)

    async def read(outputs: _Outputs) -> CampaignStatus:
        from ..distributed import campaign_status, write_report

        status = await campaign_status(location)  # JournalError for a campaign not there
        lines = outcome_lines(outputs.write)
        await write_report(location, lines)
        lines.close()
        return status

    try:
        with ExitStack() as stack:
            outputs = _Outputs(args, stack)
            status = asyncio.run(read(outputs))
    except JournalError as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(os_error_text(exc)) from exc
    notes = [describe(status)]
    unfinished = sum(status.counts.get(state, 0) for state in ("planned", "in_flight"))
    if unfinished:
        notes.append(f"{unfinished:,} record(s) not finished yet are not in this report")
    from ..journal._pg_database import display_dsn

    source = f"distributed campaign {args.campaign} ({display_dsn(dsn)})"
    command = (
        f"proactive-async report --journal (the same) --campaign {args.campaign} --out report.jsonl"
    )
    no_timeline = "a distributed campaign's workers record no timeline"
    _finish(args, outputs, source, command, notes, None, no_timeline)
    return EXIT_OK


# -- the end --------------------------------------------------------------------------


def _finish(
    args: argparse.Namespace,
    outputs: _Outputs,
    source: str,
    command: str,
    notes: list[str],
    timeline: Sequence[TimelineRow] | None,
    no_timeline: str,
) -> None:
    """Write the page (the report is in place by now) and say what was written."""
    if args.out is not None:
        where = "standard output" if args.out == STDIN else args.out
        sys.stderr.write(f"{outputs.written:,} records written to {where}\n")
    tally = outputs.tally
    if tally is None:
        return
    full_list = (
        f"the report {args.out} (status failed or unknown)"
        if args.out not in (None, STDIN)
        else command
    )
    page = ReportPage(
        summary=tally.summary,
        attention=tally.attention,
        source=source,
        full_list=full_list,
        timeline=timeline,
        no_timeline=no_timeline,
        notes=notes,
    )
    write_html(args.html, page)
    attention = tally.attention.total
    sys.stderr.write(
        f"HTML report written to {args.html} ({tally.summary.records:,} records, "
        f"{attention:,} need attention)\n"
    )
