"""The campaign report people look at: one self-contained HTML file.

Outcome counts, the run's figures, sends and 429s over time (inline SVG, ``_report_chart``),
the top errors (``CampaignSummary.top_errors``), and the records that need attention
(failed, unknown) in a table a search box filters. No network is needed to open it: the CSS
and the script are inline, and the page's Content-Security-Policy allows nothing else
(not even a request for an image). Every string from a record is escaped, and phone numbers
are masked as in the logs; the JSONL/CSV report keeps them whole.

The attention table holds at most ``ATTENTION_CAP`` records (the first by line): the page
says how many it leaves out and where the full list is.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Final

from ._files import replaceable, write_whole
from ._records import Outcome, OutcomeStatus
from ._report import CampaignSummary, ErrorCount
from ._report_chart import axis_of, chart_svg, duration_text
from ._secrets import Redactor, mask_phone, mask_phones_in
from ._timeline import Timeline, TimelineRow
from ._version import __version__

__all__ = [
    "ATTENTION_CAP",
    "AttentionList",
    "OutcomeTally",
    "ReportPage",
    "RunRecorder",
    "check_html_path",
    "render_report",
    "write_report_html",
]

ATTENTION_CAP: Final = 5000
_GENERATOR: Final = "proactive-async campaign report"
_ATTENTION: Final = (OutcomeStatus.FAILED, OutcomeStatus.UNKNOWN)


class AttentionList:
    """The records that need attention (failed, unknown): the first ``cap`` by line, and
    how many there are in all. Outcomes may come in any order; memory stays ``cap``."""

    def __init__(self, cap: int = ATTENTION_CAP) -> None:
        self.cap = cap
        self.total: int = 0
        self._kept: dict[int, Outcome] = {}
        self._lines: list[int] = []  # the kept lines, negated: a heap with the highest on top

    def add(self, outcome: Outcome) -> None:
        """Count the outcome if it needs attention; keep it if its line is among the first."""
        if outcome.status not in _ATTENTION:
            return
        line = outcome.line
        if line in self._kept:  # the same line again (a resume's replay): the latest wins
            self._kept[line] = outcome
            return
        self.total += 1
        if len(self._kept) < self.cap:
            heapq.heappush(self._lines, -line)
        elif line < -self._lines[0]:
            del self._kept[-heapq.heapreplace(self._lines, -line)]
        else:
            return
        self._kept[line] = outcome

    def records(self) -> list[Outcome]:
        """The kept outcomes, by line."""
        return [self._kept[line] for line in sorted(self._kept)]

    @property
    def omitted(self) -> int:
        """How many needed attention but were not kept (past ``cap``)."""
        return self.total - len(self._kept)


class OutcomeTally:
    """Final outcomes read back (from a journal, a report): the summary and attention list."""

    def __init__(self, cap: int = ATTENTION_CAP) -> None:
        self.summary: CampaignSummary = CampaignSummary()
        self.attention: AttentionList = AttentionList(cap)

    def add(self, outcome: Outcome) -> None:
        """Count one final outcome."""
        self.summary.note_outcome(outcome)
        self.attention.add(outcome)


class RunRecorder:
    """What a run keeps for its HTML report, through the campaign's hooks: the timeline of
    this run's own outcomes and 429s (not of the outcomes a resume replays from the
    journal, which the campaign hands to ``on_replayed``), and the records that need
    attention, replayed ones included.

    Usage::

        recorder = RunRecorder()
        campaign = Campaign(..., on_outcome=recorder.on_outcome,
                            on_replayed=recorder.on_replayed,
                            on_throttle=recorder.on_throttle)
    """

    def __init__(self, timeline: Timeline | None = None, cap: int = ATTENTION_CAP) -> None:
        self.timeline: Timeline = timeline if timeline is not None else Timeline()
        self.attention: AttentionList = AttentionList(cap)

    def on_outcome(self, outcome: Outcome) -> None:
        """The ``on_outcome`` hook (this run's outcomes): the timeline and the attention list."""
        self.attention.add(outcome)
        self.timeline.note_outcome(outcome)

    def on_replayed(self, outcome: Outcome) -> None:
        """The ``on_replayed`` hook (an earlier run's outcomes): the attention list only."""
        self.attention.add(outcome)

    def on_throttle(self, details: object) -> None:
        """The ``on_throttle`` hook: a 429 on the timeline."""
        self.timeline.note_throttle()


@dataclass
class ReportPage:
    """Everything one HTML report shows."""

    summary: CampaignSummary
    attention: AttentionList
    source: str
    """What the report is of: a file, a journal, a distributed campaign."""
    full_list: str
    """Where every record that needs attention is listed (the JSONL report, a command)."""
    timeline: Sequence[TimelineRow] | None = None
    no_timeline: str = "this journal has no timeline"
    """Why there is no chart, when ``timeline`` is None."""
    run_figures: bool = False
    """The summary has the run's calls, retries, elapsed time and latency (a live run)."""
    notes: Sequence[str] = ()
    generated: float = field(default_factory=time.time)


# -- the page -------------------------------------------------------------------------


def render_report(page: ReportPage, *, secrets: Iterable[str] = ()) -> str:
    """The whole HTML document; any of ``secrets`` in it (none should be) is redacted."""
    style, script = _STYLE, _SCRIPT
    policy = (
        f"default-src 'none'; style-src '{_sha256(style)}'; script-src '{_sha256(script)}'; "
        "img-src 'none'; base-uri 'none'; form-action 'none'"
    )
    body = "\n".join(
        [
            _header(page),
            _counts(page.summary),
            _figures(page),
            _chart_section(page),
            _errors_section(page.summary),
            _attention_section(page),
        ]
    )
    document = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="generator" content="{_GENERATOR} {escape(__version__)}">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>Campaign report: {escape(page.source)}</title>\n"
        f"<style>{style}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n"
        f"<script>{script}</script>\n</body>\n</html>\n"
    )
    return Redactor(secrets).text(document)


