"""The ``proactive-async`` command: run a campaign, serve the simulator, or run the demo.

Usage::

    export PROACTIVE_BASE_URL=https://api.example.com PROACTIVE_TOKEN=...
    proactive-async campaign recipients.csv --channel-id 1 --bot-id 2 --template-id 3 \\
        --default-region BR --journal campaign.db
    proactive-async simulate --port 0
    proactive-async demo

The token is read from ``PROACTIVE_TOKEN`` or ``--token-file`` only, never from a flag:
a flag would show in process lists and shell history.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Literal, NoReturn

import msgspec

from ._campaign import Campaign
from ._client import AsyncClient, mask_phones_in
from ._config import DEFAULT_TIMEOUT, Limits, Timeout
from ._errors import (
    AuthenticationError,
    ClientStateError,
    InputError,
    JournalError,
    PermissionDeniedError,
    ProactiveError,
    TLSError,
)
from ._input import COLUMN_ALIASES, read_records
from ._journal import open_journal
from ._models import ProactiveConversationRequest
from ._options import CampaignOptions
from ._progress import choose_display
from ._ratelimit import RateLimit
from ._ratelimit_redis import SharedRateLimit, default_limit_key
from ._records import Outcome, OutcomeStatus
from ._report import REPORT_FORMATS, CampaignSummary, ReportWriter, report_format
from ._version import __version__

if TYPE_CHECKING:
    # rich (and the progress display built on it) is imported where it is used: neither
    # --help nor a usage error pays for it.
    from rich.console import Console
    from rich.table import Table

    from ._progress import ProgressDisplay

__all__ = ["CampaignSettings", "main", "run_campaign"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNKNOWN: Final = 3
EXIT_INTERRUPTED: Final = 130
STDIN: Final = "-"

_PROG: Final = "proactive-async"
_EXIT_CODES_HELP: Final = """\
exit codes:
  0    every record ended sent, rejected (invalid input) or duplicate
  1    some records failed (certainly not sent) and none is unknown
  2    usage, configuration, input-file or journal error, or a fatal answer (401, 403, a
       certificate that does not verify) that stopped the run (one line on stderr)
  3    some records ended unknown: they MAY have been sent. Do not re-run blindly;
       resume with the same --journal (unknowns are not resent unless --resend-unknown)
  130  interrupted (Ctrl-C / SIGTERM): calls in flight were finished and recorded; resume
       with the same --journal. A second Ctrl-C exits at once (the journal stays consistent)
