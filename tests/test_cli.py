"""The ``proactive-async`` command, run in-process against a real simulator on 127.0.0.1.

``main()`` runs its own event loop, so the simulator serves from a thread of its own.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from proactive_async import Outcome, OutcomeStatus
from proactive_async.cli import main
from proactive_async.simulator import Faults, SimulatorConfig
from proactive_async.testing import ThreadedSimulator  # other test files import it from here

TOKEN = "cli-test-token"


@pytest.fixture
def sim() -> Iterator[ThreadedSimulator]:
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as server:
        yield server


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch, no_proactive_env: None) -> None:
    monkeypatch.setenv("PROACTIVE_TOKEN", TOKEN)


def phones(n: int, start: int = 0) -> list[str]:
    return [f"+55119{70000000 + start + i:08d}" for i in range(n)]


def write_csv(path: Path, rows: list[str], header: str = "phone,name") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def campaign_args(targets: Path, url: str, *extra: str) -> list[str]:
    return [
        "campaign",
        str(targets),
        "--channel-id",
        "1",
        "--bot-id",
        "2",
        "--template-id",
        "3",
        "--base-url",
        url,
        "--report",
        str(targets.with_suffix(".report.jsonl")),
        "--no-progress",
        *extra,
    ]


def read_report(targets: Path) -> list[Outcome]:
    decoder = msgspec.json.Decoder(Outcome)
    text = targets.with_suffix(".report.jsonl").read_bytes()
    return [decoder.decode(line) for line in text.splitlines() if line.strip()]


def assert_one_outcome_per_line(outcomes: list[Outcome], records: int) -> None:
    assert sorted(o.line for o in outcomes) == list(range(1, records + 1))


# -- campaigns ---------------------------------------------------------------------


def test_all_sent_exits_0_and_prints_the_summary(
    tmp_path: Path, sim: ThreadedSimulator, token_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(120)])

    code = main(campaign_args(targets, sim.url, "--var", "company=Acme", "--chunk-size", "25"))

    out, err = capsys.readouterr()
    assert code == 0, err
    assert "campaign summary" in out and "120" in out and "targets/s" in out
    outcomes = read_report(targets)
    assert_one_outcome_per_line(outcomes, 120)
    assert {o.status for o in outcomes} == {OutcomeStatus.SENT}
    assert sim.audit.total_processed == 120 and sim.audit.duplicates() == {}
    assert "Traceback" not in err


def test_bad_rows_and_invalid_numbers_are_rejected_one_by_one_nothing_lost(
    tmp_path: Path, sim: ThreadedSimulator, token_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    good = phones(5)
    path = tmp_path / "mixed.csv"
    path.write_bytes(
        b"phone,name\n"
        + f"{good[0]},Ana\n".encode()
        + b"12345,Bob\n"  # invalid number
        + f"{good[1]},Caio,extra\n".encode()  # too many fields
        + f"{good[2]},Jos".encode()
        + b"\xe9\n"  # not UTF-8 (latin-1)
        + f"{good[3]},Dani\n".encode()
        + f"{good[3]},Dani\n".encode()  # duplicate of the line before
        + b",Eva\n"  # no target
        + f"{good[4]},Fabi\n".encode()
    )

    code = main(campaign_args(path, sim.url))

    _, err = capsys.readouterr()
    assert code == 0, err  # rejected and duplicate records are not failures
    outcomes = {o.line: o for o in read_report(path)}
    assert_one_outcome_per_line(list(outcomes.values()), 8)
    status = {line: o.status for line, o in outcomes.items()}
    assert [status[n] for n in (1, 5, 8)] == [OutcomeStatus.SENT] * 3
    assert [status[n] for n in (2, 3, 4, 7)] == [OutcomeStatus.REJECTED] * 4
    assert status[6] is OutcomeStatus.DUPLICATE and outcomes[6].duplicate_of == 5
    assert outcomes[4].error is not None and "UTF-8" in outcomes[4].error.message
    assert sim.audit.total_processed == 3
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"name,city\nAna,Rio\n", "no recipient or contactId column"),
        (b"ph\xf6ne,name\n+5511970000000,Ana\n", "UTF-8"),
    ],
    ids=["empty", "missing-column", "non-utf8-header"],
)
def test_an_unreadable_file_exits_2_with_one_line_naming_it(
    tmp_path: Path,
    sim: ThreadedSimulator,
    token_env: None,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    reason: str,
) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)

    code = main(campaign_args(path, sim.url))

    _, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and str(path) in err and reason in err
    assert "Traceback" not in err
    assert not path.with_suffix(".report.jsonl").exists()  # checked before anything is written
    assert sim.audit.calls == 0


def test_a_missing_file_exits_2_naming_it(
    tmp_path: Path, sim: ThreadedSimulator, token_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nope.csv"
    assert main(campaign_args(path, sim.url)) == 2
    assert str(path) in capsys.readouterr().err


def test_an_unwritable_report_path_exits_2_without_traceback(
    tmp_path: Path, sim: ThreadedSimulator, token_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(3)])
    args = campaign_args(targets, sim.url, "--report", str(tmp_path / "no" / "dir" / "r.jsonl"))

    code = main(args)

    err = capsys.readouterr().err
    assert code == 2 and "r.jsonl" in err and "Traceback" not in err


# -- the token and the base URL ------------------------------------------------------------


def test_the_token_can_come_from_a_file(
    tmp_path: Path, sim: ThreadedSimulator, no_proactive_env: None
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(4)])

    assert main(campaign_args(targets, sim.url, "--token-file", str(token_file))) == 0
    assert sim.audit.total_processed == 4


def test_no_token_is_refused_with_exit_2_and_nothing_is_sent(
    tmp_path: Path,
    sim: ThreadedSimulator,
    no_proactive_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(4)])

    code = main(campaign_args(targets, sim.url))

    err = capsys.readouterr().err
    assert code == 2 and "PROACTIVE_TOKEN" in err and "--token-file" in err
    assert sim.audit.calls == 0


def test_an_empty_token_file_is_refused(
    tmp_path: Path,
    sim: ThreadedSimulator,
    no_proactive_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "token").write_text("\n", encoding="utf-8")
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(1)])

    assert main(campaign_args(targets, sim.url, "--token-file", str(tmp_path / "token"))) == 2
    assert "empty" in capsys.readouterr().err


def test_there_is_no_token_flag_not_even_as_an_abbreviation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        [
            "campaign",
            "x.csv",
            "--channel-id",
            "1",
            "--bot-id",
            "2",
            "--template-id",
            "3",
            "--base-url",
            "http://127.0.0.1:9",
            "--token",
            "s3cr3t",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "there is no --token flag" in err and "s3cr3t" not in err


def test_a_token_given_as_the_token_file_is_not_echoed(
    tmp_path: Path,
    sim: ThreadedSimulator,
    no_proactive_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(1)])

    assert main(campaign_args(targets, sim.url, "--token-file", "s3cr3t-t0ken")) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "s3cr3t" not in err


def test_no_base_url_exits_2(
    tmp_path: Path, token_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(1)])
    args = ["campaign", str(targets), "--channel-id", "1", "--bot-id", "2", "--template-id", "3"]

    assert main(args) == 2
    assert "PROACTIVE_BASE_URL" in capsys.readouterr().err


def test_a_wrong_token_stops_the_run_every_record_failed_with_exit_2(
    tmp_path: Path,
    sim: ThreadedSimulator,
    no_proactive_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A 401 is fatal (issue 7): exit 2, one clear line, every record failed, none lost."""
    monkeypatch.setenv("PROACTIVE_TOKEN", "wrong")
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(6)])

    assert main(campaign_args(targets, sim.url)) == 2
    outcomes = read_report(targets)
    assert {o.status for o in outcomes} == {OutcomeStatus.FAILED} and len(outcomes) == 6
    assert sim.audit.total_processed == 0
    err = capsys.readouterr().err
    assert "authentication failed: HTTP 401" in err and "PROACTIVE_TOKEN" in err


