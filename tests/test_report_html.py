"""The HTML campaign report (issue 20 §5): one self-contained page with the outcome counts,
sends and 429s over time, the top errors and the records that need attention, searchable.

The renderer is tested on its own (escaping, masking, the cap, the chart's axis); the
commands through ``main()`` against the real simulator (``campaign --report-html``,
``report --journal PATH --html``, a journal without a timeline, the refusals, a distributed
campaign in PostgreSQL); and the page in Debian's headless Chromium, which loads the file,
runs its script, is typed into through the DevTools protocol, and takes a screenshot kept
under ``test-artifacts/report-html/`` (git-ignored). Chromium is installed by
``scripts/ensure-servers.sh`` when missing (``make test`` runs it; so does the fixture).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import msgspec
import pytest

from proactive_async import AsyncClient, Campaign, CampaignOptions, ProactiveConversationRequest
from proactive_async._records import Outcome, OutcomeError, OutcomeStatus
from proactive_async._report_chart import axis_of
from proactive_async._report_html import (
    AttentionList,
    OutcomeTally,
    ReportPage,
    RunRecorder,
    check_html_path,
    render_report,
    write_report_html,
)
from proactive_async._timeline import Timeline, TimelineRow
from proactive_async.cli import main
from proactive_async.settings import VARIABLES
from proactive_async.simulator import Faults, SimulatorConfig
from proactive_async.testing import ThreadedSimulator

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "report-html"
TOKEN = "html-report-token-" + "q" * 14
TEMPLATE = ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3)
NUMBER = "+5511987654321"


def outcome(
    line: int,
    status: OutcomeStatus = OutcomeStatus.FAILED,
    *,
    recipient: str | None = NUMBER,
    message: str = "HTTP 503 from POST /api",
    kind: str = "ServiceUnavailableError",
    trace_id: str | None = None,
) -> Outcome:
    error = None
    if status is not OutcomeStatus.SENT:
        error = OutcomeError(kind=kind, message=message, status=503, trace_id=trace_id)
    return Outcome(line=line, status=status, recipient=recipient, error=error, attempts=1)


def page_of(outcomes: list[Outcome], **fields: Any) -> str:
    tally = OutcomeTally(cap=fields.pop("cap", 5000))
    for item in outcomes:
        tally.add(item)
    secrets = fields.pop("secrets", ())
    fields.setdefault("source", "journal test.db")
    fields.setdefault("full_list", "the report r.jsonl")
    page = ReportPage(summary=tally.summary, attention=tally.attention, **fields)
    return render_report(page, secrets=secrets)


class _Page(HTMLParser):
    """What a page holds: its elements' attributes, texts by id, table rows, resources."""

    def __init__(self, document: str) -> None:
        super().__init__()
        self.document = document
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.texts: dict[str, str] = {}
        self._open: list[str | None] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.feed(document)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append((tag, found))
        self._in_script = tag == "script"
        if tag not in ("meta", "input", "br", "rect", "line", "polyline"):
            self._open.append(found.get("id"))
        if found.get("id"):
            self.texts[str(found["id"])] = ""

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False
        if tag not in ("meta", "input", "br", "rect", "line", "polyline") and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)
        for name in self._open:
            if name:
                self.texts[name] += data

    def rows(self, hidden: bool | None = None) -> list[dict[str, str | None]]:
        return [
            attrs
            for tag, attrs in self.tags
            if tag == "tr"
            and attrs.get("class") in ("failed", "unknown")
            and (hidden is None or ("hidden" in attrs) == hidden)
        ]

    def resources(self) -> list[str]:
        """Every address the page would load or link to."""
        return [
            str(value)
            for _, attrs in self.tags
            for name, value in attrs.items()
            if name in ("src", "href", "xlink:href", "action", "srcset", "poster", "data")
        ]


def count_of(page: _Page, status: str) -> int:
    found = re.search(rf'id="count-{status}"><span class="n">([\d,]+)<', page.document)
    assert found is not None, status
    return int(found.group(1).replace(",", ""))


# -- the renderer ---------------------------------------------------------------------


