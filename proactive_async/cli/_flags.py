"""The flag groups of the commands, and what the flags turn into (a template, options).

Each ``add_*_flags`` adds one group to a parser, so a command takes exactly the groups it
honours: ``campaign`` takes them all; ``enqueue`` those stored with a campaign
(``add_campaign_options``: template, planning, sending); ``worker`` the connection group.
Defaults stay where they are written once (``CampaignOptions``, the client's ``Timeout``):
a flag not given is None, and the help only quotes the default. ``options_from_args``
reads whichever groups the command has.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .._config import DEFAULT_TIMEOUT
from .._input import COLUMN_ALIASES
from .._loop import FAST_EXTRA, LOOP_NAMES, EventLoop, LoopUnavailableError, choose_loop
from .._models import INT32_MAX, INT32_MIN, INTEGRATION_TYPES, ProactiveConversationRequest
from .._options import CampaignOptions
from .._report import REPORT_FORMATS, report_format
from ._common import JOURNAL_PASSWORD_HELP, REDIS_PASSWORD_HELP, STDIN, UsageError

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "add_api_flags",
    "add_campaign_options",
    "add_connection_flags",
    "add_loop_flag",
    "add_pace_flags",
    "add_planning_flags",
    "add_recipients_file",
    "add_record_flags",
    "add_sending_flags",
    "add_shared_limit_flags",
    "add_stop_flags",
    "add_template_flags",
    "campaign_inputs",
    "event_loop",
    "int32_arg",
    "int_arg",
    "integration_type_arg",
    "options_from_args",
    "positive_float",
    "positive_int",
    "report_path",
    "template_from_args",
]

_DEFAULTS: Final = CampaignOptions()


# -- argument types ----------------------------------------------------------------


def int_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def int32_arg(text: str) -> int:
    """An integer the API types as int32 (its ids): past that range the server refuses it."""
    value = int_arg(text)
    if not INT32_MIN <= value <= INT32_MAX:
        raise argparse.ArgumentTypeError(
            f"{value} does not fit the API's 32-bit integer ({INT32_MIN} to {INT32_MAX})"
        )
    return value


def integration_type_arg(text: str) -> int:
    value = int_arg(text)
    first, last = INTEGRATION_TYPES[0], INTEGRATION_TYPES[-1]
    if value not in INTEGRATION_TYPES:
        raise argparse.ArgumentTypeError(
            f"{value} is not a conversationIntegrationType of the API ({first} to {last})"
        )
    return value


def positive_int(text: str) -> int:
    value = int_arg(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
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


# -- the groups --------------------------------------------------------------------


def add_recipients_file(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "recipients_file",
        metavar="RECIPIENTS_FILE",
        help=".csv, .tsv, .jsonl, or .txt (a CSV, or one number a line); - for standard "
        f"input. CSV target columns: {COLUMN_ALIASES}; every other column is a content "
        "variable",
    )


def add_template_flags(p: argparse.ArgumentParser) -> None:
    """The request every record is sent with."""
    req = p.add_argument_group("the template")
    req.add_argument("--channel-id", type=int32_arg, required=True, metavar="N")
    req.add_argument("--bot-id", type=int32_arg, required=True, metavar="N")
    req.add_argument("--template-id", type=int32_arg, required=True, metavar="N")
    req.add_argument(
        "--var",
        type=_key_value,
        action="append",
        metavar="KEY=VALUE",
        help="a content variable for every record (a CSV column of the same name wins)",
    )
    req.add_argument("--live-agent", action="store_true")
    for flag in ("--queue-id", "--user-id", "--counterpart-user-id"):
        req.add_argument(flag, type=int32_arg, metavar="N")
    req.add_argument("--integration-type", type=integration_type_arg, metavar="0-18")
    req.add_argument(
        "--account-id",
        type=int32_arg,
        action="append",
        metavar="N",
        help="repeat for several accounts",
    )


def add_planning_flags(p: argparse.ArgumentParser) -> None:
    """How records become calls: which are valid, which are duplicates, how many a call."""
    plan = p.add_argument_group("planning")
    plan.add_argument(
        "--chunk-size",
        type=positive_int,
        metavar="N",
        help=f"targets per call (default {_DEFAULTS.chunk_size})",
    )
    plan.add_argument(
        "--default-region",
        metavar="XX",
        help="region of numbers written without +country (e.g. BR)",
    )
    plan.add_argument(
        "--no-dedupe", action="store_true", help="send a number again each time it appears"
    )
    plan.add_argument(
        "--allow-repeats",
        action="store_true",
        help="send a repeated number again when its variables differ",
    )
    plan.add_argument(
        "--allow-vanity-numbers",
        action="store_true",
        help="read letters in a number as keypad digits (1-800-FLOWERS); "
        "by default such numbers are rejected",
    )
    plan.add_argument(
        "--recipient-column",
        metavar="NAME",
        help="the CSV column holding the phone numbers, when it is not one of the built-in "
        "names (e.g. telefone); then only that column is read as them",
    )
    plan.add_argument(
        "--multiline-values",
        action="store_true",
        help="accept CSV quoted values spanning several lines; by default such "
        "a record is rejected (a stray quote must not merge other rows)",
    )


def add_sending_flags(p: argparse.ArgumentParser) -> None:
    """The rate and the retries: what a campaign keeps however (and wherever) it is sent."""
    send = p.add_argument_group("sending")
    send.add_argument(
        "--rate",
        type=positive_float,
        metavar="TARGETS_PER_S",
        help="target rate cap; without it the rate adapts to the server's 429s",
    )
    send.add_argument(
        "--burst",
        type=positive_float,
        metavar="N",
        help="token bucket size in targets (default: one second of --rate)",
    )
    send.add_argument(
        "--no-adaptive",
        action="store_true",
        help="do not adapt the rate to 429s (with no --rate: no limit)",
    )
    send.add_argument(
        "--max-attempts",
        type=positive_int,
        metavar="N",
        help=f"attempts per call (default {_DEFAULTS.retry.max_attempts})",
    )
    send.add_argument(
        "--retry-ambiguous",
        action="store_true",
        help="retry failures after which the server may have processed the call (duplicates!)",
    )
    send.add_argument(
        "--resend-unknown",
        action="store_true",
        help="on resume, resend records that may have been sent (duplicates!)",
    )


def add_pace_flags(p: argparse.ArgumentParser) -> None:
    """How this process runs its calls: at once, per second, and when it is interrupted."""
    pace = p.add_argument_group("this process")
    pace.add_argument(
        "--concurrency",
        type=positive_int,
        metavar="N",
        help=f"calls in flight (default: $PROACTIVE_CONCURRENCY, else {_DEFAULTS.concurrency})",
    )
    pace.add_argument("--calls-per-second", type=positive_float, metavar="N")
    pace.add_argument(
        "--grace-period",
        type=positive_float,
        metavar="SECONDS",
        help="on Ctrl-C, how long calls in flight may take to finish "
        f"(default {_DEFAULTS.grace_period:g})",
    )
    add_loop_flag(pace)


def add_loop_flag(p: Any) -> None:
    """``--loop``: the event loop this process runs on (a parser or one of its groups)."""
    p.add_argument(
        "--loop",
        choices=LOOP_NAMES,
        help="the event loop: auto (uvloop when installed, else asyncio), asyncio, "
        f"or uvloop ({FAST_EXTRA}) (default: $PROACTIVE_LOOP, else auto)",
    )


def add_stop_flags(p: argparse.ArgumentParser) -> None:
    """When a run that cannot succeed stops, and what a resume sends again (``campaign``
    only: a distributed campaign keeps the defaults)."""
    stop = p.add_argument_group("stopping a run that cannot succeed, and resuming it")
    retry = _DEFAULTS.retry
    stop.add_argument(
        "--stop-unreachable-after",
        type=positive_float,
        metavar="SECONDS",
        help="stop (exit 2) when every attempt has failed to connect for this long with no "
        f"call reaching the API (default {retry.stop_unreachable_after:g})",
    )
    stop.add_argument(
        "--stop-ambiguous-after",
        type=positive_int,
        metavar="N",
        help="stop (exit 2) after N failures that may have been processed (500, timeout, "
        f"connection lost) with no call succeeding (default {retry.stop_ambiguous_after})",
    )
    stop.add_argument(
        "--max-retry-after",
        type=positive_float,
        metavar="SECONDS",
        help="the longest Retry-After waited for, and how long 429s with no call accepted "
        f"may go on before the run stops (exit 2) (default {retry.max_retry_after:g})",
    )
    stop.add_argument(
        "--resend-failed",
        action="store_true",
        help="on resume, also send the records that ended failed for a cause of the run "
        "(no connection, 429/503, a wrong token or URL), once it is fixed; they were "
        "certainly not created. Not 400/422 answers. Records a stopped run did not send "
        "are sent on resume without it",
    )


def add_shared_limit_flags(p: argparse.ArgumentParser) -> None:
    """One rate limit for every process on the same key, through Redis."""
    shared = p.add_argument_group("shared rate limit")
    shared.add_argument(
        "--redis-url",
        metavar="URL",
        help="share the rate limit through Redis with every process on the same key "
        "(default: $PROACTIVE_REDIS_URL); --rate is then the total for all of them; "
        + REDIS_PASSWORD_HELP,
    )
    shared.add_argument(
        "--limit-key",
        metavar="KEY",
        help="the shared limit's name (default: from the API host and the channel id, "
        "so campaigns on one channel share it)",
    )
    shared.add_argument(
        "--processes",
        type=positive_int,
        metavar="N",
        help="with --redis-url: if Redis is unreachable, pace locally at --rate / N "
        "(default: wait for Redis; never send unpaced)",
    )


def add_record_flags(p: argparse.ArgumentParser) -> None:
    """Where a local run keeps its state (the journal) and its outcomes (the report)."""
    rec = p.add_argument_group("journal and report")
    rec.add_argument(
        "--journal",
        metavar="PATH",
        help="journal: a file path (SQLite) or postgresql://...?campaign=NAME; makes the "
        "campaign resumable (re-run to resume); " + JOURNAL_PASSWORD_HELP,
    )
    rec.add_argument(
        "--report",
        metavar="PATH",
        help='the report, one line per record in input order; its "line" counts data '
        "records from 1 (a CSV header and blank lines are not counted), not file lines "
        "(default: RECIPIENTS_FILE's name with .report.jsonl, or .report.csv)",
    )
    rec.add_argument(
        "--report-format",
        choices=REPORT_FORMATS,
        help="jsonl (default) or csv, for spreadsheets (a .csv --report is CSV anyway)",
    )


def add_api_flags(p: argparse.ArgumentParser) -> None:
    """The API and its token (the token from a file or the environment, never a flag)."""
    api = p.add_argument_group("the API")
    api.add_argument("--base-url", metavar="URL", help="default: $PROACTIVE_BASE_URL")
    api.add_argument(
        "--token-file", metavar="PATH", help="a file holding the token (default: $PROACTIVE_TOKEN)"
    )


def add_connection_flags(p: argparse.ArgumentParser) -> None:
    """TLS trust, a proxy and the timeouts of every attempt."""
    net = p.add_argument_group("connection and TLS")
    net.add_argument(
        "--ca-file",
        metavar="PATH",
        help="a PEM bundle of CA certificates to trust (a private CA); verification stays on "
        "(default: $PROACTIVE_CA_FILE)",
    )
    net.add_argument(
        "--proxy",
        metavar="URL",
        help="an HTTP proxy, credentials in the URL (http://user:pass@host:3128); never "
        "echoed (default: $PROACTIVE_PROXY)",
    )
    for flag, variable, default, what in (
        ("--connect-timeout", "CONNECT_TIMEOUT", DEFAULT_TIMEOUT.connect, "to open a connection"),
        ("--read-timeout", "READ_TIMEOUT", DEFAULT_TIMEOUT.read, "between two reads of an answer"),
        ("--timeout", "TIMEOUT", DEFAULT_TIMEOUT.total, "for one whole attempt"),
    ):
        net.add_argument(
            flag,
            type=positive_float,
            metavar="SECONDS",
            help=f"{what} (default: $PROACTIVE_{variable}, else {default:g})",
        )


def add_campaign_options(p: argparse.ArgumentParser) -> None:
    """The groups a campaign keeps however and wherever it is sent: its template, how its
    records are planned, its rate and retries (``campaign`` and ``enqueue`` both take them)."""
    add_template_flags(p)
    add_planning_flags(p)
    add_sending_flags(p)


# -- what the flags mean -----------------------------------------------------------


def template_from_args(args: argparse.Namespace) -> ProactiveConversationRequest:
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


def options_from_args(
    args: argparse.Namespace, *, concurrency: int | None = None
) -> CampaignOptions:
    """The flags of whichever groups the command has; the rest keep CampaignOptions'
    defaults. ``concurrency``, when given, wins over ``--concurrency`` (it is the settings'
    value, which already took the flag or ``PROACTIVE_CONCURRENCY``)."""
    given = vars(args)
    fields: dict[str, Any] = {name: given[name] for name in _VALUES if given.get(name) is not None}
    fields.update({name: value for flag, (name, value) in _SWITCHES.items() if given.get(flag)})
    if concurrency is not None:
        fields["concurrency"] = concurrency
    if given.get("recipient_column") is not None:
        fields["recipient_column"] = given["recipient_column"]
    if given.get("default_region"):
        fields["default_region"] = given["default_region"].upper()
    retry: dict[str, Any] = {}
    if given.get("max_attempts") is not None:
        retry["max_attempts"] = given["max_attempts"]
    if given.get("retry_ambiguous"):
        retry["retry_ambiguous"] = True
    for name in ("stop_unreachable_after", "stop_ambiguous_after", "max_retry_after"):
        if given.get(name) is not None:
            retry[name] = given[name]
    if retry:
        fields["retry"] = dataclasses.replace(_DEFAULTS.retry, **retry)
    try:
        return CampaignOptions(**fields)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


# Flags that are CampaignOptions fields of the same name, and switches: flag -> (field, value).
_VALUES: Final = ("chunk_size", "concurrency", "rate", "calls_per_second", "burst", "grace_period")
_SWITCHES: Final = {
    "no_adaptive": ("adaptive", False),
    "no_dedupe": ("dedupe", False),
    "allow_repeats": ("allow_repeats_with_different_variables", True),
    "allow_vanity_numbers": ("allow_vanity_numbers", True),
    "multiline_values": ("multiline_values", True),
    "resend_unknown": ("resend_unknown", True),
    "resend_failed": ("resend_failed", True),
}


def event_loop(settings: Settings) -> EventLoop:
    """The loop of ``--loop`` or ``PROACTIVE_LOOP`` (the settings' ``loop``); a missing
    uvloop is a UsageError naming the extra to install."""
    try:
        return choose_loop(settings.loop)
    except LoopUnavailableError as exc:
        raise UsageError(str(exc)) from None


def campaign_inputs(
    args: argparse.Namespace,
) -> tuple[ProactiveConversationRequest, CampaignOptions]:
    """The template and the options, for a command that plans a file as ``campaign`` does."""
    return template_from_args(args), options_from_args(args)


def _default_report_path(targets: str, kind: str = "jsonl") -> str:
    """``recipients.csv`` -> ``recipients.report.jsonl`` (or ``.report.csv``), next to the
    input (standard input: ``stdin.report.jsonl`` here)."""
    if targets == STDIN:
        return f"stdin.report.{kind}"
    path = Path(targets)
    return str(path.with_name(f"{path.stem}.report.{kind}"))


def report_path(args: argparse.Namespace, targets: str) -> str:
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