"""


_DEFAULTS: Final = CampaignOptions()
_log = logging.getLogger("proactive_async.cli")


class UsageError(Exception):
    """A problem the user can fix: reported as one line, exit code 2, no traceback."""


# -- settings ----------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignSettings:
    """Everything one CLI campaign run needs, resolved and checked.

    ``options`` is the library's own :class:`CampaignOptions`, built from the flags, so
    every default (chunk size, attempts, grace period...) lives in one place.
    """

    targets: str
    base_url: str
    token: str = field(repr=False)
    template: ProactiveConversationRequest
    options: CampaignOptions = _DEFAULTS
    journal: str | None = None
    report: str | None = None
    progress: bool = True
    ca_file: str | None = None
    shared_limit: SharedLimitSettings | None = None
    """Set: the rate limit is shared through Redis (``--redis-url``)."""
    timeout: Timeout = DEFAULT_TIMEOUT
    proxy: str | None = field(default=None, repr=False)  # may hold the proxy's password


@dataclass(frozen=True)
class SharedLimitSettings:
    """``--redis-url`` and its companions: one limit for every process on the key."""

    redis_url: str = field(repr=False)  # may hold a Redis password
    key: str
    on_redis_error: Literal["wait", "local"] = "wait"
    processes: int = 1


def _options_from_args(args: argparse.Namespace) -> CampaignOptions:
    try:
        return CampaignOptions(
            chunk_size=args.chunk_size,
            concurrency=args.concurrency,
            rate=args.rate,
            calls_per_second=args.calls_per_second,
            burst=args.burst,
            adaptive=False if args.no_adaptive else None,
            retry=dataclasses.replace(
                _DEFAULTS.retry,
                max_attempts=args.max_attempts,
                retry_ambiguous=args.retry_ambiguous,
            ),
            default_region=args.default_region.upper() if args.default_region else None,
            dedupe=not args.no_dedupe,
            allow_repeats_with_different_variables=args.allow_repeats,
            allow_vanity_numbers=args.allow_vanity_numbers,
            multiline_values=args.multiline_values,
            resend_unknown=args.resend_unknown,
            grace_period=args.grace_period,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _settings_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> CampaignSettings:
    base_url = args.base_url or env.get("PROACTIVE_BASE_URL")
    if not base_url:
        raise UsageError("no API base URL: pass --base-url URL or set PROACTIVE_BASE_URL")
    token = _read_token(args.token_file, env)
    return CampaignSettings(
        targets=args.recipients_file,
        base_url=base_url,
        token=token,
        template=_template_from_args(args),
        options=_options_from_args(args),
        journal=args.journal,
        report=_report_path(args, args.recipients_file),
        progress=not args.no_progress,
        ca_file=args.ca_file,
        shared_limit=_shared_limit_from_args(args, env, base_url),
        timeout=_timeout_from_args(args),
        proxy=_proxy_from_args(args),
    )


def _timeout_from_args(args: argparse.Namespace) -> Timeout:
    return Timeout(
        connect=args.connect_timeout or DEFAULT_TIMEOUT.connect,
        read=args.read_timeout or DEFAULT_TIMEOUT.read,
        total=args.timeout or DEFAULT_TIMEOUT.total,
    )


def _proxy_from_args(args: argparse.Namespace) -> str | None:
    proxy: str | None = args.proxy
    if proxy is not None and not proxy.startswith(("http://", "https://")):
        # Not echoed: the URL may hold the proxy's password.
        raise UsageError("--proxy must be an http:// or https:// URL")
    return proxy


def _shared_limit_from_args(
    args: argparse.Namespace, env: Mapping[str, str], base_url: str
) -> SharedLimitSettings | None:
    redis_url = args.redis_url or env.get("PROACTIVE_REDIS_URL")
    if not redis_url:
        if args.limit_key:
            raise UsageError("--limit-key names a shared limit: give --redis-url too")
        return None
    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise UsageError("--redis-url must start with redis://, rediss:// or unix://")
    if args.calls_per_second is not None:
        raise UsageError("--calls-per-second is not shared through Redis: use --rate")
    if args.no_adaptive and args.rate is None:
        return None  # no limit at all: nothing to share (Redis is not used)
    return SharedLimitSettings(
        redis_url=redis_url,
        key=args.limit_key or default_limit_key(base_url, args.channel_id),
        on_redis_error="local" if args.processes else "wait",
        processes=args.processes or 1,
    )


def _read_token(token_file: str | None, env: Mapping[str, str]) -> str:
    """The token from --token-file (first) or PROACTIVE_TOKEN; never from a flag."""
    if token_file is not None:
        if not os.path.exists(token_file):
            # Not echoed: a token pasted where its file's path belongs must not reach logs.
            raise UsageError(
                "--token-file: no such file (give the path of a file holding the token)"
            )
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
    token = env.get("PROACTIVE_TOKEN", "").strip()
    if not token:
        raise UsageError(
            "no API token: set PROACTIVE_TOKEN or pass --token-file PATH "
            "(there is no token flag: it would show in process lists and shell history)"
        )
    return token


def _template_from_args(args: argparse.Namespace) -> ProactiveConversationRequest:
    fields: dict[str, Any] = {
        "channel_id": args.channel_id,
        "bot_id": args.bot_id,
        "conversation_template_id": args.template_id,
    }
    optional = {
        "queue_id": args.queue_id,
        "user_id": args.user_id,
        "counterpart_user_id": args.counterpart_user_id,
        "conversation_integration_type": args.integration_type,
    }
    fields.update({name: value for name, value in optional.items() if value is not None})
    if args.live_agent:
        fields["live_agent"] = True
    if args.account_id:
        fields["account_ids"] = list(args.account_id)
    if args.var:
        fields["content_variables"] = dict(args.var)
    return ProactiveConversationRequest(**fields)


def _default_report_path(targets: str, kind: str = "jsonl") -> str:
    """``recipients.csv`` -> ``recipients.report.jsonl`` (or ``.report.csv``), next to the
    input (standard input: ``stdin.report.jsonl`` here)."""
    if targets == STDIN:
        return f"stdin.report.{kind}"
    path = Path(targets)
    return str(path.with_name(f"{path.stem}.report.{kind}"))


def _report_path(args: argparse.Namespace, targets: str) -> str:
    """``--report`` and ``--report-format`` agreed: a CSV report is a ``.csv`` file."""
    wanted = getattr(args, "report_format", None)
    if not args.report:
        return _default_report_path(targets, wanted or "jsonl")
    if wanted is not None and report_format(args.report) != wanted:
        raise UsageError(
            f"--report-format {wanted}: the report path must end with "
            f"{'.csv' if wanted == 'csv' else 'anything but .csv'} ({args.report})"
        )
    return str(args.report)


def _check_targets_file(path: str) -> None:
    """Fail fast (before any report or journal is touched) when the file cannot be read at all."""
    records = read_records(path)
    try:
        next(records, None)
    finally:
        close: Callable[[], None] | None = getattr(records, "close", None)
        if close is not None:
            close()


# -- running a campaign ------------------------------------------------------------


@dataclass
class CampaignResult:
    """How a run ended: the summary, and whether it was interrupted."""

    summary: CampaignSummary
    interrupted: bool
    fatal: str | None = None
    """One line on why a fatal answer (401, 403, TLS) stopped the run."""

    @property
    def exit_code(self) -> int:
        if self.fatal is not None:
            return EXIT_USAGE
        if self.interrupted or self.summary.interrupted:
            return EXIT_INTERRUPTED
        if self.summary.counts[OutcomeStatus.UNKNOWN]:
            return EXIT_UNKNOWN
        if self.summary.counts[OutcomeStatus.FAILED]:
            return EXIT_FAILED
        return EXIT_OK


async def run_campaign(settings: CampaignSettings, *, stderr: Console) -> CampaignResult:
    """Run one campaign with progress and signal handling; user-fixable errors: UsageError."""
    client = _make_client(settings)
    shared = _make_shared_limit(settings)
    async with client, contextlib.AsyncExitStack() as stack:
        if shared is not None:
            stack.push_async_callback(shared.aclose)
        campaign = _make_campaign(client, settings, shared)
        try:
            await _check_journal(campaign, settings.journal)
            display = choose_display(settings.progress, campaign.total, stderr)
            interrupted = await _drive(campaign, display, settings.options.grace_period)
        except InputError as exc:
            raise UsageError(str(exc)) from exc
        except JournalError as exc:
            raise UsageError(str(exc)) from exc
        except OSError as exc:
            raise UsageError(os_error_text(exc)) from exc
        except ProactiveError as exc:
            if not exc.fatal or campaign.aborted is not exc:
                raise
            return CampaignResult(campaign.summary, False, fatal=_fatal_text(exc, settings))
    return CampaignResult(campaign.summary, interrupted)


def _fatal_text(exc: ProactiveError, settings: CampaignSettings) -> str:
    """The one line that tells the operator why the run stopped and what to do."""
    resume = (
        "; records not sent stay unsent in the journal: resume with the same --journal"
        if settings.journal
        else ""
    )
    if isinstance(exc, AuthenticationError):
        why = f"authentication failed: {exc.message}; check PROACTIVE_TOKEN (or --token-file)"
    elif isinstance(exc, PermissionDeniedError):
        why = f"permission denied: {exc.message}; the token may not use this channel or bot"
    elif isinstance(exc, TLSError):
        hint = "" if settings.ca_file else "; for a private CA pass --ca-file PATH (PEM)"
        why = f"{exc.message}{hint}"
    else:
        why = exc.message
    return why + resume


def _make_client(settings: CampaignSettings) -> AsyncClient:
    try:
        return AsyncClient(
            settings.base_url,
            settings.token,
            limits=Limits(max_connections=max(100, settings.options.concurrency)),
            verify=settings.ca_file if settings.ca_file is not None else True,
            timeout=settings.timeout,
            proxy=settings.proxy,
        )
    except ClientStateError as exc:
        raise UsageError(str(exc)) from exc


def _make_shared_limit(settings: CampaignSettings) -> SharedRateLimit | None:
    shared = settings.shared_limit
    if shared is None:
        return None
    options = settings.options
    try:
        return SharedRateLimit(
            shared.redis_url,
            key=shared.key,
            rate=options.rate,
            burst=options.burst,
            tuning=options.tuning,
            on_redis_error=shared.on_redis_error,
            processes=shared.processes,
        )
    except (ValueError, ImportError) as exc:
        raise UsageError(str(exc)) from exc


def _make_campaign(
    client: AsyncClient, settings: CampaignSettings, shared: SharedRateLimit | None = None
) -> Campaign:
    options = settings.options
    if shared is not None:
        # The pace is the shared limit's: the options keep no local one.
        options = dataclasses.replace(
            options, rate=None, burst=None, calls_per_second=None, adaptive=None
        )

    def count_error(outcome: Outcome) -> None:
        campaign.summary.note_outcome(outcome)  # for the summary's top errors

    try:
        campaign = Campaign(
            client,
            template=settings.template,
            targets=settings.targets,
            options=options,
            rate_limit=shared,
            journal=settings.journal,
            report=settings.report,
            on_outcome=count_error,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return campaign


async def _check_journal(campaign: Campaign, path: str | None) -> None:
    """Refuse another campaign's journal before the run opens (and truncates) the report.

    ``Campaign.run`` opens the report before the journal, so a refused resume would
    otherwise empty the report of the run being resumed.
    """
    if path is None:
        return
    if "://" not in path and not await asyncio.to_thread(os.path.exists, path):
        return
    # The campaign's own identity: the check must be the one the run makes, or it could
    # refuse what the run accepts.
    journal = await open_journal(path, campaign.identity(), secrets=campaign.client.secrets)
    await journal.aclose()


def os_error_text(exc: OSError) -> str:
    name = exc.filename if exc.filename is not None else "file"
    return f"{name}: {exc.strerror or exc}"


async def _drive(campaign: Campaign, display: ProgressDisplay, grace_period: float) -> bool:
    """Run the campaign under progress and signal handlers; True when it was interrupted."""
    from ._progress import ProgressWatcher

    loop = asyncio.get_running_loop()
    runner = asyncio.create_task(campaign.run())
    limit = campaign.rate_limit
    paused = (lambda: limit.paused) if isinstance(limit, RateLimit) else None
    watcher = ProgressWatcher(campaign.summary, campaign.total, display, paused)
    watcher.start()

    def stop() -> None:
        display.note(
            f"interrupted: no new calls; calls in flight get up to {grace_period:g}s to finish "
            "(interrupt again to exit at once)"
        )
        campaign.stop()
        # stop() alone only ends the run once the feeder drains; cancelling runs the
        # campaign's own wind-down: feeder stopped, in-flight calls awaited, all recorded.
        runner.cancel()

    interrupts = _Interrupts(stop, lambda: _exit_now(campaign, display))
    interrupts.install(loop)
    try:
        await asyncio.wait([runner])
    finally:
        interrupts.remove(loop)
        failed = runner.done() and not runner.cancelled() and runner.exception() is not None
        await watcher.finish(show=not failed)  # an error message, not "0/N records", last
    if runner.cancelled():
        return True
    runner.result()  # raises what the run raised
    return False  # a signal that came after the end changes nothing


class _Interrupts:
    """SIGINT / SIGTERM: the first calls ``first``; any later one calls ``again``."""

    signals = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, first: Callable[[], None], again: Callable[[], None]) -> None:
        self._first = first
        self._again = again
        self.fired = 0
        self._installed: list[signal.Signals] = []

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in self.signals:
            try:
                loop.add_signal_handler(sig, self._fire)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not the main thread, or no signal support: Ctrl-C stays default
            self._installed.append(sig)

    def remove(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in self._installed:
            loop.remove_signal_handler(sig)
        self._installed.clear()

    def _fire(self) -> None:
        self.fired += 1
        (self._first if self.fired == 1 else self._again)()


def _exit_now(campaign: Campaign, display: ProgressDisplay) -> NoReturn:
    """The second interrupt: flush what is cheap to flush, then leave at once."""
    # The report writer is the campaign's own; flushing its buffer here keeps the lines of
    # outcomes already decided. The journal needs nothing: each SQLite commit is atomic,
    # and a line left in flight is reported unknown on resume, never resent.
    with contextlib.suppress(OSError, ValueError):
        campaign.flush_report()
    display.close()
    sys.stderr.write(
        "interrupted again: exiting now. Resume with the same --journal; records that "
        "were in flight are reported unknown, not resent.\n"
    )
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


# -- the summary -------------------------------------------------------------------


def summary_table(summary: CampaignSummary, *, report: str | None, journal: str | None) -> Table:
    """The end-of-campaign table: counts per status, rates, calls, latency, files."""
    from rich.table import Table

    table = Table(title="campaign summary", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right", overflow="fold")  # paths shown whole
    for status in OutcomeStatus:
        table.add_row(str(status), f"{summary.counts[status]:,}")
    table.add_row("records", f"{summary.records:,}")
    if summary.resumed:
        table.add_row("from the journal", f"{summary.resumed:,}")
    table.add_row("elapsed", f"{summary.elapsed:.2f} s")
    table.add_row("targets/s", f"{summary.targets_per_second:,.0f}")
    table.add_row("calls", f"{summary.calls:,}")
    table.add_row("retries", f"{summary.retries:,}")
    table.add_row("429s", f"{summary.throttled:,}")
    for label, value in (
        ("latency p50", summary.latency_p50),
        ("latency p95", summary.latency_p95),
        ("latency p99", summary.latency_p99),
    ):
        table.add_row(label, "-" if value is None else f"{value * 1e3:.1f} ms")
    table.add_row("report", report or "-")
    table.add_row("journal", journal or "-")
    for index, error in enumerate(summary.top_errors()):
        table.add_row("top errors" if index == 0 else "", error.text())
    return table


def _advice(result: CampaignResult, journal: str | None) -> str | None:
    """What to do next, for the exit codes that need a decision."""
    unknown = result.summary.counts[OutcomeStatus.UNKNOWN]
    resume = "resume with the same --journal" if journal else "add --journal to make runs resumable"
    if result.exit_code == EXIT_INTERRUPTED:
        return f"interrupted: the report covers the records handled so far; {resume}."
    if unknown:
        return (
            f"{unknown:,} record(s) ended unknown: they may have been sent. Do not re-run "
            'blindly; check the report (status "unknown")'
            + ("; a resume with the same --journal does not resend them." if journal else ".")
        )
    return None


def print_summary(
    result: CampaignResult, settings: CampaignSettings, *, json_summary: bool, stderr: Console
) -> None:
    table = summary_table(result.summary, report=settings.report, journal=settings.journal)
    if json_summary:
        stderr.print(table)
        sys.stdout.write(msgspec.json.encode(result.summary.as_dict()).decode() + "\n")
        sys.stdout.flush()
    else:
        console(sys.stdout).print(table)
    if result.fatal is not None:
        stderr.print(f"{_PROG}: error: {result.fatal}", highlight=False)
        return
    advice = _advice(result, settings.journal)
    if advice:
        stderr.print(advice, highlight=False)


# -- subcommands -------------------------------------------------------------------


def _campaign_command(args: argparse.Namespace) -> int:
    if args.recipients_file != STDIN:
        return _run_or_plan(args)
    with _spooled_stdin() as path:
        args.report = _report_path(args, STDIN)
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
        return _dry_run_command(args)
    settings = _settings_from_args(args, os.environ)
    try:
        _check_targets_file(settings.targets)
    except InputError as exc:
        raise UsageError(str(exc)) from exc
    stderr = stderr_console()
    with _logging(args.verbose, args.log_file, (settings.token,)):
        result = asyncio.run(run_campaign(settings, stderr=stderr))
    print_summary(result, settings, json_summary=args.json_summary, stderr=stderr)
    return result.exit_code


class _LogScrubber(logging.Filter):
    """No secret and no whole phone number reaches a log line, whoever wrote it."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self._secrets = [secret for secret in secrets if secret]

    def filter(self, record: logging.LogRecord) -> bool:
        text = mask_phones_in(record.getMessage())
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        record.msg, record.args = text, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_phones_in(record.exc_text)
            for secret in self._secrets:
                record.exc_text = record.exc_text.replace(secret, "[redacted]")
        return True


