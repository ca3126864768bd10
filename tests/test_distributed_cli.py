"""``proactive-async status --wait``: progress while a distributed campaign runs, then the
final status; and the snapshots it shows (rates, ETA, a stall) without a database."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from proactive_async import AsyncClient, CampaignOptions, ProactiveConversationRequest
from proactive_async._progress import PlainProgress, RateMeter, RichProgress, choose_display
from proactive_async._records import OutcomeStatus
from proactive_async.cli.distributed import _STALLED_AFTER, _StatusWatch
from proactive_async.distributed import CampaignStatus, SliceRunner, plan_campaign
from proactive_async.simulator import Simulator, SimulatorConfig

TOKEN = "wait-token-" + "y" * 16
TEMPLATE = ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3)


def status_of(
    counts: dict[str, int], *, done: int = 0, finished: bool = False, owners: int = 0
) -> CampaignStatus:
    return CampaignStatus(
        campaign="c1", counts=counts, slices=10, slices_done=done, cancelled=False,
        finished=finished, owners=owners,
    )  # fmt: skip


def test_snapshots_count_settled_records_and_follow_the_rate() -> None:
    watch = _StatusWatch(RateMeter(10.0), RateMeter(10.0))
    first = watch.snapshot(status_of({"planned": 100}), now=0.0)
    assert (first.records, first.total, first.eta) == (0, 100, None)
    later = watch.snapshot(
        status_of({"planned": 60, "in_flight": 10, "sent": 28, "unknown": 2}), 2.0
    )
    assert (later.records, later.total) == (30, 100)
    assert later.counts[OutcomeStatus.SENT] == 28 and later.counts[OutcomeStatus.UNKNOWN] == 2
    assert later.targets_per_second == pytest.approx(14.0)  # sent records over 2 s
    assert later.eta == pytest.approx(70 / 15)  # 70 records left at 15 records/s
    assert later.problem is None
    end = watch.snapshot(status_of({"sent": 98, "unknown": 2}, done=10, finished=True), 4.0)
    assert (end.records, end.eta) == (100, None)


def test_a_campaign_that_stops_moving_says_so_and_the_warning_goes_when_it_moves() -> None:
    watch = _StatusWatch(RateMeter(10.0), RateMeter(10.0))
    running = status_of({"planned": 50, "sent": 50}, done=5)
    assert watch.snapshot(running, 0.0).problem is None
    assert watch.snapshot(running, _STALLED_AFTER - 1).problem is None
    stalled = watch.snapshot(running, _STALLED_AFTER + 1).problem
    assert stalled is not None and "workers running" in stalled and "5/10" in stalled
    held = watch.snapshot(status_of({"planned": 50, "sent": 50}, done=5, owners=2), 40.0)
    assert held.problem is not None and "2 worker process(es) hold slices" in held.problem
    moved = status_of({"planned": 49, "sent": 51}, done=5)
    assert watch.snapshot(moved, _STALLED_AFTER + 12).problem is None


def test_an_aborted_campaign_says_why_at_once_and_the_line_names_the_state() -> None:
    from proactive_async.cli.distributed import describe

    aborted = CampaignStatus(
        campaign="c1", counts={"planned": 5}, slices=1, slices_done=0, cancelled=False,
        finished=False, aborted="unauthorized: 401",
    )  # fmt: skip
    watch = _StatusWatch(RateMeter(10.0), RateMeter(10.0))
    assert watch.snapshot(aborted, 0.0).problem == "aborted: unauthorized: 401"
    assert describe(aborted).startswith("campaign c1: aborted (unauthorized: 401); slices 0/1")
    assert "waiting for workers" in describe(status_of({"planned": 5}))
    assert "running on 3 worker processes" in describe(status_of({"planned": 5}, owners=3))


def test_the_bar_is_for_a_terminal_and_carries_the_campaign_id() -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True, width=100)
    bar = choose_display(True, 100, terminal, "c-2026[bold]")
    assert isinstance(bar, RichProgress)
    bar.show(_StatusWatch(RateMeter(), RateMeter()).snapshot(status_of({"planned": 100}), 0.0))
    bar.close()
    assert "c-2026[bold]" in terminal.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(choose_display(False, 100, terminal), PlainProgress)
    piped = Console(file=io.StringIO(), force_terminal=False)
    assert isinstance(choose_display(True, 100, piped), PlainProgress)


@pytest.fixture
def dsn(postgres_server: Any) -> str:
    return str(postgres_server.create_database(f"wait_{uuid.uuid4().hex[:10]}"))


async def test_status_wait_shows_progress_until_every_record_is_settled(
    dsn: str, tmp_path: Path
) -> None:
    targets = tmp_path / "t.csv"
    targets.write_text("phone\n" + "".join(f"+55119{i:08d}\n" for i in range(40)))
    plan = await plan_campaign(
        f"{dsn}?campaign=w1", template=TEMPLATE, targets=targets,
        options=CampaignOptions(chunk_size=4), job_size=4,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROACTIVE_")}
    waiting = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proactive_async.cli", "status", "--wait", "--campaign", "w1",
        "--journal", dsn,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await asyncio.sleep(1.5)  # it has shown the campaign not started
        assert waiting.returncode is None
        async with (
            Simulator(SimulatorConfig(token=TOKEN)) as sim,
            AsyncClient(sim.url, TOKEN) as client,
        ):
            runner = SliceRunner(dsn, client)
            for number in plan.pending_slices:
                assert (await runner.run("w1", number)).state == "done"
                await asyncio.sleep(0.25)  # a campaign that takes a few polls
            await runner.aclose()
        started = time.monotonic()
        out, err = (part.decode() for part in await asyncio.wait_for(waiting.communicate(), 30))
    finally:
        if waiting.returncode is None:
            waiting.kill()
            await waiting.wait()
    assert waiting.returncode == 0, err
    assert time.monotonic() - started < STATUS_POLL_AND_SLACK
    assert "campaign w1: finished; slices 10/10 done; sent 40" in out
    lines = err.splitlines()
    assert lines[0].startswith("0/40 records")  # plain lines: stderr is no terminal
    assert lines[-1].startswith("40/40 records") and "sent=40" in lines[-1]
    assert any(line.startswith(("4/", "8/", "12/", "16/", "20/")) for line in lines)


STATUS_POLL_AND_SLACK = 5.0