def _header(page: ReportPage) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(page.generated))
    notes = "".join(f'<p class="note">{escape(note)}</p>' for note in page.notes)
    return (
        f"<header><h1>Campaign report</h1>"
        f'<p class="source">{escape(page.source)}</p>'
        f'<p class="meta">written {when} by proactive-async {escape(__version__)}; '
        "phone numbers are masked (the JSONL report has them whole)</p>"
        f"{notes}</header>"
    )


_STATUS_NOTES: Final = {
    OutcomeStatus.SENT: "created, exactly once",
    OutcomeStatus.FAILED: "certainly not created",
    OutcomeStatus.UNKNOWN: "may have been created: do not resend blindly",
    OutcomeStatus.REJECTED: "invalid input, never sent",
    OutcomeStatus.DUPLICATE: "repeated in the input, sent once",
}


def _counts(summary: CampaignSummary) -> str:
    records = summary.records
    cards = [
        f'<div class="card total" id="count-records"><span class="n">{records:,}</span>'
        '<span class="what">records</span></div>'
    ]
    for status in OutcomeStatus:
        count = summary.counts[status]
        share = f"{count / records:.1%}" if records else "-"
        cards.append(
            f'<div class="card {status.value}" id="count-{status.value}">'
            f'<span class="n">{count:,}</span><span class="what">{status.value}</span>'
            f'<span class="share">{share}</span>'
            f'<span class="hint">{_STATUS_NOTES[status]}</span></div>'
        )
    return (
        f'<section id="counts"><h2>Outcomes</h2><div class="cards">{"".join(cards)}</div></section>'
    )