@contextlib.contextmanager
def _logging(verbose: int, log_file: str | None, secrets: Sequence[str]) -> Iterator[None]:
    """``-v`` (INFO) / ``-vv`` (DEBUG) on stderr, ``--log-file`` at DEBUG: the
    ``proactive_async`` logger's lines, the token redacted and phone numbers masked."""
    logger = logging.getLogger("proactive_async")
    handlers: list[logging.Handler] = []
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.INFO if verbose == 1 else logging.DEBUG)
        handlers.append(handler)
    if log_file is not None:
        try:
            handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--log-file: {os_error_text(exc)}") from exc
        handler.setLevel(logging.DEBUG)
        handlers.append(handler)
    level = logger.level
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_LogScrubber(secrets))
        logger.addHandler(handler)
    if handlers:
        logger.setLevel(min(handler.level for handler in handlers))
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(level)


@dataclass
class DryRun:
    """What a campaign would do with a file: records by outcome, calls and their sizes."""

    summary: CampaignSummary = field(default_factory=CampaignSummary)
    calls: int = 0
    targets: int = 0
    smallest: int = 0
    largest: int = 0

    @property
    def sendable(self) -> bool:
        counts = self.summary.counts
        return not (counts[OutcomeStatus.REJECTED] or counts[OutcomeStatus.DUPLICATE])

    def add_call(self, size: int) -> None:
        self.calls += 1
        self.targets += size
        self.smallest = size if self.calls == 1 else min(self.smallest, size)
        self.largest = max(self.largest, size)

    def as_dict(self) -> dict[str, object]:
        counts = self.summary.counts
        return {
            "dry_run": True,
            "records": self.summary.records,
            "valid": self.targets,
            "rejected": counts[OutcomeStatus.REJECTED],
            "duplicate": counts[OutcomeStatus.DUPLICATE],
            "calls": self.calls,
            "targets_per_call": {
                "min": self.smallest,
                "mean": round(self.targets / self.calls, 1) if self.calls else 0,
                "max": self.largest,
            },
            "top_rejections": [
                error.as_dict()
                for error in self.summary.top_errors(10, statuses=(OutcomeStatus.REJECTED,))
            ],
        }


