"""The ``proactive-async`` command: run a campaign, serve the simulator, or run the demo.

Usage::

    export PROACTIVE_BASE_URL=https://api.example.com PROACTIVE_TOKEN=...
    proactive-async campaign recipients.csv --channel-id 1 --bot-id 2 --template-id 3 \\
        --default-region BR --journal campaign.db
    proactive-async simulate --port 0
    proactive-async demo

The token is read from ``PROACTIVE_TOKEN`` or ``--token-file`` only, never from a flag:
a flag would show in process lists and shell history.

What lives where: ``campaign`` (a run, its settings and summary), ``dry_run``
(``campaign --dry-run``), ``demo`` (a run against the simulator, audited), ``simulate``;
``distributed`` (enqueue, worker, status, cancel); ``report`` (from a SQLite or
PostgreSQL journal: JSONL/CSV, HTML); ``_html`` (the HTML report's path, page and timeline);
``_interrupts`` (a run under progress and Ctrl-C); ``_flags`` (the flag groups,
and the template and options they make), ``_common`` (exit codes, consoles,
``UsageError``), ``_logs`` (``-v``, ``--log-file``).
Settings and the client and rate limit built from them come from ``proactive_async.settings``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .._version import __version__
from ..settings import SettingsError
from . import campaign, demo, distributed, report, simulate
from ._common import (
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PROG,
    UsageError,
    console,
    stderr_console,
)
from .campaign import CampaignSettings, run_campaign

__all__ = [
    "CampaignSettings",
    "UsageError",
    "build_parser",
    "console",
    "main",
    "run_campaign",
    "stderr_console",
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Send WhatsApp proactive conversations at scale, safely.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    campaign.add_parser(commands)
    simulate.add_parser(commands)
    demo.add_parser(commands)
    distributed.add_parsers(commands)  # arq, psycopg and Celery are imported when run
    report.add_parser(commands)
    return parser


def _refuse_token_flag(argv: Sequence[str]) -> None:
    """A ``--token`` flag gets its own message: argparse's would echo the secret after it."""
    if any(arg == "--token" or arg.startswith("--token=") for arg in argv):
        raise UsageError(
            "there is no --token flag (a token on the command line shows in process lists "
            "and shell history): set PROACTIVE_TOKEN or pass --token-file PATH"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_list[:1] == ["simulate"]:
            # The simulator owns its options; argparse here would only get in the way.
            return simulate.simulate_command(args_list[1:])
        _refuse_token_flag(args_list)
        try:
            args = build_parser().parse_args(args_list)
        except SystemExit as exc:  # --help, --version and usage errors
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except (UsageError, SettingsError) as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
