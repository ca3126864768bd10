"""``proactive-async campaign``: send one template to every recipient of a file.

The flags and the environment become a ``CampaignSettings`` (its connection part a
``Settings``, so the client and the shared rate limit come from ``settings.py``); the run
shows progress, stops gently on the first Ctrl-C and leaves at once on the second; the
summary and the exit code say what happened. ``--dry-run`` is ``dry_run``'s.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._campaign import Campaign
from .._client import AsyncClient
from .._errors import (
    AuthenticationError,
    CircuitOpenError,
    ClientStateError,
    InputError,
    JournalError,
    NameResolutionError,
    PermissionDeniedError,
    ProactiveError,
    TLSError,
)
from .._models import ProactiveConversationRequest
from .._options import CampaignOptions
from .._progress import choose_display
from .._records import OutcomeStatus
from .._report import CampaignSummary
from .._report_html import RunRecorder
from .._sender import ABORTED, resendable_kind
from ..journal import is_postgres
from ..ratelimit import RateLimitBackend
from ..settings import Settings, build_client, build_rate_limit
from . import _flags, _html
from ._common import (
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PROG,
    STDIN,
    UsageError,
    check_targets_file,
    console,
    exit_code_of,
    os_error_text,
    settings_from_flags,
    stderr_console,
)
from ._interrupts import drive
from ._logs import logging_to
from ._summary import summary_table

if TYPE_CHECKING:
    from rich.console import Console


__all__ = [
    "CampaignResult",
    "CampaignSettings",
    "add_parser",
    "print_summary",
    "run_campaign",
    "settings_from_args",
    "summary_table",
]

_DEFAULTS: Final = CampaignOptions()

NO_JOURNAL_WARNING: Final = (
    "no --journal: nothing remembers what this run sends; running it again sends to every "
    "recipient again (add --journal PATH to make it resumable)"
)


@dataclass(frozen=True)
class CampaignSettings:
    """Everything one CLI campaign run needs, resolved and checked.

    ``settings`` holds the API, TLS, proxy, timeouts and Redis (its repr hides the token
    and passwords); ``options`` is the library's own :class:`CampaignOptions`, so every
    default (chunk size, attempts, grace period...) lives in one place.
    """

    targets: str
    settings: Settings
    template: ProactiveConversationRequest
    options: CampaignOptions = _DEFAULTS
    journal: str | None = None
    report: str | None = None
    progress: bool = True
    limit_key: str | None = None
    """The shared limit's name (``--limit-key``); None: from the API host and channel."""
    processes: int | None = None
    """Processes sharing the limit, for pacing while Redis is down; None: wait for it."""
    report_html: str | None = None
    """The HTML report to write when the run ends (``--report-html``)."""


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> CampaignSettings:
    """The flags over the environment (the process's, read by ``settings.py``, unless
    ``environ`` is given)."""
    token = _read_token_file(args.token_file) if args.token_file is not None else None
    settings = settings_from_flags(args, environ, token=token)
    if not settings.base_url:
        raise UsageError("no API base URL: pass --base-url URL or set PROACTIVE_BASE_URL")
    if not settings.token:
        raise UsageError(
            "no API token: set PROACTIVE_TOKEN or pass --token-file PATH "
            "(there is no token flag: it would show in process lists and shell history)"
        )
    if settings.redis_url is None:
        for flag, given in (("--limit-key", args.limit_key), ("--processes", args.processes)):
            if given is not None:
                raise UsageError(f"{flag} is for a shared limit: give --redis-url too")
    return CampaignSettings(
        targets=args.recipients_file,
        settings=settings,
        template=_flags.template_from_args(args),
        options=_flags.options_from_args(args, concurrency=settings.concurrency),
        # --journal only: PROACTIVE_JOURNAL is the distributed campaigns' PostgreSQL journal.
        journal=args.journal,
        report=_flags.report_path(args, args.recipients_file),
        progress=not args.no_progress,
        limit_key=args.limit_key,
        processes=args.processes,
        report_html=args.report_html,
    )