async def plan_dry_run(
    targets: str, options: CampaignOptions, report: ReportWriter | None
) -> DryRun:
    """Read and plan the whole file as a campaign would, sending nothing."""
    from ._campaign import file_records
    from ._planner import Planner

    result = DryRun()
    summary = result.summary
    planner = Planner(options.planner)
    records = file_records(targets, multiline=options.multiline_values)
    async with contextlib.aclosing(planner.plan(records)) as plan:
        async for item in plan:
            if isinstance(item, Outcome):
                summary.counts[item.status] += 1
                summary.records += 1
                summary.note_outcome(item)
                if report is not None:
                    report.write(item)
                continue
            result.add_call(len(item.targets))
            summary.records += len(item.targets)
    return result


def _dry_run_command(args: argparse.Namespace) -> int:
    """``campaign --dry-run``: no token, no network; the report holds the records not sent."""
    from ._campaign import _check_report_path

    options = _options_from_args(args)
    targets: str = args.recipients_file
    report_path = _report_path(args, targets)
    try:
        _check_targets_file(targets)
        _check_report_path(report_path, targets, args.journal)
        report = ReportWriter(report_path)
    except InputError as exc:
        raise UsageError(str(exc)) from exc
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(os_error_text(exc)) from exc
    try:
        result = asyncio.run(plan_dry_run(targets, options, report))
    except InputError as exc:
        raise UsageError(str(exc)) from exc
    finally:
        report.close()
    table = dry_run_table(result, report_path)
    if args.json_summary:
        stderr_console().print(table)
        sys.stdout.write(msgspec.json.encode(result.as_dict()).decode() + "\n")
        sys.stdout.flush()
    else:
        console(sys.stdout).print(table)
    return EXIT_OK if result.sendable else EXIT_FAILED


