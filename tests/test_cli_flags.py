"""``proactive_async.cli._flags``: one function per flag group, and what the flags make.

Also the shape of the ``cli`` package: nothing below it imports it back, no module of it is
over 600 lines, and ``python -m proactive_async.cli`` runs it.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import proactive_async
from proactive_async import CampaignOptions
from proactive_async.cli import _flags
from proactive_async.cli._common import UsageError

PACKAGE = Path(proactive_async.__file__).parent
TEMPLATE = ["--channel-id", "1", "--bot-id", "2", "--template-id", "3"]

GROUPS: dict[Callable[[argparse.ArgumentParser], None], set[str]] = {
    _flags.add_template_flags: {
        "--channel-id",
        "--bot-id",
        "--template-id",
        "--var",
        "--live-agent",
        "--queue-id",
        "--user-id",
        "--counterpart-user-id",
        "--integration-type",
        "--account-id",
    },
    _flags.add_planning_flags: {
        "--chunk-size",
        "--default-region",
        "--no-dedupe",
        "--allow-repeats",
        "--allow-vanity-numbers",
        "--recipient-column",
        "--multiline-values",
    },
    _flags.add_sending_flags: {
        "--rate",
        "--burst",
        "--no-adaptive",
        "--max-attempts",
        "--retry-ambiguous",
        "--resend-unknown",
    },
    _flags.add_pace_flags: {"--concurrency", "--calls-per-second", "--grace-period", "--loop"},
    _flags.add_shared_limit_flags: {"--redis-url", "--limit-key", "--processes"},
    _flags.add_record_flags: {"--journal", "--report", "--report-format"},
    _flags.add_api_flags: {"--base-url", "--token-file"},
    _flags.add_connection_flags: {
        "--ca-file",
        "--proxy",
        "--connect-timeout",
        "--read-timeout",
        "--timeout",
    },
}


def flags_of(*groups: Callable[[argparse.ArgumentParser], None]) -> set[str]:
    parser = argparse.ArgumentParser(add_help=False)
    for add in groups:
        add(parser)
    return {flag for action in parser._actions for flag in action.option_strings}


def parse(
    groups: list[Callable[[argparse.ArgumentParser], None]], *argv: str
) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    for add in groups:
        add(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("add", list(GROUPS), ids=lambda add: add.__name__)
def test_each_group_adds_exactly_its_flags(add: Callable[[argparse.ArgumentParser], None]) -> None:
    assert flags_of(add) == GROUPS[add]


def test_the_campaign_options_are_what_a_campaign_keeps_wherever_it_is_sent() -> None:
    groups = (_flags.add_template_flags, _flags.add_planning_flags, _flags.add_sending_flags)
    assert flags_of(_flags.add_campaign_options) == set().union(*(GROUPS[g] for g in groups))


def test_flags_not_given_keep_the_campaign_options_defaults() -> None:
    args = parse(list(GROUPS), *TEMPLATE)
    assert _flags.options_from_args(args) == CampaignOptions()


def test_a_command_with_fewer_groups_still_gets_its_options() -> None:
    """enqueue may take the template and planning groups only: the rest keep defaults."""
    groups = [_flags.add_template_flags, _flags.add_planning_flags]
    args = parse(groups, *TEMPLATE, "--chunk-size", "7", "--default-region", "br")
    template, options = _flags.campaign_inputs(args)
    assert template.channel_id == 1 and template.conversation_template_id == 3
    assert options == CampaignOptions(chunk_size=7, default_region="BR")


def test_each_flag_reaches_its_option() -> None:
    args = parse(
        list(GROUPS),
        *TEMPLATE,
        *("--rate", "50", "--burst", "5", "--calls-per-second", "3", "--concurrency", "9"),
        *("--max-attempts", "2", "--retry-ambiguous", "--resend-unknown", "--no-adaptive"),
        *("--no-dedupe", "--allow-repeats", "--allow-vanity-numbers", "--multiline-values"),
        *("--grace-period", "4"),
    )
    options = _flags.options_from_args(args)
    assert (options.rate, options.burst, options.calls_per_second) == (50.0, 5.0, 3.0)
    assert options.concurrency == 9 and options.grace_period == 4.0
    assert options.retry.max_attempts == 2 and options.retry.retry_ambiguous
    assert options.adaptive is False and options.resend_unknown
    assert not options.dedupe and options.allow_repeats_with_different_variables
    assert options.allow_vanity_numbers and options.multiline_values


def test_the_settings_concurrency_wins_over_the_flag() -> None:
    """``campaign`` passes the settings' value: the flag, else PROACTIVE_CONCURRENCY."""
    args = parse([_flags.add_pace_flags])
    assert _flags.options_from_args(args, concurrency=40).concurrency == 40


def test_options_the_library_refuses_are_usage_errors() -> None:
    args = argparse.Namespace(chunk_size=0)
    with pytest.raises(UsageError, match="chunk_size"):
        _flags.options_from_args(args)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "r.report.jsonl"),
        (["--report-format", "csv"], "r.report.csv"),
        (["--report", "out.csv"], "out.csv"),
    ],
)
def test_the_report_path_follows_the_input_and_the_format(argv: list[str], expected: str) -> None:
    args = parse([_flags.add_record_flags], *argv)
    assert Path(_flags.report_path(args, "data/r.csv")).name == expected


def test_a_report_path_that_contradicts_the_format_is_refused() -> None:
    args = parse([_flags.add_record_flags], "--report", "out.jsonl", "--report-format", "csv")
    with pytest.raises(UsageError, match="--report-format csv"):
        _flags.report_path(args, "r.csv")


# -- the package's shape -----------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """The modules ``path`` imports, as absolute names."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    package = package.removesuffix(".__init__")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            name = ".".join(part for part in (base, node.module) if part)
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def test_nothing_below_the_cli_imports_it() -> None:
    above = {PACKAGE / "cli"}
    importers = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if not any(path == top or top in path.parents for top in above)
        and any(name.startswith("proactive_async.cli") for name in _imports(path))
    ]
    assert importers == []


def test_no_module_of_the_cli_is_over_600_lines() -> None:
    sizes = {
        path.name: len(path.read_text().splitlines()) for path in (PACKAGE / "cli").glob("*.py")
    }
    assert max(sizes.values()) <= 600, sizes


def test_python_m_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proactive_async.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.startswith("proactive-async "), done.stderr