def _figures(page: ReportPage) -> str:
    summary = page.summary
    rows: list[tuple[str, str]] = []
    if page.run_figures:
        rows += [
            ("elapsed", duration_text(summary.elapsed)),
            ("sent per second", f"{summary.targets_per_second:,.1f}"),
            ("calls", f"{summary.calls:,}"),
            ("retries", f"{summary.retries:,}"),
        ]
    if page.run_figures:
        rows.append(("429s", f"{summary.throttled:,}"))
    elif page.timeline is not None:  # read back: the 429s are the timeline's
        rows.append(("429s", f"{sum(row.throttled for row in page.timeline):,}"))
    if summary.resumed:
        rows.append(("from the journal (earlier runs)", f"{summary.resumed:,}"))
    if summary.pending:
        rows.append(("left unsent by a stop", f"{summary.pending:,}"))
    if summary.aborted:
        rows.append(("aborted", summary.aborted))
    if page.run_figures:
        for label, value in (
            ("latency p50", summary.latency_p50),
            ("latency p95", summary.latency_p95),
            ("latency p99", summary.latency_p99),
        ):
            rows.append((label, "-" if value is None else f"{value * 1e3:,.1f} ms"))
    if not rows:
        return ""
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f'<section id="figures"><h2>The run</h2><table class="facts">{cells}</table></section>'


_THROUGHPUT: Final = ((0, "sent", "#1a7f37"), (1, "failed", "#cf222e"), (2, "unknown", "#bf8700"))
_THROTTLES: Final = ((3, "429s", "#8250df"),)


def _chart_section(page: ReportPage) -> str:
    rows = page.timeline
    if rows is None:
        return (
            '<section id="timeline"><h2>Over time</h2><p class="unavailable" id="no-chart">'
            f"The chart is unavailable: {escape(page.no_timeline)}.</p></section>"
        )
    if not rows:
        return (
            '<section id="timeline"><h2>Over time</h2><p class="unavailable" id="no-chart">'
            "The chart is empty: no record was sent and no 429 answered.</p></section>"
        )
    axis = axis_of(rows)
    start = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(axis.start))
    per = "second" if axis.bucket == 1 else f"second (averaged over {axis.bucket} s)"
    coverage = _coverage(page.summary, rows)
    return (
        '<section id="timeline"><h2>Over time</h2>'
        f'<p class="meta">from {start}, {duration_text(axis.seconds)} of activity; '
        f"records and 429s per {per}</p>{coverage}"
        f"<h3>Records per second</h3>{_legend(_THROUGHPUT)}"
        f"{chart_svg(axis, _THROUGHPUT, label='records ended sent, failed, unknown per second')}"
        f"<h3>429s per second</h3>{_legend(_THROTTLES)}"
        f"{chart_svg(axis, _THROTTLES, label='429 answers per second')}</section>"
    )


def _coverage(summary: CampaignSummary, rows: Sequence[TimelineRow]) -> str:
    """A note when the timeline counts fewer records than the summary (a run that left none)."""
    charted = sum(row.sent + row.failed + row.unknown for row in rows)
    settled = sum(summary.counts[status] for status in (OutcomeStatus.SENT, *_ATTENTION))
    if charted >= settled:
        return ""
    return (
        f'<p class="note" id="chart-coverage">The chart shows {charted:,} of the {settled:,} '
        "records that ended sent, failed or unknown: a run killed before its end, or run "
        "without the command, recorded no timeline.</p>"
    )


def _legend(series: Sequence[tuple[int, str, str]]) -> str:
    items = "".join(
        f'<span class="key"><svg class="swatch" viewBox="0 0 14 4" width="14" height="4">'
        f'<rect width="14" height="4" fill="{colour}"/></svg>{escape(name)}</span>'
        for _, name, colour in series
    )
    return f'<p class="legend">{items}</p>'