def dry_run_table(result: DryRun, report: str) -> Table:
    """The dry run's table: records by outcome, the calls, the top rejection reasons."""
    from rich.table import Table

    counts = result.summary.counts
    table = Table(title="dry run: nothing sent", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right", overflow="fold")
    table.add_row("records", f"{result.summary.records:,}")
    table.add_row("valid", f"{result.targets:,}")
    table.add_row("rejected", f"{counts[OutcomeStatus.REJECTED]:,}")
    table.add_row("duplicate", f"{counts[OutcomeStatus.DUPLICATE]:,}")
    table.add_row("calls", f"{result.calls:,}")
    if result.calls:
        mean = result.targets / result.calls
        sizes = f"min {result.smallest:,}, mean {mean:,.1f}, max {result.largest:,}"
        table.add_row("targets per call", sizes)
    rejections = result.summary.top_errors(5, statuses=(OutcomeStatus.REJECTED,))
    for index, error in enumerate(rejections):
        table.add_row(
            "top rejections" if index == 0 else "", f"{error.records:,} x {error.message}"
        )
    table.add_row("report", f"{report} (rejected and duplicate records)")
    return table


def _simulate_command(argv: Sequence[str]) -> int:
    from .simulator import main as simulator_main

    try:
        return int(simulator_main(list(argv)) or 0)
    except SystemExit as exc:  # its argparse: --help and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def stderr_console() -> Console:
    return console(sys.stderr)


def console(file: IO[str]) -> Console:
    from rich.console import Console

    # soft_wrap: a long message stays one line in a log instead of breaking at 80 columns.
    return Console(file=file, highlight=False, soft_wrap=True)


# -- the demo ----------------------------------------------------------------------


def _demo_command(args: argparse.Namespace) -> int:
    from ._demo import demo_command  # the simulator (aiohttp.web) only when it is used

    return demo_command(args)


# -- the parser --------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Send WhatsApp proactive conversations at scale, safely.",
        epilog=_EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_campaign_parser(commands)
    commands.add_parser(
        "simulate",
        help="serve the API simulator (see: proactive-async simulate --help)",
        add_help=False,
    )
    _add_demo_parser(commands)
    from ._distributed_cli import add_distributed_parsers

    add_distributed_parsers(
        commands, add_campaign_options=_add_campaign_options, campaign_inputs=_campaign_inputs
    )
    return parser


def _add_campaign_parser(commands: Any) -> None:
    p = commands.add_parser(
        "campaign",
        help="send one template to every recipient of a CSV/JSONL file",
        description="Send one template to every recipient of a CSV/JSONL file. The base URL "
        "comes from --base-url or PROACTIVE_BASE_URL; the token from PROACTIVE_TOKEN or "
        "--token-file (never a flag).",
        epilog=_EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # "--token" must not be taken for "--token-file"
    )
    p.add_argument(
        "recipients_file",
        metavar="RECIPIENTS_FILE",
        help=".csv, .tsv, .jsonl, or .txt (a CSV, or one number a line); - for standard "
        f"input. CSV target columns: {COLUMN_ALIASES}; every other column is a content "
        "variable",
    )
    p.set_defaults(handler=_campaign_command)
    _add_campaign_options(p)
    out = p.add_argument_group("connection and output")
    out.add_argument("--base-url", metavar="URL", help="default: $PROACTIVE_BASE_URL")
    out.add_argument(
        "--token-file", metavar="PATH", help="a file holding the token (default: $PROACTIVE_TOKEN)"
    )
    out.add_argument(
        "--ca-file",
        metavar="PATH",
        help="a PEM bundle of CA certificates to trust (a private CA); verification stays on",
    )
    out.add_argument(
        "--connect-timeout",
        type=_positive_float,
        metavar="SECONDS",
        help=f"to open a connection (default {DEFAULT_TIMEOUT.connect:g})",
    )
    out.add_argument(
        "--read-timeout",
        type=_positive_float,
        metavar="SECONDS",
        help=f"between two reads of an answer (default {DEFAULT_TIMEOUT.read:g})",
    )
    out.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help=f"for one whole attempt (default {DEFAULT_TIMEOUT.total:g})",
    )
    out.add_argument(
        "--proxy",
        metavar="URL",
        help="an HTTP proxy, credentials in the URL (http://user:pass@host:3128); never echoed",
    )
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
        "report lists the rejected and duplicate records. Exit 0 when every record is "
        "sendable, else 1",
    )
    out.add_argument(
        "--json-summary",
        action="store_true",
        help="print the summary as JSON on stdout (the table goes to stderr)",
    )


