"""The event loop rule (``_loop.choose_loop``), and ``--loop`` / ``PROACTIVE_LOOP`` through the
CLI: a campaign and an arq worker on the loop asked for, the summary and the worker's log
naming it, and a missing uvloop refused in one line naming the extra."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from test_cli import TOKEN, ThreadedSimulator, campaign_args, phones, read_report, write_csv

from proactive_async import OutcomeStatus
from proactive_async._loop import (
    FAST_EXTRA,
    LOOP_NAMES,
    LoopUnavailableError,
    choose_loop,
    running_loop_name,
)
from proactive_async.cli import main
from proactive_async.simulator import SimulatorConfig

try:
    import uvloop
except ImportError:  # the Celery environment has no fast extra
    uvloop = None  # type: ignore[assignment]

needs_uvloop = pytest.mark.skipif(uvloop is None, reason="uvloop not installed (bench extra)")


@pytest.fixture
def no_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import uvloop`` fails, as where the fast extra is not installed."""
    monkeypatch.setitem(sys.modules, "uvloop", None)


async def _name() -> str:
    return running_loop_name()


# -- the rule --------------------------------------------------------------------------


def test_the_names_are_auto_asyncio_and_uvloop() -> None:
    assert LOOP_NAMES == ("auto", "asyncio", "uvloop")


def test_asyncio_is_asyncios_own_loop_whatever_is_installed() -> None:
    chosen = choose_loop("asyncio")
    assert chosen.name == "asyncio"
    assert chosen.run(_name()) == "asyncio"


@needs_uvloop
@pytest.mark.parametrize("wanted", ["uvloop", "auto", None])
def test_uvloop_and_auto_run_on_uvloop_when_it_is_installed(wanted: str | None) -> None:
    chosen = choose_loop(wanted)
    assert chosen.name == "uvloop"
    assert chosen.run(_name()) == "uvloop"
    loop = chosen.new_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


@pytest.mark.usefixtures("no_uvloop")
@pytest.mark.parametrize("wanted", ["auto", None])
def test_auto_falls_back_to_asyncio_without_uvloop(wanted: str | None) -> None:
    chosen = choose_loop(wanted)
    assert chosen.name == "asyncio"
    assert chosen.run(_name()) == "asyncio"


@pytest.mark.usefixtures("no_uvloop")
def test_uvloop_asked_for_but_missing_is_refused_naming_the_extra() -> None:
    with pytest.raises(LoopUnavailableError) as caught:
        choose_loop("uvloop")
    assert FAST_EXTRA in str(caught.value) and "\n" not in str(caught.value)


def test_an_unknown_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="auto, asyncio, uvloop"):
        choose_loop("tokio")


def test_run_returns_the_result_and_closes_its_loop() -> None:
    seen: list[asyncio.AbstractEventLoop] = []

    async def main() -> int:
        seen.append(asyncio.get_running_loop())
        return 7

    assert choose_loop("asyncio").run(main()) == 7
    assert seen[0].is_closed()


# -- the CLI ---------------------------------------------------------------------------


@pytest.fixture
def sim() -> Any:
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as server:
        yield server


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch, no_proactive_env: None) -> None:
    monkeypatch.setenv("PROACTIVE_TOKEN", TOKEN)


@needs_uvloop
@pytest.mark.usefixtures("token_env")
@pytest.mark.parametrize("flag", ["uvloop", "auto"])
def test_a_campaign_runs_on_uvloop_and_the_summary_says_so(
    tmp_path: Path, sim: ThreadedSimulator, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(40)])

    code = main(campaign_args(targets, sim.url, "--loop", flag, "--json-summary"))

    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["event_loop"] == "uvloop"
    assert "event loop" in err and "uvloop" in err  # the table, on stderr with --json-summary
    assert {o.status for o in read_report(targets)} == {OutcomeStatus.SENT}
    assert sim.audit.total_processed == 40 and sim.audit.duplicates() == {}


