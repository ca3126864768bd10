"""The distributed campaign commands: enqueue, worker, status, report, cancel.

Kept apart from ``cli.py`` so that ``campaign`` and ``--help`` never import arq or psycopg.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import msgspec

from ._errors import JournalError
from .cli import UsageError

if TYPE_CHECKING:
    from ._distributed import CampaignStatus
    from ._progress import RateMeter, Snapshot

__all__ = ["add_distributed_parsers"]

EXIT_OK: Final = 0
EXIT_RUNNING: Final = 4


def add_distributed_parsers(
    commands: Any,
    *,
    add_campaign_options: Callable[[argparse.ArgumentParser], None],
    campaign_inputs: Callable[[argparse.Namespace], Any],
) -> None:
    """Register the commands; ``campaign_inputs(args)`` gives (template, options) from the
    same flags as ``campaign``, so both plan a file alike."""
    p = commands.add_parser(
        "enqueue",
        help="plan a file once into PostgreSQL and queue one arq job per chunk",
        allow_abbrev=False,
    )
    p.add_argument("recipients_file", metavar="RECIPIENTS_FILE")
    p.add_argument("--campaign", metavar="ID", help="the campaign's id (default: a new one)")
    _add_engine(p)
    add_campaign_options(p)
    p.set_defaults(handler=lambda args: _enqueue(args, campaign_inputs))

    w = commands.add_parser(
        "worker", help="run an arq worker that sends queued chunks", allow_abbrev=False
    )
    _add_connection(w, redis=True)
    _add_engine(w)
    w.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="arq: jobs at once (default 16); celery: worker processes (default 4)",
    )
    w.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    w.set_defaults(handler=_worker)

    s = commands.add_parser("status", help="counts of a distributed campaign", allow_abbrev=False)
    _add_connection(s, redis=False, campaign=True)
    s.add_argument(
        "--wait",
        action="store_true",
        help="block until the campaign is finished, with a progress bar on a terminal "
        "(plain lines elsewhere)",
    )
    s.add_argument("--no-progress", action="store_true", help="--wait without the bar: plain lines")
    s.add_argument("--json", action="store_true", help="print the status as JSON")
    s.set_defaults(handler=_status)

    r = commands.add_parser("report", help="a distributed campaign's report", allow_abbrev=False)
    _add_connection(r, redis=False, campaign=True)
    r.add_argument("--out", metavar="PATH", required=True, help="the JSONL report to write")
    r.set_defaults(handler=_report)

    c = commands.add_parser("cancel", help="cancel a distributed campaign", allow_abbrev=False)
    _add_connection(c, redis=False, campaign=True)
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


def _broker(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    url = args.broker or env.get("PROACTIVE_BROKER_URL")
    if not url:
        raise UsageError("give the broker: --broker URL or PROACTIVE_BROKER_URL")
    return str(url)


def _add_connection(p: argparse.ArgumentParser, *, redis: bool, campaign: bool = False) -> None:
    p.add_argument(
        "--journal", metavar="DSN", help="postgresql://... (default: $PROACTIVE_JOURNAL)"
    )
    if redis:
        p.add_argument("--redis-url", metavar="URL", help="default: $PROACTIVE_REDIS_URL")
    if campaign:
        p.add_argument("--campaign", metavar="ID", required=True)


def _journal(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    dsn = args.journal or env.get("PROACTIVE_JOURNAL")
    if not dsn or not dsn.startswith(("postgresql://", "postgres://")):
        raise UsageError("give the journal: --journal postgresql://... or PROACTIVE_JOURNAL")
    return str(dsn)


def _redis(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    url = getattr(args, "redis_url", None) or env.get("PROACTIVE_REDIS_URL")
    if not url:
        raise UsageError("give Redis: --redis-url redis://... or PROACTIVE_REDIS_URL")
    return str(url)


def _location(dsn: str, campaign: str) -> str:
    from ._journal_pg import campaign_location

    return campaign_location(dsn, campaign)


def _run(handler: Callable[[], int]) -> int:
    try:
        return handler()
    except JournalError as exc:  # the database or the campaign: the operator's to fix
        raise UsageError(str(exc)) from exc


def _enqueue(args: argparse.Namespace, campaign_inputs: Callable[[argparse.Namespace], Any]) -> int:
    def go() -> int:
        from ._distributed import new_campaign_id, plan_campaign
        from ._journal_pg import display_dsn

        if args.engine == "arq":
            from .arq import enqueue_chunks

        env = os.environ
        dsn = _journal(args, env)
        if args.engine == "celery":
            broker = _broker(args, env)
            redis_url = ""
        else:
            redis_url = _redis(args, env)
        template, options = campaign_inputs(args)
        campaign = args.campaign or new_campaign_id()
        token = env.get("PROACTIVE_TOKEN")

        async def main() -> dict[str, object]:
            plan = await plan_campaign(
                _location(dsn, campaign),
                template=template,
                targets=args.recipients_file,
                options=options,
                secrets=[token] if token else [],
            )
            try:
                if args.engine == "celery":
                    queued = await asyncio.to_thread(_celery_enqueue, broker, campaign, plan)
                else:
                    queued = await enqueue_chunks(redis_url, campaign, plan.pending_chunks)
            except Exception as exc:  # the queue's own errors (redis, kombu), never a traceback
                url = broker if args.engine == "celery" else redis_url
                password = urlsplit(url).password
                reason = f"{type(exc).__name__}: {exc}"
                if password:
                    reason = reason.replace(password, "***")
                raise UsageError(
                    f"campaign {plan.campaign} is planned ({plan.records:,} records, "
                    f"{plan.chunks:,} chunks) but its chunks could not all be queued on "
                    f"{display_dsn(url)}: {reason}; run the same enqueue again with "
                    f"--campaign {plan.campaign} to queue what is not queued yet"
                ) from None
            return {
                "campaign": plan.campaign,
                "records": plan.records,
                "chunks": plan.chunks,
                "rejected": plan.rejected,
                "duplicates": plan.duplicates,
                "queued": queued,
                "already_planned": plan.already_planned,
            }

        result = asyncio.run(main())
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
        return EXIT_OK

    return _run(go)


def _celery_enqueue(broker: str, campaign: str, plan: Any) -> int:
    os.environ["PROACTIVE_BROKER_URL"] = broker
    from .celery import create_app, enqueue_chunks

    return enqueue_chunks(create_app(broker), campaign, plan.pending_chunks)


def _celery_worker(args: argparse.Namespace) -> int:
    env = os.environ
    os.environ["PROACTIVE_BROKER_URL"] = _broker(args, env)
    from .celery import QUEUE, app

    concurrency = args.concurrency or 4
    argv = ["worker", "--pool=prefork", f"--concurrency={concurrency}", "-Q", QUEUE]
    argv += ["--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    app.worker_main(argv)
    return EXIT_OK


def _worker(args: argparse.Namespace) -> int:
    def go() -> int:
        env = os.environ
        os.environ["PROACTIVE_JOURNAL"] = _journal(args, env)
        for name in ("PROACTIVE_BASE_URL", "PROACTIVE_TOKEN"):
            if not env.get(name):
                raise UsageError(f"the worker takes the API from its environment: set {name}")
        if args.engine == "celery":
            if args.redis_url:
                os.environ["PROACTIVE_REDIS_URL"] = args.redis_url
            return _celery_worker(args)
        os.environ["PROACTIVE_REDIS_URL"] = _redis(args, env)
        if args.concurrency:
            os.environ["PROACTIVE_WORKER_CONCURRENCY"] = str(args.concurrency)
        from arq.worker import run_worker

        from . import arq as settings

        run_worker(
            settings.WorkerSettings,  # type: ignore[arg-type]
            redis_settings=settings.redis_settings(os.environ["PROACTIVE_REDIS_URL"]),
            max_jobs=int(os.environ.get("PROACTIVE_WORKER_CONCURRENCY", "16")),
            burst=args.burst,
        )
        return EXIT_OK

    return _run(go)


def _status(args: argparse.Namespace) -> int:
    def go() -> int:
        from ._distributed import campaign_status

        location = _location(_journal(args, os.environ), args.campaign)
        if args.wait:
            status = asyncio.run(_wait_until_finished(location, progress=not args.no_progress))
        else:
            status = asyncio.run(campaign_status(location))
        if args.json:
            sys.stdout.write(msgspec.json.encode(status.as_dict()).decode() + "\n")
        else:
            counts = ", ".join(
                f"{state} {count:,}" for state, count in sorted(status.counts.items())
            )
            state = "finished" if status.finished else "running"
            if status.cancelled:
                state += " (cancelled)"
            sys.stdout.write(
                f"campaign {status.campaign}: {state}; chunks {status.chunks_done:,}/"
                f"{status.chunks:,} done; {counts}\n"
            )
        return EXIT_OK if status.finished else EXIT_RUNNING

    return _run(go)


async def _wait_until_finished(location: str, *, progress: bool) -> CampaignStatus:
    """Poll the journal every ``STATUS_POLL`` seconds, showing records settled of all
    records (the bar on a terminal, a line every few seconds elsewhere), until finished.
    Interrupted (Ctrl-C), the exit is 130 like any other command's."""
    from ._distributed import campaign_status
    from ._progress import RateMeter, choose_display
    from .cli import stderr_console

    status = await campaign_status(location)
    display = choose_display(
        progress, sum(status.counts.values()), stderr_console(), status.campaign
    )
    watch = _StatusWatch(RateMeter(_STATUS_RATE_WINDOW), RateMeter(_STATUS_RATE_WINDOW))
    try:
        while True:
            display.show(watch.snapshot(status, time.monotonic()))
            if status.finished:
                return status
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
        from ._progress import Snapshot
        from ._records import OutcomeStatus

        counts = {s: status.counts.get(s.value, 0) for s in OutcomeStatus}
        settled = sum(counts.values())
        total = sum(status.counts.values())
        if settled != self._settled:
            self._settled, self._moved_at = settled, now
        records_rate = self._records.add(now, settled)
        eta = (total - settled) / records_rate if records_rate > 0 else None
        problem = None
        if not status.finished and now - self._moved_at >= _STALLED_AFTER:
            problem = (
                f"stalled: no record settled in {_STALLED_AFTER:.0f} s or more "
                f"(chunks {status.chunks_done:,}/{status.chunks:,} done); are workers running?"
            )
        return Snapshot(
            records=settled,
            total=total,
            targets_per_second=self._sent.add(now, counts[OutcomeStatus.SENT]),
            counts=counts,
            eta=None if status.finished else eta,
            problem=problem,
        )


def _report(args: argparse.Namespace) -> int:
    def go() -> int:
        from ._distributed import write_report

        location = _location(_journal(args, os.environ), args.campaign)
        with open(args.out, "wb") as out:
            written = asyncio.run(write_report(location, out))
        sys.stderr.write(f"{written:,} records written to {args.out}\n")
        return EXIT_OK

    return _run(go)


def _cancel(args: argparse.Namespace) -> int:
    def go() -> int:
        from ._distributed import cancel_campaign

        location = _location(_journal(args, os.environ), args.campaign)
        cancelled = asyncio.run(cancel_campaign(location))
        sys.stdout.write(f"campaign {args.campaign} cancelled: {cancelled:,} records not sent\n")
        return EXIT_OK

    return _run(go)