def test_every_string_from_a_record_is_escaped() -> None:
    hostile = outcome(
        1,
        recipient="<script>alert('r')</script>",
        message='<img src=x onerror="alert(1)"> & </td></tr><script>alert(2)</script>',
        kind="<b>Kind</b>",
        trace_id='"><script>alert(3)</script>',
    )
    document = page_of([hostile, outcome(2, OutcomeStatus.UNKNOWN)])
    page = _Page(document)
    assert [tag for tag, _ in page.tags].count("script") == 1  # the page's own, nothing else
    assert "<img" not in document and "<b>" not in document
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in document
    assert len(page.rows()) == 2  # the hostile </tr> did not end the table early
    assert page.texts["top-errors"].count("<img src=x") == 1  # shown as text


def test_phone_numbers_are_masked_in_the_table_and_in_messages() -> None:
    document = page_of([outcome(1, message=f"number {NUMBER} refused")])
    assert NUMBER not in document and NUMBER[1:] not in document
    assert "+551********21" in document
    assert "number +551********21 refused" in document


def test_a_secret_in_the_page_is_redacted() -> None:
    document = page_of([outcome(1, message=f"echoed Bearer {TOKEN}")], secrets=[TOKEN])
    assert TOKEN not in document and "[redacted]" in document


def test_the_page_loads_nothing_and_its_policy_allows_only_its_own_style_and_script() -> None:
    rows = [TimelineRow(100, 5, 1, 0, 2), TimelineRow(101, 7, 0, 1, 0)]
    document = page_of([outcome(1), outcome(2, OutcomeStatus.SENT)], timeline=rows)
    page = _Page(document)
    assert page.resources() == []
    assert not re.search(r"url\(|@import|https?://|//[a-z]", document, re.IGNORECASE)
    policy = next(
        attrs["content"] for tag, attrs in page.tags if attrs.get("http-equiv") is not None
    )
    assert policy is not None and policy.startswith("default-src 'none';")
    digest = hashlib.sha256("".join(page.scripts).encode()).digest()
    assert f"'sha256-{base64.b64encode(digest).decode()}'" in policy


def test_the_attention_table_keeps_the_first_records_by_line_and_says_how_many_are_left() -> None:
    attention = AttentionList(cap=3)
    for line in (9, 4, 7, 1, 8, 2, 5):
        attention.add(outcome(line))
    attention.add(outcome(3, OutcomeStatus.SENT))  # needs no attention
    attention.add(outcome(4, OutcomeStatus.UNKNOWN))  # line 4 again: the latest kept
    assert [o.line for o in attention.records()] == [1, 2, 4]
    assert attention.records()[-1].status is OutcomeStatus.UNKNOWN
    assert (attention.total, attention.omitted) == (7, 4)
    page = _Page(page_of([outcome(line) for line in range(1, 11)], cap=3))
    assert [row["class"] for row in page.rows()] == ["failed"] * 3
    assert "7 more are left out" in page.texts["omitted"]


def test_without_a_timeline_the_page_says_why_there_is_no_chart() -> None:
    page = _Page(page_of([outcome(1)], no_timeline="this journal has no timeline"))
    assert "The chart is unavailable: this journal has no timeline." in page.texts["no-chart"]
    assert not [tag for tag, _ in page.tags if tag == "svg" and _.get("class") == "chart"]


def test_the_chart_draws_each_series_and_says_what_it_does_not_cover() -> None:
    rows = [TimelineRow(100 + s, sent=10 + s, failed=s % 2, throttled=3) for s in range(20)]
    page = _Page(
        page_of(
            [outcome(1), *[outcome(i, OutcomeStatus.SENT) for i in range(2, 500)]], timeline=rows
        )
    )
    lines = {attrs["data-series"]: attrs["points"] for tag, attrs in page.tags if tag == "polyline"}
    assert set(lines) == {"sent", "failed", "unknown", "429s"}
    assert all(len(str(points).split()) == 20 for points in lines.values())
    # 400 records charted of the 499 that ended sent or failed: the page says so.
    assert "shows 400 of the 499" in page.texts["chart-coverage"]


def test_the_axis_cuts_long_gaps_and_sums_long_runs_into_buckets() -> None:
    resumed = [TimelineRow(1000, 5), TimelineRow(1001, 5), TimelineRow(90_000, 7)]
    axis = axis_of(resumed)
    assert axis.seconds == 3 and [point[0] for point in axis.sums] == [5, 5, 7]
    assert axis.breaks == ((1.5, 88_999),)
    long_run = [TimelineRow(second, sent=2) for second in range(10_000)]
    axis = axis_of(long_run)
    assert axis.bucket == 25 and len(axis.sums) == 400
    assert axis.rates(0) == [2.0] * 400  # a rate per second, whatever the bucket


