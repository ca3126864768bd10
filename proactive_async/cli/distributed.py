"""The distributed campaign commands: enqueue, worker, status, cancel (``report``, which
reads a SQLite journal too, is ``cli.report``).

Kept apart from ``campaign`` so that ``campaign`` and ``--help`` never import arq or
psycopg. Each command takes exactly the flags it honours: ``enqueue`` the template,
planning and sending groups (what is stored with the campaign for every worker);
``worker`` the API, connection and TLS groups (what each worker process uses).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import msgspec

from .._errors import JournalError
from ..journal import is_postgres
from . import _flags
from ._common import (
    EXIT_OK,
    JOURNAL_PASSWORD_HELP,
    REDIS_PASSWORD_HELP,
    UsageError,
    settings_from_flags,
    stderr_console,
)

if TYPE_CHECKING:
    from .._progress import RateMeter, Snapshot
    from ..distributed import CampaignStatus, PlanResult
    from ..settings import Settings

__all__ = ["add_parsers", "describe"]

EXIT_ABORTED: Final = 2
EXIT_RUNNING: Final = 4
_REDIS_RESTART_WAIT: Final = (1.0, 10.0)
_log = logging.getLogger("proactive_async")


def add_parsers(commands: Any) -> None:
    """Register the commands (``enqueue`` plans a file with ``campaign``'s flag groups)."""
    p = commands.add_parser(
        "enqueue",
        help="plan a file once into PostgreSQL and queue one job per slice of records",
        allow_abbrev=False,
    )
    _flags.add_recipients_file(p)
    p.add_argument("--campaign", metavar="ID", help="the campaign's id (default: a new one)")
    p.add_argument(
        "--job-size",
        type=_flags.positive_int,
        metavar="N",
        help="records per job (a slice: whole calls; default 1000)",
    )
    _add_engine(p)
    _add_journal(p)
    p.add_argument(
        "--redis-url",
        metavar="URL",
        help="arq: the queue (default: $PROACTIVE_REDIS_URL); " + REDIS_PASSWORD_HELP,
    )
    # What is stored with the campaign for every worker; nothing of one process's pace.
    _flags.add_template_flags(p)
    _flags.add_planning_flags(p)
    _flags.add_sending_flags(p)
    _flags.add_loop_flag(p)
    p.set_defaults(handler=_enqueue)

    w = commands.add_parser(
        "worker", help="run a worker that sends the slices of queued campaigns", allow_abbrev=False
    )
    _add_engine(w)
    _add_journal(w)
    w.add_argument(
        "--redis-url",
        metavar="URL",
        help="arq's queue and the shared rate limit (default: $PROACTIVE_REDIS_URL); "
        + REDIS_PASSWORD_HELP,
    )
    w.add_argument(
        "--concurrency",
        type=_flags.positive_int,
        metavar="N",
        help="calls in flight in each worker process (default: $PROACTIVE_CONCURRENCY, else 32)",
    )
    w.add_argument(
        "--jobs",
        type=_flags.positive_int,
        metavar="N",
        help="arq: slices at once (default: $PROACTIVE_WORKER_CONCURRENCY, else 2); celery: "
        "worker processes (default: $PROACTIVE_WORKER_CONCURRENCY, else 4)",
    )
    w.add_argument("--burst", action="store_true", help="arq: exit when the queue is empty")
    _flags.add_loop_flag(w)  # arq's; a Celery worker runs on the blocking client's asyncio loop
    w.add_argument("--base-url", metavar="URL", help="default: $PROACTIVE_BASE_URL")
    _flags.add_connection_flags(w)
    w.set_defaults(handler=_worker)

    s = commands.add_parser("status", help="counts of a distributed campaign", allow_abbrev=False)
    _add_journal(s, campaign=True)
    s.add_argument(
        "--wait",
        action="store_true",
        help="block until the campaign is finished, with a progress bar on a terminal "
        "(plain lines elsewhere); exit 2 if it is aborted",
    )
    s.add_argument("--no-progress", action="store_true", help="--wait without the bar: plain lines")
    s.add_argument("--json", action="store_true", help="print the status as JSON")
    s.set_defaults(handler=_status)

    c = commands.add_parser(
        "cancel",
        help="cancel a campaign journaled in PostgreSQL (distributed, or a one-process run's: "
        "it stops at its next call)",
        allow_abbrev=False,
    )
    _add_journal(c, campaign=True)
    c.set_defaults(handler=_cancel)


def _add_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=("arq", "celery"),
        default="arq",
        help="the task queue (default arq; celery needs proactive-async[celery])",
    )
    p.add_argument(
        "--broker", metavar="URL", help="celery: the broker (default: $PROACTIVE_BROKER_URL)"
    )