def _add_campaign_options(p: argparse.ArgumentParser) -> None:
    """The template, pace and safety flags: shared by ``campaign`` and ``enqueue``."""
    req = p.add_argument_group("the template")
    req.add_argument("--channel-id", type=_int, required=True, metavar="N")
    req.add_argument("--bot-id", type=_int, required=True, metavar="N")
    req.add_argument("--template-id", type=_int, required=True, metavar="N")
    req.add_argument(
        "--var",
        type=_key_value,
        action="append",
        metavar="KEY=VALUE",
        help="a content variable for every record (a CSV column of the same name wins)",
    )
    req.add_argument("--live-agent", action="store_true")
    for flag in ("--queue-id", "--user-id", "--counterpart-user-id", "--integration-type"):
        req.add_argument(flag, type=_int, metavar="N")
    req.add_argument(
        "--account-id", type=_int, action="append", metavar="N", help="repeat for several accounts"
    )
    _add_pace_options(p)
    _add_safety_options(p)


def _campaign_inputs(
    args: argparse.Namespace,
) -> tuple[ProactiveConversationRequest, CampaignOptions]:
    return _template_from_args(args), _options_from_args(args)


def _add_pace_options(p: argparse.ArgumentParser) -> None:
    pace = p.add_argument_group("pace")
    pace.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=_DEFAULTS.chunk_size,
        metavar="N",
        help=f"targets per call (default {_DEFAULTS.chunk_size})",
    )
    pace.add_argument(
        "--concurrency",
        type=_positive_int,
        default=_DEFAULTS.concurrency,
        metavar="N",
        help=f"calls in flight (default {_DEFAULTS.concurrency})",
    )
    pace.add_argument(
        "--rate",
        type=_positive_float,
        metavar="TARGETS_PER_S",
        help="target rate cap; without it the rate adapts to the server's 429s",
    )
    pace.add_argument("--calls-per-second", type=_positive_float, metavar="N")
    pace.add_argument(
        "--burst",
        type=_positive_float,
        metavar="N",
        help="token bucket size in targets (default: one second of --rate)",
    )
    pace.add_argument(
        "--redis-url",
        metavar="URL",
        help="share the rate limit through Redis with every process on the same key "
        "(default: $PROACTIVE_REDIS_URL); --rate is then the total for all of them",
    )
    pace.add_argument(
        "--limit-key",
        metavar="KEY",
        help="the shared limit's name (default: from the API host and the channel id, "
        "so campaigns on one channel share it)",
    )
    pace.add_argument(
        "--processes",
        type=_positive_int,
        metavar="N",
        help="with --redis-url: if Redis is unreachable, pace locally at --rate / N "
        "(default: wait for Redis; never send unpaced)",
    )
    pace.add_argument(
        "--no-adaptive",
        action="store_true",
        help="do not adapt the rate to 429s (with no --rate: no limit)",
    )


