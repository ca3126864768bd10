"""``proactive-async campaign --dry-run``: read and plan a whole file, send nothing.

No token, no network: the counts of valid, rejected and duplicate records, the calls a
campaign would make, the records that would be sent with an empty content variable (a
blank CSV cell with no ``--var`` default: the template would show nothing there), and a
report of the records it would not send.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from .._errors import InputError
from .._options import CampaignOptions
from .._records import Outcome, OutcomeStatus
from .._report import CampaignSummary, ReportWriter
from . import _flags
from ._common import (
    UsageError,
    check_targets_file,
    console,
    exit_code_of,
    os_error_text,
    stderr_console,
)

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["DryRun", "dry_run_command", "dry_run_table", "plan_dry_run"]


@dataclass
class DryRun:
    """What a campaign would do with a file: records by outcome, calls and their sizes."""

    summary: CampaignSummary = field(default_factory=CampaignSummary)
    calls: int = 0
    targets: int = 0
    smallest: int = 0
    largest: int = 0
    empty_records: int = 0
    """Valid records that would be sent with at least one empty content variable."""
    empty_variables: Counter[str] = field(default_factory=Counter)
    """Those records by variable name (a record with two empty names counts under both)."""

    def add_call(self, size: int) -> None:
        """Count one planned call of ``size`` targets."""
        self.calls += 1
        self.targets += size
        self.smallest = size if self.calls == 1 else min(self.smallest, size)
        self.largest = max(self.largest, size)

    def as_dict(self) -> dict[str, object]:
        """The plan as plain JSON values (``--dry-run --json-summary``)."""
        counts = self.summary.counts
        return {
            "dry_run": True,
            "records": self.summary.records,
            "valid": self.targets,
            "rejected": counts[OutcomeStatus.REJECTED],
            "duplicate": counts[OutcomeStatus.DUPLICATE],
            "calls": self.calls,
            "targets_per_call": {
                "min": self.smallest,
                "mean": round(self.targets / self.calls, 1) if self.calls else 0,
                "max": self.largest,
            },
            "empty_variables": {
                "records": self.empty_records,
                "by_name": dict(self.empty_variables.most_common()),
            },
            "top_rejections": [
                error.as_dict()
                for error in self.summary.top_errors(10, statuses=(OutcomeStatus.REJECTED,))
            ],
        }


async def plan_dry_run(
    targets: str,
    options: CampaignOptions,
    report: ReportWriter | None,
    *,
    defaults: Mapping[str, Any] | None = None,
) -> DryRun:
    """Read and plan the whole file as a campaign would, sending nothing.

    ``defaults``: the template's content variables (``--var``), which fill an empty cell
    of the same name, so that only the cells still empty when sent are counted.
    """
    from .._campaign import file_records
    from .._input import count_records
    from .._planner import Planner

    result = DryRun()
    summary = result.summary
    planner = Planner(options.planner)
    records = file_records(
        targets, multiline=options.multiline_values, recipient_column=options.recipient_column
    )
    filled = {name for name, value in (defaults or {}).items() if value != ""}
    expected = count_records(targets, options.recipient_column)  # the dedupe table whole
    async with contextlib.aclosing(planner.plan(records, expected=expected)) as plan:
        async for item in plan:
            if isinstance(item, Outcome):
                summary.note_outcome(item)
                if report is not None:
                    report.write(item)
                continue
            result.add_call(len(item.targets))
            summary.records += len(item.targets)
            empty = [n for n, v in (item.variables or {}).items() if v == "" and n not in filled]
            if empty:
                # A chunk shares its variables: every target in it has the same empty names.
                result.empty_records += len(item.targets)
                result.empty_variables.update(dict.fromkeys(empty, len(item.targets)))
    return result


def dry_run_command(args: argparse.Namespace) -> int:
    """``campaign --dry-run``: no token, no network; the report holds the records not sent."""
    from .._campaign import _check_report_path

    options = _flags.options_from_args(args)
    defaults = _flags.template_from_args(args).content_variables
    targets: str = args.recipients_file
    report_path = _flags.report_path(args, targets)
    check_targets_file(targets, options.recipient_column)
    try:
        _check_report_path(report_path, targets, args.journal)
        report = ReportWriter(report_path)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(os_error_text(exc)) from exc
    try:
        with report:  # published whole when planning ends; discarded if it fails
            result = asyncio.run(
                plan_dry_run(
                    targets,
                    options,
                    report,
                    defaults=defaults if isinstance(defaults, dict) else None,
                )
            )
    except InputError as exc:
        raise UsageError(str(exc)) from exc
    table = dry_run_table(result, report_path)
    if args.json_summary:
        stderr_console().print(table)
        sys.stdout.write(msgspec.json.encode(result.as_dict()).decode() + "\n")
        sys.stdout.flush()
    else:
        console(sys.stdout).print(table)
    return exit_code_of(result.summary)


def dry_run_table(result: DryRun, report: str) -> Table:
    """The dry run's table: records by outcome, the calls, the top rejection reasons."""
    from rich.table import Table

    counts = result.summary.counts
    table = Table(title="dry run: nothing sent", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right", overflow="fold")
    table.add_row("records", f"{result.summary.records:,}")
    table.add_row("valid", f"{result.targets:,}")
    table.add_row("rejected", f"{counts[OutcomeStatus.REJECTED]:,}")
    table.add_row("duplicate", f"{counts[OutcomeStatus.DUPLICATE]:,}")
    table.add_row("calls", f"{result.calls:,}")
    if result.calls:
        mean = result.targets / result.calls
        sizes = f"min {result.smallest:,}, mean {mean:,.1f}, max {result.largest:,}"
        table.add_row("targets per call", sizes)
    rejections = result.summary.top_errors(5, statuses=(OutcomeStatus.REJECTED,))
    for index, error in enumerate(rejections):
        table.add_row(
            "top rejections" if index == 0 else "", f"{error.records:,} x {error.message}"
        )
    if result.empty_records:
        names = ", ".join(
            f"{name} ({count:,})" for name, count in result.empty_variables.most_common(5)
        )
        table.add_row(
            "[yellow]empty variables[/]",
            f"[yellow]{result.empty_records:,} record(s) would be sent with an empty value: "
            f"{names}[/] (fill the cells, or give a default with --var NAME=VALUE)",
        )
    table.add_row("report", f"{report} (rejected and duplicate records)")
    return table