def _errors_section(summary: CampaignSummary) -> str:
    parts = ['<section id="errors"><h2>Top errors</h2>']
    errors = summary.top_errors(10)
    if errors:
        parts.append(_error_table(errors, "top-errors"))
    else:
        parts.append('<p class="none">No record ended failed or unknown.</p>')
    rejections = summary.top_errors(5, statuses=(OutcomeStatus.REJECTED,))
    if rejections:
        parts.append("<h3>Top reasons for rejected records</h3>")
        parts.append(_error_table(rejections, "top-rejections"))
    parts.append("</section>")
    return "".join(parts)


def _error_table(errors: Sequence[ErrorCount], table_id: str) -> str:
    head = "<tr><th>records</th><th>status</th><th>error</th><th>HTTP</th><th>message</th></tr>"
    rows = "".join(
        f"<tr><td class='num'>{error.records:,}</td><td>{escape(error.status)}</td>"
        f"<td>{escape(error.kind)}</td><td>{_text(error.http_status)}</td>"
        f"<td>{escape(mask_phones_in(error.message))}</td></tr>"
        for error in errors
    )
    return f'<table class="list" id="{table_id}"><thead>{head}</thead><tbody>{rows}</tbody></table>'


def _attention_section(page: ReportPage) -> str:
    attention = page.attention
    records = attention.records()
    if not attention.total:
        return (
            '<section id="attention-section"><h2>Records that need attention</h2>'
            '<p class="none">None: no record ended failed or unknown.</p></section>'
        )
    omitted = ""
    if attention.omitted:
        omitted = (
            f'<p class="note" id="omitted">The table shows the first {len(records):,} by '
            f"line; {attention.omitted:,} more are left out (the full list: see above).</p>"
        )
    head = (
        "<tr><th>line</th><th>status</th><th>recipient</th><th>attempts</th>"
        "<th>error</th><th>HTTP</th><th>message</th><th>trace id</th></tr>"
    )
    rows = "\n".join(_attention_row(outcome) for outcome in records)
    return (
        '<section id="attention-section"><h2>Records that need attention</h2>'
        f"<p>{attention.total:,} record(s) ended failed (certainly not created) or unknown "
        f"(may have been created). Every one of them: {escape(page.full_list)}.</p>{omitted}"
        '<p class="search"><label for="q">Search</label> <input id="q" type="search" '
        'placeholder="line, status, error, message..." autocomplete="off"> '
        f'<span id="shown">{len(records):,}</span> of {len(records):,} shown</p>'
        f'<table class="list" id="attention"><thead>{head}</thead>\n<tbody>\n{rows}\n'
        "</tbody></table></section>"
    )


def _attention_row(outcome: Outcome) -> str:
    error = outcome.error
    if outcome.recipient is not None:
        who = mask_phone(outcome.recipient)
    elif outcome.contact_id is not None:
        who = f"contact {outcome.contact_id}"
    else:
        who = ""
    cells = (
        str(outcome.line),
        outcome.status.value,
        who,
        str(outcome.attempts),
        error.kind if error else "",
        _text(error.status if error else None),
        mask_phones_in(error.message) if error else "",
        error.trace_id or "" if error else "",
    )
    tds = "".join(f"<td>{escape(cell)}</td>" for cell in cells)
    return f'<tr class="{outcome.status.value}" data-line="{outcome.line}">{tds}</tr>'


def _text(value: object) -> str:
    return "" if value is None else escape(str(value))


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


# -- writing it -----------------------------------------------------------------------


def check_html_path(path: str, guarded: Iterable[tuple[str, str]] = ()) -> None:
    """Refuse (``ValueError``) a path that is one of ``guarded`` ((what, path) pairs: the
    input, the journal, the report), or an existing file that is not such a report: an
    earlier HTML report is replaced, anything else is left alone."""
    from ._campaign import _same_file

    for what, other in guarded:
        if _same_file(path, other):
            raise ValueError(f"the HTML report path {path!r} is {what} ({other!r})")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ValueError(f"{path}: its folder does not exist or cannot be written to")
    if not replaceable(path) or not os.path.exists(path):
        return
    try:
        with open(path, "rb") as existing:
            start = existing.read(2048)
    except OSError:
        return  # writing it fails with the reason
    if start and _GENERATOR.encode() not in start:
        raise ValueError(
            f"{path} exists and is not an HTML campaign report: it is not replaced (remove "
            "it, or give another path)"
        )