def _add_safety_options(p: argparse.ArgumentParser) -> None:
    safe = p.add_argument_group("records, retries and resuming")
    safe.add_argument(
        "--journal",
        metavar="PATH",
        help="journal: a file path (SQLite) or postgresql://...?campaign=NAME; makes the "
        "campaign resumable (re-run to resume)",
    )
    safe.add_argument(
        "--report",
        metavar="PATH",
        help='the report, one line per record in input order; its "line" counts data '
        "records from 1 (a CSV header and blank lines are not counted), not file lines "
        "(default: RECIPIENTS_FILE's name with .report.jsonl, or .report.csv)",
    )
    safe.add_argument(
        "--report-format",
        choices=REPORT_FORMATS,
        help="jsonl (default) or csv, for spreadsheets (a .csv --report is CSV anyway)",
    )
    safe.add_argument(
        "--resend-unknown",
        action="store_true",
        help="on resume, resend records that may have been sent (duplicates!)",
    )
    safe.add_argument(
        "--retry-ambiguous",
        action="store_true",
        help="retry failures after which the server may have processed the call (duplicates!)",
    )
    safe.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=_DEFAULTS.retry.max_attempts,
        metavar="N",
        help=f"attempts per call (default {_DEFAULTS.retry.max_attempts})",
    )
    safe.add_argument(
        "--default-region",
        metavar="XX",
        help="region of numbers written without +country (e.g. BR)",
    )
    safe.add_argument(
        "--no-dedupe", action="store_true", help="send a number again each time it appears"
    )
    safe.add_argument(
        "--allow-repeats",
        action="store_true",
        help="send a repeated number again when its variables differ",
    )
    safe.add_argument(
        "--allow-vanity-numbers",
        action="store_true",
        help="read letters in a number as keypad digits (1-800-FLOWERS); "
        "by default such numbers are rejected",
    )
    safe.add_argument(
        "--multiline-values",
        action="store_true",
        help="accept CSV quoted values spanning several lines; by default such "
        "a record is rejected (a stray quote must not merge other rows)",
    )
    safe.add_argument(
        "--grace-period",
        type=_positive_float,
        default=_DEFAULTS.grace_period,
        metavar="SECONDS",
        help="on Ctrl-C, how long calls in flight may take to finish "
        f"(default {_DEFAULTS.grace_period:g})",
    )