# -- options and output ----------------------------------------------------------------


def test_json_summary_goes_to_stdout_and_the_table_to_stderr(
    tmp_path: Path, sim: ThreadedSimulator, token_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in [*phones(7), "123"]])

    code = main(campaign_args(targets, sim.url, "--json-summary"))

    out, err = capsys.readouterr()
    assert code == 0
    summary = json.loads(out)
    assert summary["records"] == 8
    assert summary["counts"] == {
        "sent": 7,
        "failed": 0,
        "unknown": 0,
        "rejected": 1,
        "duplicate": 0,
    }
    assert "campaign summary" in err


def test_outcomes_that_may_have_been_sent_exit_3_and_say_so(
    tmp_path: Path, token_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = SimulatorConfig(token=TOKEN, faults=Faults(rate_500=1.0, seed=1))
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(10)])
    with ThreadedSimulator(config) as server:
        code = main(campaign_args(targets, server.url))

    err = capsys.readouterr().err
    assert code == 3
    assert "may have been sent" in err
    outcomes = read_report(targets)
    assert {o.status for o in outcomes} == {OutcomeStatus.UNKNOWN} and len(outcomes) == 10
    assert server.audit.duplicates() == {}  # not resent: each processed exactly once


def test_the_template_options_reach_the_request(tmp_path: Path, token_env: None) -> None:
    config = SimulatorConfig(token=TOKEN, faults=Faults(seed=1))
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(2)])
    with ThreadedSimulator(config) as server:
        code = main(
            campaign_args(
                targets,
                server.url,
                "--live-agent",
                "--queue-id",
                "4",
                "--user-id",
                "5",
                "--counterpart-user-id",
                "6",
                "--account-id",
                "7",
                "--account-id",
                "8",
                "--integration-type",
                "2",
                "--rate",
                "1000",
                "--calls-per-second",
                "50",
                "--no-adaptive",
                "--no-dedupe",
                "--max-attempts",
                "2",
            )
        )
    assert code == 0
    assert server.audit.total_processed == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--var", "novalue"], "KEY=VALUE"),
        (["--chunk-size", "0"], "at least 1"),
        (["--rate", "fast"], "not a number"),
        (["--default-region", "ZZ"], "ZZ"),
        (["--redis-url", "http://127.0.0.1:1"], "--redis-url must start with redis://"),
        (["--limit-key", "acme"], "--limit-key is for a shared limit: give --redis-url too"),
        (["--processes", "3"], "--processes is for a shared limit: give --redis-url too"),
        (
            ["--redis-url", "redis://127.0.0.1:1/0", "--calls-per-second", "5"],
            "calls-per-second limit is not shared through Redis",
        ),
    ],
)
def test_bad_options_exit_2_with_a_message(
    tmp_path: Path,
    sim: ThreadedSimulator,
    token_env: None,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(1)])

    assert main(campaign_args(targets, sim.url, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert sim.audit.calls == 0


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "PROACTIVE_CONNECT_TIMEOUT",
            "soon",
            "PROACTIVE_CONNECT_TIMEOUT must be a positive number",
        ),
        ("PROACTIVE_PROXY", "ftp://user:pw-3@proxy:21", "PROACTIVE_PROXY must be an http://"),
        ("PROACTIVE_CONCURRENCY", "0", "PROACTIVE_CONCURRENCY must be a whole number"),
    ],
)
def test_a_bad_setting_in_the_environment_exits_2_naming_the_variable(
    tmp_path: Path,
    sim: ThreadedSimulator,
    token_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv(variable, value)
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(1)])

    assert main(campaign_args(targets, sim.url)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "pw-3" not in err
    assert sim.audit.calls == 0


def test_the_environment_sets_the_ca_file_and_timeouts_as_the_flags_do(
    tmp_path: Path,
    tls_ca: SimpleNamespace,
    token_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROACTIVE_CA_FILE", tls_ca.ca_file)
    monkeypatch.setenv("PROACTIVE_TIMEOUT", "20")
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(3)])
    with ThreadedSimulator(SimulatorConfig(token=TOKEN), tls_ca.server_context) as server:
        assert main(campaign_args(targets, server.url)) == 0
        assert server.audit.total_processed == 3


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["campaign", "--help"]) == 0
    out = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "3 ", "130"):
        assert f"\n  {code}" in out
    assert "MAY have been sent" in out