def test_the_recorder_leaves_a_resumes_replayed_outcomes_out_of_the_timeline() -> None:
    clock = iter([10.2, 10.7, 11.1, 11.5])
    recorder = RunRecorder(Timeline(clock=lambda: next(clock)))
    recorder.on_replayed(outcome(1, OutcomeStatus.UNKNOWN))
    for line, status in ((2, OutcomeStatus.SENT), (3, OutcomeStatus.FAILED)):
        recorder.on_outcome(outcome(line, status))
    recorder.on_throttle(object())
    recorder.on_throttle(object())
    assert recorder.timeline.rows() == [
        TimelineRow(10, sent=1, failed=1),
        TimelineRow(11, throttled=2),
    ]
    assert [o.line for o in recorder.attention.records()] == [1, 3]  # replayed ones too


def test_an_earlier_report_is_replaced_and_any_other_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.html"
    path.write_text("<html>someone's own page</html>")
    with pytest.raises(ValueError, match="is not an HTML campaign report"):
        check_html_path(str(path))
    path.unlink()
    write_report_html(str(path), page_of([outcome(1)]))
    check_html_path(str(path))  # our own report: replaced
    with pytest.raises(ValueError, match="is the journal"):
        check_html_path(str(path), [("the journal", str(path))])
    with pytest.raises(ValueError, match="folder does not exist"):
        check_html_path(str(tmp_path / "missing" / "out.html"))
    assert [p.name for p in tmp_path.iterdir()] == ["out.html"]  # no temporary file left


# -- through the commands -------------------------------------------------------------


def _phones(n: int) -> list[str]:
    return [f"+55119{70000000 + i:08d}" for i in range(n)]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A campaign of 300 records through ``main()`` against a simulator that answers some
    calls 429, 503 and 500 (ended failed with one attempt, unknown): its page and journal."""
    folder = tmp_path_factory.mktemp("html-run")
    targets = folder / "recipients.csv"
    targets.write_text("phone\n" + "".join(f"{p}\n" for p in _phones(300)) + "12345\n")
    faults = Faults(rate_429=0.06, rate_503=0.06, rate_500=0.06, seed=11, retry_after=0.05)
    config = SimulatorConfig(token=TOKEN, retry_after_style="fractional", faults=faults)
    with pytest.MonkeyPatch.context() as env, ThreadedSimulator(config) as sim:
        for variable in VARIABLES.values():
            env.delenv(variable, raising=False)
        env.setenv("PROACTIVE_TOKEN", TOKEN)
        code = main(
            ["campaign", str(targets), "--channel-id", "1", "--bot-id", "2",
             "--template-id", "3", "--base-url", sim.url, "--no-progress",
             "--journal", str(folder / "campaign.db"), "--report", str(folder / "r.jsonl"),
             "--report-html", str(folder / "run.html"), "--max-attempts", "1",
             "--chunk-size", "5"]
        )  # fmt: skip
    decoder = msgspec.json.Decoder(Outcome)
    outcomes = [decoder.decode(line) for line in (folder / "r.jsonl").read_bytes().splitlines()]
    yield SimpleNamespace(
        folder=folder,
        code=code,
        html=folder / "run.html",
        journal=folder / "campaign.db",
        counts=Counter(o.status.value for o in outcomes),
        attention=sorted(o.line for o in outcomes if o.status.value in ("failed", "unknown")),
    )


def test_campaign_report_html_shows_what_the_report_holds(run: SimpleNamespace) -> None:
    assert run.code == 3  # some records ended unknown (500 after processing)
    assert run.counts["failed"] and run.counts["unknown"] and run.counts["rejected"] == 1
    document = run.html.read_text()
    page = _Page(document)
    for status in ("sent", "failed", "unknown", "rejected", "duplicate"):
        assert count_of(page, status) == run.counts[status], status
    assert [int(str(row["data-line"])) for row in page.rows()] == run.attention
    series = {a["data-series"]: a["points"] for tag, a in page.tags if tag == "polyline"}
    assert set(series) == {"sent", "failed", "unknown", "429s"}
    assert "429s" in page.texts["figures"]
    assert TOKEN not in document and "+55119" not in document  # numbers masked
    assert page.resources() == []


def test_report_from_the_journal_shows_the_same_page_and_the_runs_timeline(
    run: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run.folder / "from-journal.html"
    code = main(["report", "--journal", str(run.journal), "--html", str(out)])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert f"HTML report written to {out} (301 records, {len(run.attention)} need" in err
    page = _Page(out.read_text())
    for status in ("sent", "failed", "unknown", "rejected"):
        assert count_of(page, status) == run.counts[status], status
    assert [int(str(row["data-line"])) for row in page.rows()] == run.attention
    assert "no-chart" not in page.texts and "chart-coverage" not in page.texts
    leftovers = [name for name in os.listdir(run.folder) if name.endswith(("-wal", "-shm", ".tmp"))]
    assert leftovers == []  # the journal read leaves no side file, the page no temporary


def test_a_journal_without_a_timeline_still_reports_and_says_the_chart_is_unavailable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The library's Campaign (as a journal of an earlier version) records no timeline."""
    targets = tmp_path / "t.csv"
    targets.write_text("phone\n" + "".join(f"{p}\n" for p in _phones(6)))
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:

        async def go() -> None:
            async with AsyncClient(sim.url, TOKEN) as client:
                await Campaign(
                    client, template=TEMPLATE, targets=targets, journal=tmp_path / "j.db"
                ).run()

        asyncio.run(go())
    out = tmp_path / "old.html"
    code = main(["report", "--journal", str(tmp_path / "j.db"), "--html", str(out)])
    assert code == 0, capsys.readouterr().err
    page = _Page(out.read_text())
    assert count_of(page, "sent") == 6
    assert "The chart is unavailable: this journal has no timeline" in page.texts["no-chart"]