def _add_demo_parser(commands: Any) -> None:
    p = commands.add_parser(
        "demo",
        help="a 20,000-recipient campaign against the embedded simulator, then an audit",
        description="Start the simulator with realistic faults and a hidden rate limit, run "
        "a campaign against it and check the simulator's audit against the report: nothing "
        "lost, nothing sent twice.",
        epilog="exit codes: 0 the audit found no discrepancy, 1 it found one (listed), "
        "130 interrupted.",
        allow_abbrev=False,
    )
    p.add_argument("--records", type=_positive_int, default=20_000, metavar="N")
    p.add_argument("--seed", type=_int, default=1, metavar="N")
    p.add_argument("--workdir", metavar="DIR", help="default: a fresh temporary directory")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_demo_command)


# -- entry point -------------------------------------------------------------------


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
            return _simulate_command(args_list[1:])
        _refuse_token_flag(args_list)
        try:
            args = build_parser().parse_args(args_list)
        except SystemExit as exc:  # --help, --version and usage errors
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except UsageError as exc:
        sys.stderr.write(f"{_PROG}: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"{_PROG}: interrupted\n")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    # Run as ``python -m proactive_async.cli`` this file is ``__main__``, and the command
    # modules import ``proactive_async.cli``: a second copy, whose UsageError the first
    # would not catch. Run the imported module's main, so there is one of each.
    from proactive_async.cli import main as imported_main

    sys.exit(imported_main())
