"""The end-of-campaign table of ``campaign`` (and ``demo``): counts per status, rates,
calls, latency, the files and the event loop, the top errors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._records import OutcomeStatus
from .._report import CampaignSummary
from .._secrets import display_url
from .._sender import _UNMATCHED as UNMATCHED

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["summary_table"]


def summary_table(
    summary: CampaignSummary, *, report: str | None, journal: str | None, loop: str | None = None
) -> Table:
    """The end-of-campaign table: counts per status, rates, calls, latency, files, loop."""
    from rich.table import Table

    table = Table(title="campaign summary", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right", overflow="fold")  # paths shown whole
    for status in OutcomeStatus:
        table.add_row(str(status), f"{summary.counts[status]:,}")
    table.add_row("records", f"{summary.records:,}")
    if summary.resumed:
        table.add_row("from the journal", f"{summary.resumed:,}")
    table.add_row("elapsed", f"{summary.elapsed:.2f} s")
    table.add_row("targets/s", _rate_text(summary))
    table.add_row("calls", f"{summary.calls:,}")
    table.add_row("retries", f"{summary.retries:,}")
    table.add_row("429s", f"{summary.throttled:,}")
    for label, value in (
        ("latency p50", summary.latency_p50),
        ("latency p95", summary.latency_p95),
        ("latency p99", summary.latency_p99),
    ):
        table.add_row(label, "-" if value is None else f"{value * 1e3:.1f} ms")
    table.add_row("report", report or "-")
    table.add_row("journal", display_url(journal) if journal else "-")
    if loop is not None:
        table.add_row("event loop", loop)
    for index, error in enumerate(summary.top_errors()):
        table.add_row("top errors" if index == 0 else "", error.text())
    return table


def _rate_text(summary: CampaignSummary) -> str:
    """Proven sends a second; with the records whose answer proved nothing, so that a run of
    successful calls that proved nothing does not read as a bare ``0``."""
    rate = summary.targets_per_second
    text = f"{rate:,.1f}" if 0 < rate < 10 else f"{rate:,.0f}"
    unproven = sum(
        count
        for key, count in summary.errors.items()
        if key.kind == UNMATCHED and key.status == OutcomeStatus.UNKNOWN.value
    )
    if not unproven:
        return text
    if not summary.targets_sent:
        return f"0 proven ({unproven:,} records answered without proof: see top errors)"
    return f"{text} proven (and {unproven:,} records answered without proof)"
