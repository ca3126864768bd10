"""What every command shares: exit codes, the consoles, ``UsageError``, settings for a command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Any, Final

from .._errors import InputError
from .._input import read_records
from .._records import OutcomeStatus
from .._report import CampaignSummary
from ..settings import Settings, SettingsError

if TYPE_CHECKING:
    # rich is imported where it is used: neither --help nor a usage error pays for it.
    from rich.console import Console

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNKNOWN",
    "EXIT_USAGE",
    "JOURNAL_PASSWORD_HELP",
    "PROG",
    "REDIS_PASSWORD_HELP",
    "STDIN",
    "UsageError",
    "check_targets_file",
    "console",
    "exit_code_of",
    "os_error_text",
    "settings_from",
    "settings_from_flags",
    "stderr_console",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNKNOWN: Final = 3
EXIT_INTERRUPTED: Final = 130
STDIN: Final = "-"
PROG: Final = "proactive-async"

EXIT_CODES_HELP: Final = """\
exit codes:
  0    every record ended sent, rejected (invalid input) or duplicate. Rejected and
       duplicate records are counted and reported, never an exit code of their own: a
       --dry-run of the same file exits as the run would (0 unless it cannot read the file)
  1    some records failed (certainly not sent) and none is unknown
  2    usage, configuration, input-file or journal error, or a fatal answer (401, 403, a
       certificate that does not verify) that stopped the run (one line on stderr)
  3    some records ended unknown: they MAY have been sent. Do not re-run blindly;
       resume with the same --journal (unknowns are not resent unless --resend-unknown)
  130  interrupted (Ctrl-C / SIGTERM): calls in flight were finished and recorded; resume
       with the same --journal. A second Ctrl-C exits at once (the journal stays consistent)
"""


# A flag's value shows in ps: where a password goes instead (the --help of each URL flag).
REDIS_PASSWORD_HELP: Final = (
    "a password in the URL shows in ps: put the URL in $PROACTIVE_REDIS_URL instead"
)
JOURNAL_PASSWORD_HELP: Final = (
    "a password in the URL shows in ps: put the URL in $PROACTIVE_JOURNAL, or leave the "
    "password out and let libpq read $PGPASSWORD or ~/.pgpass ($PGPASSFILE)"
)


def exit_code_of(summary: CampaignSummary) -> int:
    """The exit code of the records' outcomes, for a run and a dry run alike: rejected and
    duplicate records are in the report and the summary, never an exit code of their own
    (running the file again would not help them)."""
    if summary.counts[OutcomeStatus.UNKNOWN]:
        return EXIT_UNKNOWN
    if summary.counts[OutcomeStatus.FAILED]:
        return EXIT_FAILED
    return EXIT_OK


class UsageError(Exception):
    """A problem the user can fix: reported as one line, exit code 2, no traceback."""


# The flag of each setting whose flag is not its name with dashes.
_FLAGS: Final[Mapping[str, str]] = {"total_timeout": "--timeout", "token": "--token-file"}


# The setting of each flag of the connection, API and shared-limit groups: a command has
# some of them (argparse's ``dest`` names), and reads what it has.
_SETTING_FLAGS: Final[Mapping[str, str]] = {
    "base_url": "base_url",
    "ca_file": "ca_file",
    "proxy": "proxy",
    "connect_timeout": "connect_timeout",
    "read_timeout": "read_timeout",
    "total_timeout": "timeout",
    "redis_url": "redis_url",
    "concurrency": "concurrency",
    "loop": "loop",
}


def settings_from_flags(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None, /, **more: Any
) -> Settings:
    """``settings_from`` with the values of whichever setting flags the command has, and
    ``more`` (settings a command gives its own way: a token file, a journal, a broker)."""
    given = vars(args)
    flags = {name: given.get(dest) for name, dest in _SETTING_FLAGS.items()}
    return settings_from(environ, **flags, **more)


def settings_from(environ: Mapping[str, str] | None = None, /, **flags: Any) -> Settings:
    """``Settings.from_env`` with the flags' values as overrides; a refused value is a
    UsageError naming the flag or the variable it came from."""
    try:
        return Settings.from_env(environ, **flags)
    except SettingsError as exc:
        if exc.variable is not None:
            raise UsageError(str(exc)) from None
        flag = _FLAGS.get(exc.field, "--" + exc.field.replace("_", "-"))
        raise UsageError(f"{flag} {exc.reason}") from None


def check_targets_file(path: str, recipient_column: str | None = None) -> None:
    """Fail fast (before any report or journal is touched) when the file cannot be read at all."""
    try:
        records = read_records(path, recipient_column=recipient_column)
        try:
            next(records, None)
        finally:
            close: Callable[[], None] | None = getattr(records, "close", None)
            if close is not None:
                close()
    except InputError as exc:
        raise UsageError(str(exc)) from exc


def os_error_text(exc: OSError) -> str:
    name = exc.filename if exc.filename is not None else "file"
    return f"{name}: {exc.strerror or exc}"


def stderr_console() -> Console:
    """A console on standard error: progress, warnings, errors."""
    return console(sys.stderr)


def console(file: IO[str]) -> Console:
    """A rich console writing to ``file``, long lines unbroken."""
    from rich.console import Console

    # soft_wrap: a long message stays one line in a log instead of breaking at 80 columns.
    return Console(file=file, highlight=False, soft_wrap=True)