def test_simulate_delegates_to_the_simulator(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--help"]) == 0
    assert "proactive-async simulate" in capsys.readouterr().out


def test_an_interrupt_stops_gracefully_with_exit_130_and_the_journal_resumes(
    tmp_path: Path, token_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C: in-flight calls are recorded, exit 130; a resume finishes with nothing resent."""
    config = SimulatorConfig(token=TOKEN, faults=Faults(latency=0.02, seed=1))
    numbers = phones(600)
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in numbers])
    args = campaign_args(
        targets,
        "",
        "--journal",
        str(tmp_path / "j.db"),
        "--concurrency",
        "2",
        "--chunk-size",
        "10",
        "--rate",
        "2000",
    )
    with ThreadedSimulator(config) as server:
        args[args.index("--base-url") + 1] = server.url
        interrupter = threading.Thread(target=interrupt_when, args=(server, 100))
        interrupter.start()
        first = main(args)
        interrupter.join()
        processed_first = server.audit.snapshot()
        first_report = read_report(targets)
        out, err = capsys.readouterr()
        second = main(args)
        processed = server.audit.snapshot()

    assert first == 130, err
    assert "interrupted" in err and "campaign summary" in out
    assert 100 <= len(first_report) < 600
    assert len({o.line for o in first_report}) == len(first_report)
    reported = {o.recipient for o in first_report if o.status in SENT_OR_UNKNOWN}
    assert set(processed_first) <= reported  # whatever the server processed has its outcome
    assert second in (0, 3)
    outcomes = read_report(targets)
    assert_one_outcome_per_line(outcomes, 600)
    assert {o.status for o in outcomes} <= SENT_OR_UNKNOWN
    assert max(processed.values()) == 1  # nothing sent twice over both runs
    sent = {o.recipient for o in outcomes if o.status is OutcomeStatus.SENT}
    assert sent <= set(processed)


SENT_OR_UNKNOWN = {OutcomeStatus.SENT, OutcomeStatus.UNKNOWN}


def interrupt_when(server: ThreadedSimulator, processed: int) -> None:
    """SIGINT this process once the server has processed ``processed`` targets."""
    deadline = time.monotonic() + 20
    while server.audit.total_processed < processed and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(os.getpid(), signal.SIGINT)


def test_a_resume_does_not_resend_unknowns_unless_asked(
    tmp_path: Path, token_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(20)])
    args = campaign_args(targets, "", "--journal", str(tmp_path / "j.db"))
    with ThreadedSimulator(SimulatorConfig(token=TOKEN, faults=Faults(rate_500=1.0))) as server:
        args[args.index("--base-url") + 1] = server.url
        assert main(args) == 3
        server.configure(SimulatorConfig(token=TOKEN))
        assert main(args) == 3  # still unknown: read from the journal, not resent
        once = server.audit.snapshot()
        assert main([*args, "--resend-unknown"]) == 0
        twice = server.audit.snapshot()

    assert set(once.values()) == {1} and len(once) == 20
    assert set(twice.values()) == {2}  # what --resend-unknown warns about
    assert {o.status for o in read_report(targets)} == {OutcomeStatus.SENT}


def test_resuming_with_another_template_exits_2_and_keeps_the_report(
    tmp_path: Path, sim: ThreadedSimulator, token_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(10)])
    args = campaign_args(targets, sim.url, "--journal", str(tmp_path / "j.db"))
    assert main(args) == 0
    capsys.readouterr()

    args[args.index("--template-id") + 1] = "99"
    assert main(args) == 2

    err = capsys.readouterr().err
    assert "j.db" in err and "template" in err and err.count("\n") == 1
    assert len(read_report(targets)) == 10
    assert sim.audit.total_processed == 10
