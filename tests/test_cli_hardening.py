"""The CLI at its edges, through real subprocesses: fatal answers, TLS, tokens, report paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_cli import TOKEN, ThreadedSimulator, phones, write_csv

from proactive_async.cli import CampaignSettings
from proactive_async.settings import Settings
from proactive_async.simulator import SimulatorConfig

TEMPLATE_FLAGS = ["--channel-id", "1", "--bot-id", "2", "--template-id", "3"]


def run_cli(*args: str, token: str | None = TOKEN, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROACTIVE_")}
    if token is not None:
        env["PROACTIVE_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "proactive_async.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
        check=False,
    )


def campaign(targets: Path, url: str, *extra: str) -> list[str]:
    return ["campaign", str(targets), *TEMPLATE_FLAGS, "--base-url", url, "--no-progress", *extra]


def test_a_wrong_token_exits_2_at_once_with_one_line_and_a_resumable_journal(
    tmp_path: Path,
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(3000)])
    journal = tmp_path / "j.db"
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        started = time.monotonic()
        done = run_cli(
            *campaign(targets, sim.url, "--journal", str(journal), "--chunk-size", "5"),
            token="wrong-token-xyz",
            cwd=tmp_path,
        )
        elapsed = time.monotonic() - started
        errors = [line for line in done.stderr.splitlines() if "error" in line]
        assert done.returncode == 2, done.stderr
        assert len(errors) == 1 and "authentication failed: HTTP 401" in errors[0]
        assert "PROACTIVE_TOKEN" in errors[0] and "Traceback" not in done.stderr
        assert "wrong-token-xyz" not in done.stderr + done.stdout
        assert elapsed < 30
        report = (tmp_path / "r.report.jsonl").read_text().splitlines()
        assert len(report) == 3000 and '"aborted"' in report[-1]
        assert sim.audit.total_processed == 0

        again = run_cli(*campaign(targets, sim.url, "--journal", str(journal)), cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert sim.audit.total_processed == 3000 and sim.audit.duplicates() == {}


def test_a_two_line_token_file_exits_2_naming_the_problem_and_sends_nothing(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-half-of-it\nsecond-half\n")
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(5)])
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        done = run_cli(
            *campaign(targets, sim.url, "--token-file", str(token_file)), token=None, cwd=tmp_path
        )
        assert sim.audit.total_processed == 0
    assert done.returncode == 2
    assert "line break" in done.stderr and "Traceback" not in done.stderr
    assert "second-half" not in done.stderr


def test_ca_file_trusts_a_private_ca_and_without_it_the_run_stops_with_the_hint(
    tmp_path: Path, tls_ca: SimpleNamespace
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(200)])
    with ThreadedSimulator(SimulatorConfig(token=TOKEN), tls_ca.server_context) as sim:
        refused = run_cli(*campaign(targets, sim.url), cwd=tmp_path)
        assert refused.returncode == 2
        assert "--ca-file" in refused.stderr and "certificate" in refused.stderr.lower()
        assert sim.audit.total_processed == 0

        trusted = run_cli(*campaign(targets, sim.url, "--ca-file", tls_ca.ca_file), cwd=tmp_path)
        assert trusted.returncode == 0, trusted.stderr
        assert sim.audit.total_processed == 200


@pytest.mark.parametrize("which", ["input", "journal", "journal-wal"])
def test_a_report_path_that_is_the_input_or_the_journal_is_refused_before_any_write(
    tmp_path: Path, which: str
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(3)])
    before = targets.read_bytes()
    journal = tmp_path / "j.db"
    report = {"input": targets, "journal": journal, "journal-wal": Path(f"{journal}-wal")}[which]
    done = run_cli(
        *campaign(
            targets, "http://127.0.0.1:9", "--journal", str(journal), "--report", str(report)
        ),
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "report path" in done.stderr
    assert targets.read_bytes() == before
    assert not journal.exists()


def test_campaign_settings_never_show_the_token() -> None:
    from proactive_async import ProactiveConversationRequest

    settings = CampaignSettings(
        targets="r.csv",
        settings=Settings(base_url="http://x", token="do-not-print-me-42"),
        template=ProactiveConversationRequest(channel_id=1),
    )
    assert "do-not-print-me-42" not in repr(settings)


def test_broken_csv_rows_are_rejected_alone_and_nothing_is_merged_or_lost(
    tmp_path: Path,
) -> None:
    """Issue 7.4 through the CLI: a huge cell, a stray quote, letters and an extension."""
    good = phones(6)
    rows = [
        f"{good[0]},Ana",
        f"{good[1]},{'x' * 200_000}",  # over the csv module's 128 KiB field limit
        f"{good[2]},Bruno",
        f'{good[3]},"Carla',  # a quote that never closes
        f"{good[4]},Diego",
        "+1-800-FLOWERS,Eva",
        "+55 11 98765-4321 ext. 12,Fabio",
        f"{good[5]},Gil",
    ]
    targets = write_csv(tmp_path / "r.csv", rows)
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        done = run_cli(*campaign(targets, sim.url, "--default-region", "BR"), cwd=tmp_path)
        processed = sim.audit.snapshot()
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = (tmp_path / "r.report.jsonl").read_text().splitlines()
    report = {row["line"]: row for row in map(json.loads, lines)}
    assert sorted(report) == list(range(1, len(rows) + 1))
    statuses = {line: row["status"] for line, row in report.items()}
    assert statuses == {
        1: "sent",
        2: "rejected",
        3: "sent",
        4: "rejected",
        5: "sent",
        6: "rejected",
        7: "rejected",
        8: "sent",
    }
    assert set(processed) == {good[0], good[2], good[4], good[5]}
    assert "Diego" not in json.dumps(report[4])