def write_report_html(path: str, document: str) -> None:
    """Write the page whole (``_files.write_whole``): a reader never sees half of it."""
    write_whole(path, document.encode("utf-8"))


_STYLE: Final = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d0d7de;--bg:#fff;--sent:#1a7f37;--failed:#cf222e;
--unknown:#bf8700;--rejected:#6e7781;--duplicate:#0969da}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
main{max-width:1100px;margin:0 auto;padding:16px 20px 40px}
h1{font-size:24px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;
border-bottom:1px solid var(--line);padding-bottom:4px}h3{font-size:14px;margin:14px 0 4px}
.source{font-weight:600;margin:0}.meta,.hint,.tick{color:var(--muted)}.meta{margin:2px 0}
.note{background:#fff8c5;border:1px solid #d4a72c66;padding:6px 10px;border-radius:6px}
.unavailable{color:var(--muted);font-style:italic}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid var(--line);border-left:5px solid var(--rejected);border-radius:6px;
padding:8px 12px;flex:1 1 120px;display:flex;flex-direction:column}
.card .n{font-size:22px;font-weight:700}.card .what{font-weight:600}
.card .share{color:var(--muted)}.card .hint{font-size:12px;max-width:160px}
.card.total{border-left-color:var(--fg)}.card.sent{border-left-color:var(--sent)}
.card.failed{border-left-color:var(--failed)}.card.unknown{border-left-color:var(--unknown)}
.card.duplicate{border-left-color:var(--duplicate)}
table{border-collapse:collapse}th,td{text-align:left;padding:4px 8px;vertical-align:top}
.facts th{font-weight:600;color:var(--muted)}
.list{width:100%}.list thead th{border-bottom:2px solid var(--line);position:sticky;top:0;
background:var(--bg)}.list td{border-bottom:1px solid var(--line);overflow-wrap:break-word}
.list td.num{text-align:right}
tr.failed td:nth-child(2){color:var(--failed);font-weight:600}
tr.unknown td:nth-child(2){color:var(--unknown);font-weight:600}
.chart{width:100%;height:auto;max-width:760px;display:block}.tick{font-size:11px;fill:#59636e}
.legend{margin:0}.key{margin-right:14px}.swatch{vertical-align:middle;margin-right:5px}
.search input{font:inherit;padding:4px 8px;width:min(420px,70%);border:1px solid var(--line);
border-radius:6px}
"""

# Filters the attention table as the search box is typed in; ``#q=text`` in the address
# fills the box (a filtered view can be shared, and tested without typing).
_SCRIPT: Final = """
(function () {
  var box = document.getElementById("q");
  if (!box) { return; }
  var rows = document.querySelectorAll("#attention tbody tr");
  var shown = document.getElementById("shown");
  function apply() {
    var words = box.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var count = 0;
    for (var i = 0; i < rows.length; i++) {
      var text = rows[i].textContent.toLowerCase();
      var hit = words.every(function (word) { return text.indexOf(word) >= 0; });
      rows[i].hidden = !hit;
      if (hit) { count++; }
    }
    shown.textContent = count.toLocaleString("en-US");
  }
  var hash = /^#q=(.*)$/.exec(location.hash);
  if (hash) {
    try { box.value = decodeURIComponent(hash[1]); } catch (e) { box.value = hash[1]; }
  }
  box.addEventListener("input", function () {
    apply();
    try {
      history.replaceState(null, "", box.value ? "#q=" + encodeURIComponent(box.value) : "#");
    } catch (e) { /* a file: URL may refuse it; the filter works all the same */ }
  });
  apply();
})();
"""
