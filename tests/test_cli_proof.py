"""Issue 18 through the real CLI (subprocesses): values the API types as int32 checked before
sending, a token pasted with ``Bearer ``, the dry run's empty variables, ``--recipient-column``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import TOKEN, ThreadedSimulator, phones, write_csv
from test_cli_hardening import TEMPLATE_FLAGS, campaign, run_cli

from proactive_async.simulator import SimulatorConfig


def dry_run(targets: Path, *extra: str, flags: list[str] = TEMPLATE_FLAGS) -> list[str]:
    return ["campaign", str(targets), *flags, "--dry-run", "--json-summary", *extra]


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--channel-id", "2147483648", "does not fit the API's 32-bit integer"),
        ("--bot-id", "-2147483649", "does not fit the API's 32-bit integer"),
        ("--template-id", "99999999999", "does not fit the API's 32-bit integer"),
        ("--queue-id", "4294967296", "does not fit the API's 32-bit integer"),
        ("--account-id", "3000000000", "does not fit the API's 32-bit integer"),
        ("--integration-type", "19", "not a conversationIntegrationType of the API (0 to 18)"),
        ("--integration-type", "-1", "not a conversationIntegrationType of the API (0 to 18)"),
    ],
)
def test_a_flag_the_api_types_as_int32_is_checked_before_anything_is_sent(
    tmp_path: Path, flag: str, value: str, says: str
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(2)])
    flags = [f for f in TEMPLATE_FLAGS if f != flag]
    if flag in flags:  # a template flag: replace its value
        flags = [*TEMPLATE_FLAGS]
        flags[flags.index(flag) + 1] = value
    else:
        flags = [*TEMPLATE_FLAGS, f"{flag}={value}"]
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        done = run_cli(
            "campaign", str(targets), *flags, "--base-url", sim.url, "--no-progress", cwd=tmp_path
        )
        assert sim.audit.total_processed == 0
    assert done.returncode == 2
    assert flag in done.stderr and says in done.stderr and "Traceback" not in done.stderr


def test_the_largest_int32_and_every_integration_type_are_accepted(tmp_path: Path) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(2)])
    flags = ["--channel-id", "2147483647", "--bot-id", "2", "--template-id", "3"]
    done = run_cli(*dry_run(targets, "--integration-type", "18", flags=flags), cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_a_contact_id_past_int32_in_a_file_is_rejected_naming_the_field(tmp_path: Path) -> None:
    targets = tmp_path / "r.jsonl"
    targets.write_text('{"contactId": 7}\n{"contactId": 2147483648}\n', encoding="utf-8")
    done = run_cli(*dry_run(targets), cwd=tmp_path)
    summary = json.loads(done.stdout)
    assert summary["valid"] == 1 and summary["rejected"] == 1
    [row] = [json.loads(line) for line in (tmp_path / "r.report.jsonl").read_text().splitlines()]
    assert row["line"] == 2 and row["status"] == "rejected"
    assert "contactId" in row["error"]["message"] and "32-bit" in row["error"]["message"]


def test_a_token_file_holding_bearer_and_the_token_sends_every_record(tmp_path: Path) -> None:
    """Pasted from a browser's Authorization header: sent as one ``Bearer``, not two."""
    token_file = tmp_path / "token"
    token_file.write_text(f"Bearer {TOKEN}\n")
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(5)])
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        done = run_cli(
            *campaign(targets, sim.url, "--token-file", str(token_file)), token=None, cwd=tmp_path
        )
        assert sim.audit.total_processed == 5
    assert done.returncode == 0, done.stderr


def test_a_token_file_holding_a_whole_header_is_refused_naming_the_problem(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"Authorization: Bearer {TOKEN}\n")
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(2)])
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        done = run_cli(
            *campaign(targets, sim.url, "--token-file", str(token_file)), token=None, cwd=tmp_path
        )
        assert sim.audit.total_processed == 0
    assert done.returncode == 2
    assert "the token holds a space" in done.stderr and TOKEN not in done.stderr


def test_the_dry_run_flags_records_that_would_be_sent_with_an_empty_variable(
    tmp_path: Path,
) -> None:
    rows = [f"{phones(4)[0]},Ana,Lisbon", f"{phones(4)[1]},,Porto", f"{phones(4)[2]},,"]
    targets = write_csv(tmp_path / "r.csv", rows, header="phone,name,city")
    done = run_cli(*dry_run(targets), cwd=tmp_path)
    summary = json.loads(done.stdout)
    assert summary["empty_variables"] == {"records": 2, "by_name": {"name": 2, "city": 1}}
    assert "empty variables" in done.stderr and "--var" in done.stderr

    # A --var default fills an empty cell of its name: only the city is still empty.
    filled = run_cli(*dry_run(targets, "--var", "name=friend"), cwd=tmp_path)
    assert json.loads(filled.stdout)["empty_variables"] == {"records": 1, "by_name": {"city": 1}}


def test_a_recipient_column_of_another_name_is_read_by_the_dry_run(tmp_path: Path) -> None:
    rows = [f"{p};Ana;{p}" for p in phones(3)]
    targets = write_csv(tmp_path / "r.csv", rows, header="telefone;nome;phone")
    done = run_cli(*dry_run(targets, "--recipient-column", "Telefone"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["valid"] == 3

    missing = run_cli(*dry_run(targets, "--recipient-column", "celular"), cwd=tmp_path)
    assert missing.returncode == 2
    assert "no column 'celular'" in missing.stderr and "Traceback" not in missing.stderr


def test_a_run_sends_to_the_recipient_column_it_is_told_and_a_resume_keeps_it(
    tmp_path: Path,
) -> None:
    """``--recipient-column`` in a real run: the numbers are read from that column (the
    ``phone`` column beside it is a content variable), and it is part of the journal's
    identity: a resume without it is refused."""
    numbers = phones(4)
    rows = [f"{numbers[i]},Ana,{numbers[(i + 1) % 4]}" for i in range(3)]
    targets = write_csv(tmp_path / "r.csv", rows, header="telefone,n,phone")
    journal = tmp_path / "j.db"
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        done = run_cli(
            *campaign(
                targets, sim.url, "--recipient-column", "telefone", "--journal", str(journal)
            ),
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        assert sim.simulator.audit.snapshot() == {number: 1 for number in numbers[:3]}
        other = run_cli(*campaign(targets, sim.url, "--journal", str(journal)), cwd=tmp_path)
    assert other.returncode == 2 and "another campaign" in other.stderr