def _add_journal(p: argparse.ArgumentParser, *, campaign: bool = False) -> None:
    p.add_argument(
        "--journal",
        metavar="DSN",
        help="postgresql://... (default: $PROACTIVE_JOURNAL); " + JOURNAL_PASSWORD_HELP,
    )
    if campaign:
        p.add_argument("--campaign", metavar="ID", required=True)


def _settings(args: argparse.Namespace) -> Settings:
    """The flags this command has, over the environment; the journal must be PostgreSQL."""
    given = vars(args)
    settings = settings_from_flags(
        args, None, journal=given.get("journal"), broker_url=given.get("broker")
    )
    if not settings.journal or not is_postgres(settings.journal):
        raise UsageError("give the journal: --journal postgresql://... or PROACTIVE_JOURNAL")
    return settings


def _engine_url(args: argparse.Namespace, settings: Settings) -> str:
    """The queue: the broker (celery) or Redis (arq)."""
    if args.engine == "celery":
        if not settings.broker_url:
            raise UsageError("give the broker: --broker URL or PROACTIVE_BROKER_URL")
        return settings.broker_url
    if not settings.redis_url:
        raise UsageError("give Redis: --redis-url redis://... or PROACTIVE_REDIS_URL")
    return settings.redis_url


def _need(extra: str, *modules: str) -> None:
    """One line naming the extra to install, before anything is planned or started."""
    import importlib.util

    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"this needs {module}: pip install 'proactive-async[{extra}]'")


def _location(dsn: str, campaign: str) -> str:
    from ..journal._pg_database import campaign_location

    return campaign_location(dsn, campaign)


def _run(handler: Callable[[], int]) -> int:
    try:
        return handler()
    except JournalError as exc:  # the database or the campaign: the operator's to fix
        raise UsageError(str(exc)) from exc


# -- enqueue ---------------------------------------------------------------------------


def _enqueue(args: argparse.Namespace) -> int:
    def go() -> int:
        _need("postgres", "psycopg")
        _need(args.engine, args.engine)
        settings = _settings(args)
        assert settings.journal is not None
        loop = _flags.event_loop(settings)
        queue_url = _engine_url(args, settings)
        template, options = _flags.campaign_inputs(args)
        from ..distributed import DEFAULT_JOB_SIZE, new_campaign_id, plan_campaign

        campaign = args.campaign or new_campaign_id()
        token = settings.token

        async def main() -> dict[str, object]:
            plan = await plan_campaign(
                _location(settings.journal or "", campaign),
                template=template,
                targets=args.recipients_file,
                options=options,
                secrets=[token] if token else [],
                job_size=args.job_size or DEFAULT_JOB_SIZE,
            )
            queued = await _queue(args.engine, settings, queue_url, plan)
            return {
                "campaign": plan.campaign,
                "records": plan.records,
                "chunks": plan.chunks,
                "slices": plan.slices,
                "rejected": plan.rejected,
                "duplicates": plan.duplicates,
                "queued": queued,
                "already_planned": plan.already_planned,
            }

        result = loop.run(main())
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
        return EXIT_OK

    return _run(go)


async def _queue(engine: str, settings: Settings, url: str, plan: PlanResult) -> int:
    try:
        if engine == "celery":
            return await asyncio.to_thread(_celery_enqueue, settings, plan)
        from ..arq import enqueue_slices

        return await enqueue_slices(url, plan.campaign, plan.pending_slices)
    except Exception as exc:  # the queue's own errors (redis, kombu), never a traceback
        from ..settings import display_url

        password = urlsplit(url).password
        reason = f"{type(exc).__name__}: {exc}"
        if password:
            reason = reason.replace(password, "***")
        raise UsageError(
            f"campaign {plan.campaign} is planned ({plan.records:,} records, "
            f"{plan.slices:,} slices) but its jobs could not all be queued on "
            f"{display_url(url)}: {reason}; run the same enqueue again with "
            f"--campaign {plan.campaign} to queue what is not queued yet (running workers "
            "take unqueued slices from the journal after a while anyway)"
        ) from None