@pytest.mark.usefixtures("token_env")
def test_loop_asyncio_from_the_environment_and_the_table_says_so(
    tmp_path: Path,
    sim: ThreadedSimulator,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROACTIVE_LOOP", "asyncio")
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(5)])

    code = main(campaign_args(targets, sim.url))

    out, err = capsys.readouterr()
    assert code == 0, err
    row = next(line for line in out.splitlines() if "event loop" in line)
    assert "asyncio" in row
    assert sim.audit.total_processed == 5


@pytest.mark.usefixtures("token_env", "no_uvloop")
def test_auto_without_uvloop_runs_the_campaign_on_asyncio(
    tmp_path: Path, sim: ThreadedSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(5)])

    code = main(campaign_args(targets, sim.url, "--loop", "auto", "--json-summary"))

    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["event_loop"] == "asyncio"
    assert sim.audit.total_processed == 5


@pytest.mark.usefixtures("token_env", "no_uvloop")
@pytest.mark.parametrize("how", ["flag", "environment"])
def test_uvloop_missing_exits_2_in_one_line_before_anything_is_sent(
    tmp_path: Path,
    sim: ThreadedSimulator,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(5)])
    extra = ["--loop", "uvloop"] if how == "flag" else []
    if how == "environment":
        monkeypatch.setenv("PROACTIVE_LOOP", "uvloop")

    code = main(campaign_args(targets, sim.url, *extra))

    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "proactive-async: error: the uvloop event loop is not installed: " + FAST_EXTRA
    ]
    assert sim.audit.total_processed == 0
    assert not targets.with_suffix(".report.jsonl").exists()


@pytest.mark.usefixtures("no_proactive_env")
def test_an_unknown_loop_in_the_environment_is_refused_naming_the_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROACTIVE_TOKEN", TOKEN)
    monkeypatch.setenv("PROACTIVE_LOOP", "tokio")
    targets = write_csv(tmp_path / "r.csv", phones(1), header="phone")

    code = main(campaign_args(targets, "http://127.0.0.1:9"))

    assert code == 2
    assert "PROACTIVE_LOOP must be auto, asyncio or uvloop" in capsys.readouterr().err


@pytest.mark.usefixtures("token_env", "no_uvloop")
def test_a_worker_asked_for_uvloop_without_it_exits_2_before_starting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("arq")
    pytest.importorskip("psycopg")
    code = main(
        [
            "worker",
            "--journal", "postgresql://app@127.0.0.1:9/none",
            "--redis-url", "redis://127.0.0.1:9/0",
            "--base-url", "http://127.0.0.1:9",
            "--loop", "uvloop",
        ]
    )  # fmt: skip
    assert code == 2
    assert FAST_EXTRA in capsys.readouterr().err


@needs_uvloop
@pytest.mark.slow
def test_an_arq_worker_runs_its_slices_on_uvloop_and_says_so(
    postgres_server: Any, redis_server: Any, tmp_path: Path
) -> None:
    pytest.importorskip("arq")
    from _distributed_checks import cli

    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROACTIVE_")}
        env |= {
            "PROACTIVE_JOURNAL": postgres_server.create_database(f"loop_{uuid.uuid4().hex[:8]}"),
            "PROACTIVE_REDIS_URL": redis_server.url,
            "PROACTIVE_TOKEN": TOKEN,
            "PROACTIVE_BASE_URL": server.url,
        }
        targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(30)])
        template = ("--channel-id", "1", "--bot-id", "2", "--template-id", "3")
        campaign = f"loop-{uuid.uuid4().hex[:8]}"
        planned = cli("enqueue", str(targets), *template, "--campaign", campaign, "--loop",
                      "uvloop", "--job-size", "10", env=env)  # fmt: skip
        assert planned.returncode == 0, planned.stderr
        worked = cli("worker", "--burst", "--loop", "uvloop", env=env)
        assert worked.returncode == 0, worked.stderr
        assert server.audit.total_processed == 30, (planned.stdout, worked.stderr[-3000:])
    assert "engine arq" in worked.stderr and "event loop uvloop" in worked.stderr
    assert TOKEN not in worked.stderr + worked.stdout
