"""Crash and resume of a CLI campaign: the simulator and the campaign are real subprocesses.

The simulator runs as ``proactive-async simulate --port 0`` and prints its audit when it
stops (``processed: N``, ``duplicates: K``): that is what proves nothing was sent twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from proactive_async import Outcome, OutcomeStatus

pytestmark = pytest.mark.slow

TOKEN = "resume-test-token"
CLI = [sys.executable, "-m", "proactive_async.cli"]
SENT_OR_UNKNOWN = {OutcomeStatus.SENT, OutcomeStatus.UNKNOWN}


@dataclass
class SimulatorAudit:
    processed: int
    duplicates: int


class SimulatorProcess:
    """``proactive-async simulate`` in a subprocess; ``stop()`` returns its audit."""

    def __init__(self, *options: str) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "simulate", "--port", "0", "--token", TOKEN, "--seed", "1", *options],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("listening on "), line
        self.url = line.removeprefix("listening on ").strip()

    def stop(self) -> SimulatorAudit:
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=20)
        fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
        return SimulatorAudit(int(fields["processed"]), int(fields["duplicates"]))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=20)


@pytest.fixture
def simulator_factory() -> Iterator[list[SimulatorProcess]]:
    started: list[SimulatorProcess] = []
    yield started
    for sim in started:
        sim.kill()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PROACTIVE_")}
    environment["PROACTIVE_TOKEN"] = TOKEN
    return environment


class Campaign:
    """Paths and arguments of one CLI campaign over ``records`` numbers."""

    def __init__(self, tmp_path: Path, records: int, url: str) -> None:
        self.records = records
        self.targets = tmp_path / "recipients.csv"
        self.journal = tmp_path / "campaign.db"
        self.report = tmp_path / "report.jsonl"
        self.log = tmp_path / "campaign.log"
        rows = [f"+55119{70000000 + i:08d},Ana" for i in range(records)]
        self.targets.write_text("\n".join(["phone,name", *rows]) + "\n", encoding="utf-8")
        self.url = url

    def args(self, *extra: str, template_id: str = "3") -> list[str]:
        return [
            *CLI,
            "campaign",
            str(self.targets),
            "--channel-id",
            "1",
            "--bot-id",
            "2",
            "--template-id",
            template_id,
            "--base-url",
            self.url,
            "--journal",
            str(self.journal),
            "--report",
            str(self.report),
            "--concurrency",
            "4",
            "--chunk-size",
            "10",
            "--no-progress",
            *extra,
        ]

    def start(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.log, "wb") as log:
            return subprocess.Popen(self.args(), env=env, stdout=log, stderr=log)

    def run(
        self, env: dict[str, str], *extra: str, template_id: str = "3"
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.args(*extra, template_id=template_id),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def outcomes(self, *, killed: bool = False) -> list[Outcome]:
        """The report's lines. After SIGKILL the last write may have been cut short (the
        kernel ends a write early for a fatal signal), so a partial last line is left out;
        the resumed run rewrites the whole report from the journal. Otherwise every line
        must be whole."""
        decoder = msgspec.json.Decoder(Outcome)
        # A killed run never renamed its report over the path: its lines are in the
        # temporary file it was writing beside it.
        source = self.report if self.report.exists() or not killed else self.written()[0]
        *lines, tail = source.read_bytes().split(b"\n")
        assert killed or tail == b"", f"the report ends in a partial line: {tail[-80:]!r}"
        return [decoder.decode(line) for line in lines]

    def written(self) -> list[Path]:
        """The report being written: a temporary file beside the path until the run ends
        (then renamed over it), and the report itself."""
        beside = sorted(self.report.parent.glob(f".{self.report.name}.*.tmp"))
        return [*beside, self.report] if self.report.exists() else beside

    def reported(self) -> int:
        """Bytes of report written so far (the writer flushes every 64 KiB)."""
        return sum(path.stat().st_size for path in self.written() if path.exists())


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    # The journal is held in SQLite's exclusive locking mode while a campaign runs, so
    # progress is read from the report file and the log instead.
    deadline = time.monotonic() + 60
    while not condition():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the campaign made no progress"
        time.sleep(0.01)


def assert_every_record_has_one_outcome(campaign: Campaign) -> list[Outcome]:
    outcomes = campaign.outcomes()
    assert sorted(o.line for o in outcomes) == list(range(1, campaign.records + 1))
    return outcomes


def test_kill_9_then_resume_sends_nothing_twice_and_finishes_every_record(
    tmp_path: Path, env: dict[str, str], simulator_factory: list[SimulatorProcess]
) -> None:
    sim = SimulatorProcess("--latency", "0.05", "--jitter", "0.01")
    simulator_factory.append(sim)
    campaign = Campaign(tmp_path, 3000, sim.url)

    first = campaign.start(env)
    wait_for(lambda: campaign.reported() > 0, first, campaign.log)
    first.kill()  # SIGKILL: no cleanup of any kind
    first.wait(timeout=20)
    assert len(campaign.outcomes(killed=True)) < 3000, "the kill landed after the end"

    resumed = campaign.run(env, "--json-summary")
    assert resumed.returncode in (0, 3), resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed"] > 0  # taken from the journal, not sent again
    outcomes = assert_every_record_has_one_outcome(campaign)
    assert {o.status for o in outcomes} <= SENT_OR_UNKNOWN
    sent = sum(o.status is OutcomeStatus.SENT for o in outcomes)
    unknown = sum(o.status is OutcomeStatus.UNKNOWN for o in outcomes)
    assert (resumed.returncode == 3) == (unknown > 0)

    refused = campaign.run(env, template_id="4")
    assert refused.returncode == 2
    assert str(campaign.journal) in refused.stderr and "Traceback" not in refused.stderr
    assert len(campaign.outcomes()) == 3000  # the refused run left the report alone

    audit = sim.stop()
    assert audit.duplicates == 0  # no number was processed twice over the three runs
    assert sent <= audit.processed <= sent + unknown  # each unknown at most once


def test_sigterm_stops_gracefully_with_exit_130_then_resume_completes(
    tmp_path: Path, env: dict[str, str], simulator_factory: list[SimulatorProcess]
) -> None:
    sim = SimulatorProcess("--latency", "0.05")
    simulator_factory.append(sim)
    campaign = Campaign(tmp_path, 2000, sim.url)

    first = campaign.start(env)
    wait_for(lambda: campaign.reported() > 0, first, campaign.log)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 130
    log = campaign.log.read_text()
    assert "interrupted" in log and "campaign summary" in log and "Traceback" not in log
    stopped = campaign.outcomes()
    assert len({o.line for o in stopped}) == len(stopped) < 2000
    assert not any(o.status is OutcomeStatus.UNKNOWN for o in stopped)  # all calls finished

    resumed = campaign.run(env)
    assert resumed.returncode == 0, resumed.stderr
    outcomes = assert_every_record_has_one_outcome(campaign)
    assert {o.status for o in outcomes} == {OutcomeStatus.SENT}
    audit = sim.stop()
    assert audit.duplicates == 0 and audit.processed == 2000


def test_a_second_interrupt_exits_at_once_and_in_flight_records_are_not_resent(
    tmp_path: Path, env: dict[str, str], simulator_factory: list[SimulatorProcess]
) -> None:
    sim = SimulatorProcess("--latency", "5")  # calls stay in flight while we interrupt
    simulator_factory.append(sim)
    campaign = Campaign(tmp_path, 48, sim.url)

    first = campaign.start(env)
    # The first plain progress line comes 2 s after the start: the calls are on the wire.
    wait_for(lambda: "records" in campaign.log.read_text(), first, campaign.log)
    first.send_signal(signal.SIGINT)
    time.sleep(0.3)
    interrupted_at = time.monotonic()
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=10) == 130
    assert time.monotonic() - interrupted_at < 2.0  # did not wait for the 5 s calls
    assert "interrupted again" in campaign.log.read_text()

    resumed = campaign.run(env)
    assert resumed.returncode == 3, resumed.stderr  # the in-flight records: unknown
    outcomes = assert_every_record_has_one_outcome(campaign)
    unknown = sum(o.status is OutcomeStatus.UNKNOWN for o in outcomes)
    assert 0 < unknown <= 40  # at most concurrency x chunk size were in flight
    audit = sim.stop()
    assert audit.duplicates == 0