def test_report_refuses_to_write_over_the_journal_or_a_file_that_is_no_report(
    run: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = str(run.journal)
    before = run.journal.read_bytes()
    mine = tmp_path / "notes.html"
    mine.write_text("my notes")
    for argv, why in (
        (["--html", journal], "is the journal"),
        (["--out", journal], "is the journal"),
        (["--html", str(mine)], "is not an HTML campaign report"),
        ([], "give --out PATH"),
        (["--html", str(tmp_path / "x.html"), "--campaign", "c1"], "--campaign is for"),
    ):
        code = main(["report", "--journal", journal, *argv])
        _, err = capsys.readouterr()
        assert code == 2 and why in err, (argv, err)
    assert run.journal.read_bytes() == before and mine.read_text() == "my notes"


def test_campaign_refuses_a_report_html_path_before_sending_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_proactive_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("PROACTIVE_TOKEN", TOKEN)
    targets = tmp_path / "t.csv"
    targets.write_text("phone\n" + "".join(f"{p}\n" for p in _phones(3)))
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        code = main(
            ["campaign", str(targets), "--channel-id", "1", "--bot-id", "2",
             "--template-id", "3", "--base-url", sim.url, "--no-progress",
             "--report-html", str(targets)]
        )  # fmt: skip
        assert sim.audit.total_processed == 0
    assert code == 2 and "is the input" in capsys.readouterr().err
    assert targets.read_text().startswith("phone\n")


def test_a_distributed_campaigns_html_report_from_postgresql(
    postgres_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from proactive_async.distributed import SliceRunner, cancel_campaign, plan_campaign

    name = f"html_{uuid.uuid4().hex[:10]}"
    dsn = str(postgres_server.create_database(name))
    password = "pg-password-" + uuid.uuid4().hex  # trust auth: sent, never needed
    with_password = dsn.replace("postgres@", f"postgres:{password}@")
    targets = tmp_path / "t.csv"
    targets.write_text("phone\n" + "".join(f"{p}\n" for p in _phones(12)))

    async def prepare() -> None:
        plan = await plan_campaign(
            f"{dsn}?campaign=d1", template=TEMPLATE, targets=targets,
            options=CampaignOptions(chunk_size=4), job_size=4,
        )  # fmt: skip
        with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
            async with AsyncClient(sim.url, TOKEN) as client:
                runner = SliceRunner(dsn, client)
                await runner.run("d1", plan.pending_slices[0])
                await runner.aclose()
        await cancel_campaign(f"{dsn}?campaign=d1")

    asyncio.run(prepare())
    out = tmp_path / "d.html"
    code = main(["report", "--journal", with_password, "--campaign", "d1", "--html", str(out)])
    _, err = capsys.readouterr()
    assert code == 0, err
    document = out.read_text()
    page = _Page(document)
    assert (count_of(page, "sent"), count_of(page, "failed")) == (4, 8)
    assert len(page.rows()) == 8 and "cancelled" in page.texts["top-errors"]
    assert "workers record no timeline" in page.texts["no-chart"]
    assert password not in document and password not in err
    assert "postgres:***@" in document


# -- in a real browser ----------------------------------------------------------------

_BROWSER_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--mute-audio",
)  # fmt: skip


BASH = shutil.which("bash") or "/bin/bash"


def find_chromium() -> str | None:
    """A Chromium under any of its names (chromium, chromium-browser, google-chrome, ...):
    scripts/_install.sh's find_chromium, the one list of them."""
    script = '. "$0" && find_chromium'
    done = subprocess.run(
        [BASH, "-c", script, str(ROOT / "scripts" / "_install.sh")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout.strip() or None


@pytest.mark.parametrize("name", ["chromium-browser", "google-chrome-stable", "headless_shell"])
def test_chromium_is_found_under_each_of_its_names(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    browser = tmp_path / name
    browser.write_text("#!/bin/sh\n")
    browser.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_chromium() == str(browser)


@pytest.fixture(scope="session")
def chromium() -> str:
    """A Chromium on PATH; Debian's, installed by scripts/ensure-servers.sh, when missing."""
    found = find_chromium()
    if found is None:
        subprocess.run(["bash", str(ROOT / "scripts" / "ensure-servers.sh")], timeout=1200)
        found = find_chromium()
    if found is None:
        pytest.fail("Chromium is missing and scripts/ensure-servers.sh could not install it")
    return found


def browse(chromium: str, profile: Path, url: str, *flags: str) -> str:
    done = subprocess.run(
        [chromium, *_BROWSER_FLAGS, f"--user-data-dir={profile}", *flags, url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_chromium_shows_the_counts_the_chart_and_the_table_and_filters_by_the_address(
    chromium: str, run: SimpleNamespace, tmp_path: Path
) -> None:
    url = run.html.as_uri()
    page = _Page(browse(chromium, tmp_path / "profile", url, "--dump-dom"))
    assert count_of(page, "sent") == run.counts["sent"]
    assert count_of(page, "unknown") == run.counts["unknown"]
    points = [a["points"] for tag, a in page.tags if tag == "polyline"]
    assert len(points) == 4 and all(len(str(p).split()) >= 2 for p in points)
    assert len(page.rows(hidden=False)) == len(run.attention)  # the script ran: none hidden
    # "#q=" fills the search box as the page loads: only the unknown records stay.
    filtered = _Page(browse(chromium, tmp_path / "profile", url + "#q=unknown", "--dump-dom"))
    shown = filtered.rows(hidden=False)
    assert {row["class"] for row in shown} == {"unknown"}
    assert len(shown) == run.counts["unknown"]
    assert len(filtered.rows(hidden=True)) == run.counts["failed"]
    assert filtered.texts["shown"] == str(run.counts["unknown"])


def test_chromium_takes_a_screenshot_kept_by_the_test_run(
    chromium: str, run: SimpleNamespace, tmp_path: Path
) -> None:
    shot = tmp_path / "report.png"
    browse(
        chromium, tmp_path / "profile", run.html.as_uri(),
        f"--screenshot={shot}", "--window-size=1200,2400",
    )  # fmt: skip
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1200, 2400) and len(data) > 20_000  # a page, not a blank
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "campaign-report.png")
    shutil.copyfile(run.html, ARTIFACTS / "campaign-report.html")


class _DevTools:
    """A page of headless Chromium driven through the DevTools protocol (a websocket)."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._id = 0
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        await self._socket.send_json({"id": self._id, "method": method, "params": params})
        async for message in self._socket:
            data = json.loads(message.data)
            if data.get("id") == self._id:
                assert "error" not in data, data
                result: dict[str, Any] = data.get("result", {})
                return result
            self.events.append(data)
        raise AssertionError("the DevTools connection closed")

    async def evaluate(self, expression: str) -> Any:
        answer = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return answer["result"].get("value")


@pytest.fixture
async def devtools(chromium: str, tmp_path: Path) -> AsyncIterator[_DevTools]:
    process = await asyncio.create_subprocess_exec(
        chromium, *_BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
        "--remote-debugging-port=0", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        address = await asyncio.wait_for(_devtools_address(process.stderr), 60)
        port = int(address.split(":")[2].split("/")[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as answer:
                targets = await answer.json()
            page = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield _DevTools(ws)
    finally:
        process.terminate()
        await process.wait()


async def _devtools_address(stderr: asyncio.StreamReader) -> str:
    while line := await stderr.readline():
        found = re.search(rb"DevTools listening on (ws://\S+)", line)
        if found:
            return found.group(1).decode()
    raise AssertionError("Chromium ended without a DevTools address")


async def test_typing_in_the_search_box_filters_the_table_and_nothing_is_fetched(
    devtools: _DevTools, run: SimpleNamespace
) -> None:
    await devtools.call("Network.enable")
    await devtools.call("Page.navigate", url=run.html.as_uri())
    for _ in range(200):
        if await devtools.evaluate("document.readyState") == "complete":
            break
        await asyncio.sleep(0.05)
    visible = "document.querySelectorAll('#attention tbody tr:not([hidden])').length"
    assert await devtools.evaluate(visible) == len(run.attention)
    line = run.attention[0]
    await devtools.evaluate("document.getElementById('q').focus()")
    await devtools.call("Input.insertText", text=f"ServiceUnavailable {line}")
    shown = await devtools.evaluate(
        "[...document.querySelectorAll('#attention tbody tr:not([hidden])')]"
        ".map(r => r.cells[0].textContent)"
    )
    assert str(line) in shown and shown and len(shown) < len(run.attention)
    assert await devtools.evaluate("document.getElementById('shown').textContent") == str(
        len(shown)
    )
    await devtools.evaluate("document.getElementById('q').value = ''")
    await devtools.call("Input.insertText", text="no record says this")
    assert await devtools.evaluate(visible) == 0
    fetched = [
        event["params"]["request"]["url"]
        for event in devtools.events
        if event.get("method") == "Network.requestWillBeSent"
    ]
    assert fetched and all(url.startswith("file://") for url in fetched), fetched


def test_a_run_of_two_seconds_has_no_time_label_twice() -> None:
    from proactive_async._report_chart import chart_svg

    svg = chart_svg(
        axis_of([TimelineRow(5, 3), TimelineRow(6, 4)]), ((0, "sent", "#000"),), label="x"
    )
    times = re.findall(r'y="202" text-anchor="\w+" class="tick">([^<]+)<', svg)
    assert times == ["0 s", "1 s"]


def test_a_resume_adds_its_own_seconds_and_not_the_outcomes_it_replays(
    tmp_path: Path, no_proactive_env: None, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from proactive_async.journal._sqlite_report import JournalReader

    monkeypatch.setenv("PROACTIVE_TOKEN", TOKEN)
    targets = tmp_path / "t.csv"
    targets.write_text("phone\n" + "".join(f"{p}\n" for p in _phones(20)))
    config = SimulatorConfig(token=TOKEN, faults=Faults(rate_500=0.4, seed=5))
    with ThreadedSimulator(config) as sim:
        for name in ("first.html", "second.html"):  # the second run replays every record
            main(
                ["campaign", str(targets), "--channel-id", "1", "--bot-id", "2",
                 "--template-id", "3", "--base-url", sim.url, "--no-progress",
                 "--chunk-size", "2", "--journal", str(tmp_path / "j.db"),
                 "--report-html", str(tmp_path / name)]
            )  # fmt: skip
        assert sim.audit.duplicates() == {}
    capsys.readouterr()
    with JournalReader(str(tmp_path / "j.db")) as reader:
        rows = reader.timeline()
    assert rows is not None and sum(r.sent + r.failed + r.unknown for r in rows) == 20
    second = _Page((tmp_path / "second.html").read_text())
    assert count_of(second, "sent") + count_of(second, "unknown") == 20
    assert count_of(second, "unknown") == len(second.rows()) > 0
    assert "chart-coverage" not in second.texts  # the first run's seconds chart them all