def _read_token_file(token_file: str) -> str:
    """The token from ``--token-file``; never echoed, whatever the file holds."""
    if not os.path.exists(token_file):
        # Not echoed: a token pasted where its file's path belongs must not reach logs.
        raise UsageError("--token-file: no such file (give the path of a file holding the token)")
    try:
        token = Path(token_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(
            f"{token_file}: cannot read the token file: {exc.strerror or exc}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"{token_file}: the token file is not UTF-8 text") from exc
    if not token:
        raise UsageError(f"{token_file}: the token file is empty")
    return token


# -- running a campaign ------------------------------------------------------------


@dataclass
class CampaignResult:
    """How a run ended: the summary, and whether it was interrupted."""

    summary: CampaignSummary
    interrupted: bool
    fatal: str | None = None
    """One line on why a fatal answer (401, 403, TLS) stopped the run."""
    loop: str | None = None  # the event loop it ran on (uvloop or asyncio), for the summary
    recorder: RunRecorder | None = None  # the timeline and the records for the HTML report

    @property
    def exit_code(self) -> int:
        """The command's exit code: a fatal answer, an interruption, or the summary's."""
        if self.fatal is not None:
            return EXIT_USAGE
        if self.interrupted or self.summary.interrupted:
            return EXIT_INTERRUPTED
        return exit_code_of(self.summary)


async def run_campaign(settings: CampaignSettings, *, stderr: Console) -> CampaignResult:
    """Run one campaign with progress and signal handling; user-fixable errors: UsageError."""
    client = _make_client(settings)
    async with client, contextlib.AsyncExitStack() as stack:
        limit = _make_rate_limit(settings)
        if limit is not None:
            stack.push_async_callback(limit.aclose)
        # The timeline and the records for the HTML report: kept for --report-html, or in a
        # SQLite journal for a later ``report --html``; no hook per record otherwise.
        journal = settings.journal
        keeps = settings.report_html is not None or (
            journal is not None and not is_postgres(journal)
        )
        recorder = RunRecorder() if keeps else None
        campaign = _make_campaign(client, settings, limit, recorder)
        if settings.journal is None:
            stderr.print(NO_JOURNAL_WARNING, highlight=False)
        try:
            display = choose_display(settings.progress, campaign.total, stderr)
            interrupted = await drive(campaign, display, settings.options.grace_period)
        except (InputError, JournalError) as exc:
            raise UsageError(str(exc)) from exc
        except OSError as exc:
            raise UsageError(os_error_text(exc)) from exc
        except ProactiveError as exc:
            if not exc.fatal or campaign.aborted is not exc:
                raise
            fatal = _fatal_text(exc, settings, campaign.summary)
            return CampaignResult(campaign.summary, False, fatal=fatal, recorder=recorder)
    return CampaignResult(campaign.summary, interrupted, recorder=recorder)


def _fatal_text(exc: ProactiveError, settings: CampaignSettings, summary: CampaignSummary) -> str:
    """The one line that tells the operator why the run stopped and what to do."""
    resume = ""
    if settings.journal:
        resume = "; records not sent stay unsent in the journal: resume with the same --journal"
        failed = _resendable_failures(summary, but=exc.kind)
        if failed:
            resume += f" (and --resend-failed for the {failed:,} that ended failed unsent)"
    if isinstance(exc, CircuitOpenError):
        hint = {
            "unreachable": " (--base-url or PROACTIVE_BASE_URL; --proxy)",
            "throttled": " (--rate)",
            "ambiguous": "",
        }.get(exc.reason, "")
        why = f"stopped: {exc.message}{hint}"
    elif isinstance(exc, NameResolutionError):
        why = f"{exc.message} (--base-url or PROACTIVE_BASE_URL)"
    elif isinstance(exc, AuthenticationError):
        why = f"authentication failed: {exc.message}; check PROACTIVE_TOKEN (or --token-file)"
    elif isinstance(exc, PermissionDeniedError):
        why = f"permission denied: {exc.message}; the token may not use this channel or bot"
    elif isinstance(exc, TLSError):
        hint = "" if settings.settings.ca_file else "; for a private CA pass --ca-file PATH (PEM)"
        why = f"{exc.message}{hint}"
    else:
        why = exc.message
    return why + resume


def _make_client(settings: CampaignSettings) -> AsyncClient:
    try:
        return build_client(settings.settings)
    except ClientStateError as exc:
        raise UsageError(str(exc)) from exc


def _make_rate_limit(settings: CampaignSettings) -> RateLimitBackend | None:
    """A limit shared through Redis, if there is one; else None: the campaign builds its
    own from the options (one that starts with an empty bucket)."""
    if settings.settings.redis_url is None:
        return None
    options = settings.options
    try:
        return build_rate_limit(
            settings.settings,
            rate=options.rate,
            burst=options.burst,
            adaptive=options.adaptive,
            calls_per_second=options.calls_per_second,
            tuning=options.tuning,
            key=settings.limit_key,
            channel_id=_channel(settings.template),
            processes=settings.processes,
        )
    except (ValueError, ImportError) as exc:
        raise UsageError(str(exc)) from exc


def _channel(template: ProactiveConversationRequest) -> int | None:
    return template.channel_id if isinstance(template.channel_id, int) else None


def _make_campaign(
    client: AsyncClient,
    settings: CampaignSettings,
    limit: RateLimitBackend | None,
    recorder: RunRecorder | None,
) -> Campaign:
    options = settings.options
    if limit is not None:
        # The pace is the given limit's: the options keep no local one.
        options = dataclasses.replace(
            options, rate=None, burst=None, calls_per_second=None, adaptive=None
        )

    try:
        campaign = Campaign(
            client,
            template=settings.template,
            targets=settings.targets,
            options=options,
            rate_limit=limit,
            journal=settings.journal,
            report=settings.report,
            on_outcome=recorder.on_outcome if recorder is not None else None,
            on_replayed=recorder.on_replayed if recorder is not None else None,
            on_throttle=recorder.on_throttle if recorder is not None else None,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return campaign


# -- the summary -------------------------------------------------------------------


def _advice(result: CampaignResult, journal: str | None) -> str | None:
    """What to do next, for the exit codes that need a decision."""
    unknown = result.summary.counts[OutcomeStatus.UNKNOWN]
    resume = "resume with the same --journal" if journal else "add --journal to make runs resumable"
    if result.exit_code == EXIT_INTERRUPTED:
        sent = result.summary.counts[OutcomeStatus.SENT]
        if not journal:
            resume = f"a re-run sends to all again, the {sent:,} already sent too; {resume}"
        return f"interrupted: the report covers the records handled so far; {resume}."
    if unknown:
        return (
            f"{unknown:,} record(s) ended unknown: they may have been sent. Do not re-run "
            'blindly; check the report (status "unknown")'
            + ("; a resume with the same --journal does not resend them." if journal else ".")
        )
    failed = _resendable_failures(result.summary)
    if failed and journal:
        return (
            f"{failed:,} record(s) ended failed for a cause of the run (connection, 429/503, "
            "token or URL), certainly not sent: once it is fixed, resume with the same "
            "--journal and --resend-failed."
        )
    return None


def _resendable_failures(summary: CampaignSummary, *, but: str = ABORTED) -> int:
    """Records that ended failed, durably, for a cause a resume with --resend-failed may
    overcome (``but``: the kind of a fatal answer, whose chunk a plain resume resends)."""
    skip = {ABORTED, but}
    return sum(
        count
        for key, count in summary.errors.items()
        if key.status == OutcomeStatus.FAILED.value
        and key.kind not in skip
        and resendable_kind(key.kind)
    )


def print_summary(
    result: CampaignResult, settings: CampaignSettings, *, json_summary: bool, stderr: Console
) -> None:
    """The summary table on stdout (on stderr, the JSON on stdout, for ``--json-summary``),
    then the fatal error or what to do next, on stderr."""
    summary, loop = result.summary, result.loop
    table = summary_table(summary, report=settings.report, journal=settings.journal, loop=loop)
    if json_summary:
        stderr.print(table)
        as_json = msgspec.json.encode({**summary.as_dict(), "event_loop": loop})
        sys.stdout.write(as_json.decode() + "\n")
        sys.stdout.flush()
    else:
        console(sys.stdout).print(table)
    if result.fatal is not None:
        stderr.print(f"{PROG}: error: {result.fatal}", highlight=False)
        return
    advice = _advice(result, settings.journal)
    if advice:
        stderr.print(advice, highlight=False)


# -- the command -------------------------------------------------------------------


def _command(args: argparse.Namespace) -> int:
    if args.recipients_file != STDIN:
        return _run_or_plan(args)
    with _spooled_stdin() as path:
        args.report = _flags.report_path(args, STDIN)
        return _run_or_plan(argparse.Namespace(**{**vars(args), "recipients_file": path}))


@contextlib.contextmanager
def _spooled_stdin() -> Iterator[str]:
    """Standard input copied to a temporary file, so that a campaign can count, fingerprint
    and (with the same input again) resume it: ``.jsonl`` if it starts with ``{``, else
    ``.txt`` (a CSV with a header, or one number a line)."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="proactive-async-") as folder:
        spool = Path(folder, "stdin")
        with spool.open("wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
        with spool.open("rb") as handle:
            start = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        path = spool.rename(spool.with_suffix(".jsonl" if start[:1] == b"{" else ".txt"))
        yield str(path)


def _run_or_plan(args: argparse.Namespace) -> int:
    if args.dry_run:
        from .dry_run import dry_run_command

        if args.report_html is not None:
            raise UsageError("--report-html is written by a run, not by a --dry-run")

        return dry_run_command(args)
    settings = settings_from_args(args)
    check_targets_file(settings.targets, settings.options.recipient_column)
    if settings.report_html is not None:  # refused before anything is sent, not after
        _html.check_html(settings.report_html, _html_guards(settings))
    loop = _flags.event_loop(settings.settings)
    stderr = stderr_console()
    token = settings.settings.token
    with logging_to(args.verbose, args.log_file, [token] if token else []):
        result = loop.run(run_campaign(settings, stderr=stderr))
    result.loop = loop.name
    print_summary(result, settings, json_summary=args.json_summary, stderr=stderr)
    _write_html(result, settings, stderr)
    return result.exit_code


def _html_guards(settings: CampaignSettings) -> list[tuple[str, str]]:
    return _html.file_guards(
        input=settings.targets, journal=settings.journal, report=settings.report
    )


def _write_html(result: CampaignResult, settings: CampaignSettings, stderr: Console) -> None:
    """Keep the run's timeline in a SQLite journal; write ``--report-html``."""
    recorder = result.recorder
    if recorder is None:
        return
    kept = _html.keep_timeline(
        settings.journal, recorder, stderr=stderr, read_back=settings.report_html is not None
    )
    if settings.report_html is None:
        return
    notes = [f"stopped: {result.fatal}"] if result.fatal else []
    if result.exit_code == EXIT_INTERRUPTED:
        notes.append("interrupted: this covers the records handled before the stop")
    page = _html.run_page(
        result.summary,
        recorder,
        kept=kept,
        source=f"campaign of {settings.targets}",
        report=settings.report,
        journal=settings.journal,
        notes=notes,
    )
    token = settings.settings.token
    _html.write_html(settings.report_html, page, secrets=[token] if token else [])
    stderr.print(f"HTML report: {settings.report_html}", highlight=False)


def add_parser(commands: Any) -> None:
    """``campaign``: every flag group, and its output flags."""
    p = commands.add_parser(
        "campaign",
        help="send one template to every recipient of a CSV/JSONL file",
        description="Send one template to every recipient of a CSV/JSONL file. The base URL "
        "comes from --base-url or PROACTIVE_BASE_URL; the token from PROACTIVE_TOKEN or "
        "--token-file (never a flag).",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # "--token" must not be taken for "--token-file"
    )
    _flags.add_recipients_file(p)
    p.set_defaults(handler=_command)
    _flags.add_campaign_options(p)
    _flags.add_pace_flags(p)
    _flags.add_stop_flags(p)
    _flags.add_shared_limit_flags(p)
    _flags.add_record_flags(p)
    _flags.add_api_flags(p)
    _flags.add_connection_flags(p)
    _add_output_flags(p)


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    out = p.add_argument_group("output")
    out.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log to stderr: -v INFO, -vv DEBUG (token redacted, phone numbers masked)",
    )
    out.add_argument(
        "--log-file",
        metavar="PATH",
        help="append DEBUG log lines to PATH (token redacted, phone numbers masked)",
    )
    out.add_argument(
        "--no-progress", action="store_true", help="plain progress lines instead of a live bar"
    )
    out.add_argument(
        "--dry-run",
        action="store_true",
        help="read and plan the whole file, send nothing (no token, no network): counts of "
        "valid, rejected (top reasons) and duplicate records, the calls it would make; the "
        "report lists the rejected and duplicate records. Exits as a run would: rejected "
        "and duplicate records are counted, never an exit code of their own",
    )
    out.add_argument("--report-html", metavar="PATH", help=_html.HTML_HELP)
    out.add_argument(
        "--json-summary",
        action="store_true",
        help="print the summary as JSON on stdout (the table goes to stderr)",
    )
