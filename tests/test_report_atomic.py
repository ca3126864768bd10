"""A report is put in place whole or not at all: written beside its path, renamed over it
once complete; ``report --out`` follows the suffix, ``-`` is standard output, and a
campaign it does not hold is an error that writes nothing (issue 18)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from proactive_async import AsyncClient, CampaignOptions, ProactiveConversationRequest
from proactive_async._records import Outcome, OutcomeStatus
from proactive_async._report import ReportWriter
from proactive_async.distributed import SliceRunner, cancel_campaign, plan_campaign
from proactive_async.simulator import Simulator, SimulatorConfig

TOKEN = "report-token-" + "z" * 16
TEMPLATE = ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3)
OLD = "the earlier report\n"


def outcome(line: int) -> Outcome:
    return Outcome(line=line, status=OutcomeStatus.SENT, recipient=f"+55119{line:08d}")


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_the_earlier_report_stays_whole_until_the_new_one_is_closed(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(OLD)
    path.chmod(0o640)
    writer = ReportWriter(path)
    for line in range(1, 3001):  # past the 64 KiB buffer: written, but not in place yet
        writer.write(outcome(line))
    assert path.read_text() == OLD
    writer.close()
    assert len(path.read_text().splitlines()) == 3000
    assert path.stat().st_mode & 0o777 == 0o640  # the report keeps its mode
    assert leftovers(tmp_path) == []


def test_a_report_left_by_an_exception_is_dropped_and_the_earlier_one_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.csv"
    path.write_text(OLD)
    with pytest.raises(RuntimeError), ReportWriter(path) as writer:
        writer.write(outcome(1))
        raise RuntimeError("the run failed")
    assert path.read_text() == OLD
    assert leftovers(tmp_path) == []


def test_flush_for_an_exit_that_cannot_wait_puts_the_report_in_place(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    writer = ReportWriter(path)
    writer.write(outcome(2))  # held for line 1, which never comes
    writer.flush()
    assert [json.loads(line)["line"] for line in path.read_text().splitlines()] == [2]
    writer.write(outcome(3))
    writer.close()
    assert len(path.read_text().splitlines()) == 2


def test_a_symlinked_report_replaces_the_file_it_names(tmp_path: Path) -> None:
    target = tmp_path / "real.jsonl"
    target.write_text(OLD)
    link = tmp_path / "r.jsonl"
    link.symlink_to(target)
    with ReportWriter(link) as writer:
        writer.write(outcome(1))
    assert link.is_symlink()
    assert json.loads(target.read_text())["line"] == 1


def test_a_report_to_a_file_object_or_a_pipe_is_written_in_place(tmp_path: Path) -> None:
    out = io.BytesIO()
    with ReportWriter(out) as writer:
        writer.write(outcome(1))
    assert json.loads(out.getvalue())["line"] == 1
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    with ReportWriter(fifo) as writer:
        writer.write(outcome(1))
    assert json.loads(reader.communicate(timeout=10)[0])["line"] == 1
    assert fifo.exists() and leftovers(tmp_path) == []


# -- report --out, against PostgreSQL ----------------------------------------------------


@pytest.fixture
def dsn(postgres_server: Any) -> str:
    return str(postgres_server.create_database(f"report_{uuid.uuid4().hex[:10]}"))


@pytest.fixture
async def finished(dsn: str, tmp_path: Path) -> str:
    """A distributed campaign ``r1`` of 12 records: 8 sent, 4 cancelled."""
    targets = tmp_path / "t.csv"
    targets.write_text("phone\n" + "".join(f"+55119{i:08d}\n" for i in range(12)))
    plan = await plan_campaign(
        f"{dsn}?campaign=r1", template=TEMPLATE, targets=targets,
        options=CampaignOptions(chunk_size=4), job_size=4,
    )  # fmt: skip
    async with (
        Simulator(SimulatorConfig(token=TOKEN)) as sim,
        AsyncClient(sim.url, TOKEN) as client,
    ):
        runner = SliceRunner(dsn, client)
        for number in plan.pending_slices[:2]:
            assert (await runner.run("r1", number)).state == "done"
        await runner.aclose()
    await cancel_campaign(f"{dsn}?campaign=r1")
    return dsn


def report_cli(dsn: str, campaign: str, out: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROACTIVE_")}
    return subprocess.run(
        [sys.executable, "-m", "proactive_async.cli", "report", "--journal", dsn,
         "--campaign", campaign, "--out", out],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=60,
    )  # fmt: skip


async def test_report_out_csv_writes_csv_and_replaces_the_file_whole(
    finished: str, tmp_path: Path
) -> None:
    out = tmp_path / "x.csv"
    out.write_text(OLD)
    done = await asyncio.to_thread(report_cli, finished, "r1", str(out), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "12 records written to" in done.stderr
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [int(row["line"]) for row in rows] == list(range(1, 13))
    assert [row["status"] for row in rows] == ["sent"] * 8 + ["failed"] * 4
    assert rows[-1]["error_kind"] == "cancelled"
    assert leftovers(tmp_path) == []


async def test_report_out_dash_writes_jsonl_to_standard_output(
    finished: str, tmp_path: Path
) -> None:
    done = await asyncio.to_thread(report_cli, finished, "r1", "-", tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["line"] for line in lines] == list(range(1, 13))
    assert "records written to standard output" in done.stderr
    assert not (tmp_path / "-").exists()


async def test_a_misspelt_campaign_is_an_error_and_leaves_the_file_alone(
    finished: str, tmp_path: Path
) -> None:
    out = tmp_path / "r.jsonl"
    out.write_text(OLD)
    done = await asyncio.to_thread(report_cli, finished, "r2", str(out), tmp_path)
    assert done.returncode == 2
    assert "no campaign 'r2'" in done.stderr and "Traceback" not in done.stderr
    assert out.read_text() == OLD
    assert leftovers(tmp_path) == []


async def test_a_database_that_is_down_leaves_the_file_alone(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    out.write_text(OLD)
    down = "postgresql://nobody:pw-not-shown@127.0.0.1:1/none"
    done = await asyncio.to_thread(report_cli, down, "r1", str(out), tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "pw-not-shown" not in done.stderr
    assert out.read_text() == OLD


def test_campaign_report_keeps_the_earlier_report_until_the_run_ends(tmp_path: Path) -> None:
    """``campaign --report`` through the CLI: the earlier report is whole while the new run
    goes on, and replaced by the complete new one at its end."""
    import time

    from test_cli import TOKEN as CLI_TOKEN
    from test_cli import ThreadedSimulator, phones, write_csv
    from test_cli_hardening import TEMPLATE_FLAGS

    targets = write_csv(tmp_path / "t.csv", [f"{p},Ana" for p in phones(30)])
    report = tmp_path / "report.jsonl"
    report.write_text(OLD)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROACTIVE_")}
    env["PROACTIVE_TOKEN"] = CLI_TOKEN
    with ThreadedSimulator(SimulatorConfig(token=CLI_TOKEN)) as sim:
        run = subprocess.Popen(
            [sys.executable, "-m", "proactive_async.cli", "campaign", str(targets),
             *TEMPLATE_FLAGS, "--base-url", sim.url, "--no-progress", "--chunk-size", "1",
             "--rate", "15", "--report", str(report)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        )  # fmt: skip
        try:
            while sim.simulator.audit.calls < 5:
                assert run.poll() is None
                time.sleep(0.05)
            assert report.read_text() == OLD  # calls made, the earlier report untouched
        finally:
            _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert len(report.read_text().splitlines()) == 30
    assert leftovers(tmp_path) == []