def _celery_enqueue(settings: Settings, plan: PlanResult) -> int:
    from ..celery import create_app, enqueue_slices

    return enqueue_slices(create_app(settings), plan.campaign, plan.pending_slices)


# -- worker ----------------------------------------------------------------------------


def _worker(args: argparse.Namespace) -> int:
    def go() -> int:
        _need("postgres", "psycopg")
        _need(args.engine, args.engine)
        settings = _settings(args)
        _engine_url(args, settings)
        if not settings.base_url:
            raise UsageError("no API base URL: pass --base-url URL or set PROACTIVE_BASE_URL")
        if not settings.token:
            raise UsageError("the worker takes the API token from PROACTIVE_TOKEN: set it")
        if args.engine == "celery":
            if settings.loop == "uvloop":
                raise UsageError("a Celery worker runs on asyncio's loop: uvloop is for arq's")
            _log_to_stderr()
            return _celery_worker(args, settings)
        loop = _flags.event_loop(settings)
        _log_to_stderr()
        asyncio.set_event_loop(loop.new_loop())  # arq's Worker runs the current loop
        return _arq_worker(args, settings)

    return _run(go)


def _log_to_stderr() -> None:
    """One line per event on stderr: the start, each slice finished, every fatal answer."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    for name in ("proactive_async", "arq"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _arq_worker(args: argparse.Namespace, settings: Settings) -> int:
    """arq's worker, started again when Redis goes away (a restart): the slices it ran are
    given back first, and the journal tells it (or another worker) what is left."""
    import redis.exceptions
    from arq.worker import create_worker

    from .. import arq as engine
    from ..distributed import DEFAULT_SLICES

    slices = args.jobs or settings.worker_concurrency or DEFAULT_SLICES
    options = engine.worker_options(settings, slices=slices, burst=args.burst)
    wait = _REDIS_RESTART_WAIT[0]
    while True:
        # A new ctx each time: the last run's client and slices are closed, not reused.
        worker = create_worker(engine.WorkerSettings, **{**options, "ctx": dict(options["ctx"])})  # type: ignore[arg-type]
        try:
            worker.run()
            return EXIT_OK
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            _close_after_failure(worker, engine.shutdown)
            _log.warning(
                "Redis %s is unreachable (%s: %s); starting again in %.0f s",
                _display(settings.redis_url),
                type(exc).__name__,
                _first_line(exc),
                wait,
            )
            time.sleep(wait)
            wait = min(_REDIS_RESTART_WAIT[1], wait * 2)


def _close_after_failure(worker: Any, shutdown: Callable[[dict[str, Any]], Any]) -> None:
    """arq's own close stops at its first Redis command while Redis is down, before it
    runs ``on_shutdown``: run it here, so the slices are given back and nothing leaks."""
    try:
        worker.loop.run_until_complete(shutdown(worker.ctx))
    except Exception:  # Redis or the journal may be down too: what is left expires
        _log.debug("closing the worker after a Redis failure", exc_info=True)


def _celery_worker(args: argparse.Namespace, settings: Settings) -> int:
    from .. import celery as engine

    engine.configure(settings)
    from ..settings import DEFAULT_CELERY_PROCESSES

    processes = args.jobs or settings.worker_concurrency or DEFAULT_CELERY_PROCESSES
    application = engine.create_app(settings)
    argv = ["worker", "--pool=prefork", f"--concurrency={processes}", "-Q", engine.QUEUE]
    argv += ["--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    application.worker_main(argv)
    return EXIT_OK


def _display(url: str | None) -> str:
    from ..settings import display_url

    return display_url(url or "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


# -- status, cancel ------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    def go() -> int:
        _need("postgres", "psycopg")
        from ..distributed import campaign_status

        location = _location(_settings(args).journal or "", args.campaign)
        if args.wait:
            status = asyncio.run(_wait_until_finished(location, progress=not args.no_progress))
        else:
            status = asyncio.run(campaign_status(location))
        if args.json:
            sys.stdout.write(msgspec.json.encode(status.as_dict()).decode() + "\n")
        else:
            sys.stdout.write(describe(status) + "\n")
        if status.aborted and not status.finished:
            if args.wait:
                sys.stderr.write(
                    f"campaign {status.campaign} aborted: {status.aborted}. Fix the cause, then "
                    f"run the same enqueue again (--campaign {status.campaign}) to resume it\n"
                )
            return EXIT_ABORTED
        return EXIT_OK if status.finished else EXIT_RUNNING

    return _run(go)


def describe(status: CampaignStatus) -> str:
    """One line: the state, slices done, live workers and the counts per record state."""
    counts = ", ".join(f"{state} {count:,}" for state, count in sorted(status.counts.items()))
    if not status.distributed:
        cancelled = " (cancelled)" if status.cancelled else ""
        return (
            f"campaign {status.campaign}: a one-process campaign{cancelled}, sent by its "
            f"`campaign` run (how many records it has, only that run knows); {counts}"
        )
    if status.finished:
        state = "finished"
    elif status.aborted:
        state = f"aborted ({status.aborted})"
    elif status.owners:
        state = f"running on {status.owners} worker process{'es' * (status.owners != 1)}"
    else:
        state = "waiting for workers"
    if status.cancelled:
        state += " (cancelled)"
    return (
        f"campaign {status.campaign}: {state}; slices {status.slices_done:,}/"
        f"{status.slices:,} done; {counts}"
    )


async def _wait_until_finished(location: str, *, progress: bool) -> CampaignStatus:
    """Poll the journal every ``STATUS_POLL`` seconds, showing records settled of all
    records (the bar on a terminal, a line every few seconds elsewhere), until finished
    or aborted. Interrupted (Ctrl-C), the exit is 130 like any other command's."""
    from .._progress import RateMeter, choose_display
    from ..distributed import campaign_status

    status = await campaign_status(location)
    display = choose_display(
        progress, sum(status.counts.values()), stderr_console(), status.campaign
    )
    watch = _StatusWatch(RateMeter(_STATUS_RATE_WINDOW), RateMeter(_STATUS_RATE_WINDOW))
    try:
        while True:
            display.show(watch.snapshot(status, time.monotonic()))
            if status.finished or status.aborted or not status.distributed:
                return status  # a one-process campaign's end is its run's to tell
            await asyncio.sleep(STATUS_POLL)
            status = await campaign_status(location)
    finally:
        display.close()


STATUS_POLL: Final = 1.0
"""Seconds between two reads of the journal by ``status --wait``."""
_STATUS_RATE_WINDOW: Final = 10.0
_STALLED_AFTER: Final = 30.0
"""Seconds without a record settled, while some are left, before ``--wait`` says so."""


class _StatusWatch:
    """Turns successive statuses into progress snapshots: rates, ETA, and a stall."""

    def __init__(self, sent_meter: RateMeter, records_meter: RateMeter) -> None:
        self._sent = sent_meter
        self._records = records_meter
        self._settled = -1
        self._moved_at = 0.0

    def snapshot(self, status: CampaignStatus, now: float) -> Snapshot:
        from .._progress import Snapshot
        from .._records import OutcomeStatus

        counts = {s: status.counts.get(s.value, 0) for s in OutcomeStatus}
        settled = sum(counts.values())
        total = sum(status.counts.values())
        if settled != self._settled:
            self._settled, self._moved_at = settled, now
        records_rate = self._records.add(now, settled)
        eta = (total - settled) / records_rate if records_rate > 0 else None
        return Snapshot(
            records=settled,
            total=total,
            targets_per_second=self._sent.add(now, counts[OutcomeStatus.SENT]),
            counts=counts,
            eta=None if status.finished else eta,
            problem=self._problem(status, now),
        )

    def _problem(self, status: CampaignStatus, now: float) -> str | None:
        if status.finished:
            return None
        if status.aborted:
            return f"aborted: {status.aborted}"
        if now - self._moved_at < _STALLED_AFTER:
            return None
        who = (
            f"{status.owners} worker process(es) hold slices"
            if status.owners
            else "no worker holds a slice: are workers running?"
        )
        return (
            f"stalled: no record settled in {_STALLED_AFTER:.0f} s or more "
            f"(slices {status.slices_done:,}/{status.slices:,} done); {who}"
        )


def _cancel(args: argparse.Namespace) -> int:
    def go() -> int:
        _need("postgres", "psycopg")
        from ..distributed import cancel_campaign

        location = _location(_settings(args).journal or "", args.campaign)
        cancelled = asyncio.run(cancel_campaign(location))
        sys.stdout.write(
            f"campaign {args.campaign} cancelled: {cancelled:,} records not sent; no record "
            "is marked in flight from now on (calls already in flight finish)\n"
        )
        return EXIT_OK

    return _run(go)
