"""arq integration: the slices of a distributed campaign as arq jobs on Redis.

Run a worker with ``proactive-async worker`` (settings from flags and the environment,
passed to arq as values), or with arq's own command::

    PROACTIVE_BASE_URL=https://api.example.com PROACTIVE_TOKEN=... \\
    PROACTIVE_JOURNAL=postgresql://app@db/campaigns PROACTIVE_REDIS_URL=redis://redis:6379/0 \\
        arq proactive_async.arq.WorkerSettings

or add the job to your own worker settings::

    from proactive_async.arq import JOB, startup, shutdown     # functions = [JOB, ...]

A job names its campaign and slice, nothing more (no token, no password). One
``AsyncClient`` and one ``SliceWorker`` per worker process live in arq's ``ctx``
(``on_startup`` / ``on_shutdown``); the settings come from ``ctx["proactive_async.settings"]``
when the caller put them there (``worker_options``), else from the environment once, at
start-up. A job id is ``<campaign>:<slice>``, so enqueuing a campaign twice queues each
slice once.

arq runs a job at least once, and redelivers a killed worker's job only after its
``job_timeout``; the SDK does not wait for that: a slice's lease expires within seconds
and a live worker's sweep of the journal takes it over (``proactive_async.distributed``).
A job's slice is shielded from arq's timeout, so waiting on the rate limit never fails it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Final

from arq import Retry
from arq.connections import RedisSettings, create_pool
from arq.worker import func

from ._client import AsyncClient
from ._errors import JournalError
from ._loop import running_loop_name
from ._models import ProactiveConversationRequest
from .distributed import (
    DEFAULT_LEASE,
    DEFAULT_SLICES,
    SendSettings,
    SliceRunner,
    SliceWorker,
    check_journal,
)
from .ratelimit import RateLimitBackend
from .settings import (
    DEFAULT_REDIS_URL,
    DEFAULT_WORKER_CONCURRENCY,
    Settings,
    build_client,
    build_send_rate_limit,
    display_url,
)

__all__ = [
    "ENQUEUE_CONCURRENCY",
    "JOB",
    "JOB_NAME",
    "SETTINGS_KEY",
    "WorkerSettings",
    "client",
    "enqueue_slices",
    "job_id",
    "send_slice_job",
    "shutdown",
    "startup",
    "worker_options",
]

JOB_NAME: Final = "proactive_async.send_slice"
SETTINGS_KEY: Final = "proactive_async.settings"
"""The ``ctx`` key of the worker's ``Settings`` (``worker_options`` puts them there)."""
_WORKER: Final = "proactive_async.worker"
_CLIENT: Final = "proactive_async.client"
_SHAPE: Final = "proactive_async.shape"
_log = logging.getLogger("proactive_async")


def job_id(campaign: str, slice_: int) -> str:
    """The deterministic id of a slice's job: enqueuing twice queues it once."""
    return f"{campaign}:{slice_}"


def redis_settings(url: str | None) -> RedisSettings:
    """arq's connection settings for a Redis URL (None: ``DEFAULT_REDIS_URL``)."""
    return RedisSettings.from_dsn(url or DEFAULT_REDIS_URL)


ENQUEUE_CONCURRENCY: Final = 16
"""Jobs being queued at once: arq queues one job in several round trips to Redis."""


async def enqueue_slices(redis_url: str, campaign: str, slices: Iterable[int]) -> int:
    """One job per slice, ``ENQUEUE_CONCURRENCY`` at a time; returns how many were newly
    queued (the rest already were: a job id is its campaign and slice)."""
    pool = await create_pool(redis_settings(redis_url))
    queued = 0
    pending = iter(slices)  # shared: each slice is taken by one queuer

    async def queuer() -> None:
        nonlocal queued
        for number in pending:
            job = await pool.enqueue_job(
                JOB_NAME, campaign, number, _job_id=job_id(campaign, number)
            )
            queued += job is not None

    queuers = [asyncio.create_task(queuer()) for _ in range(ENQUEUE_CONCURRENCY)]
    try:
        await asyncio.gather(*queuers)
    finally:
        for task in queuers:
            task.cancel()
        await asyncio.gather(*queuers, return_exceptions=True)
        await pool.aclose()
    return queued


def worker_options(
    settings: Settings,
    *,
    slices: int = DEFAULT_SLICES,
    lease: float = DEFAULT_LEASE,
    burst: bool = False,
) -> dict[str, Any]:
    """arq ``Worker`` keywords for ``run_worker(WorkerSettings, **worker_options(...))``:
    the queue, jobs at once (``slices``), and the settings handed to ``startup`` in ctx."""
    return {
        "redis_settings": redis_settings(settings.redis_url),
        "max_jobs": slices,
        "job_timeout": settings.job_timeout,
        "burst": burst,
        # A free slot looks for the next job this often (arq's default of 0.5 s left a
        # finished slice's slot idle for half a second).
        "poll_delay": 0.1,
        "ctx": {SETTINGS_KEY: settings, _SHAPE: (slices, lease)},
    }


async def startup(ctx: dict[str, Any]) -> None:
    """One client and one slice worker per worker process, from the settings; the first
    log line names the event loop (``proactive-async worker`` runs arq on ``--loop``'s)."""
    settings: Settings = ctx.get(SETTINGS_KEY) or Settings.from_env()
    slices, lease = ctx.get(_SHAPE, (DEFAULT_SLICES, DEFAULT_LEASE))
    if not settings.journal:
        raise JournalError("no journal: set PROACTIVE_JOURNAL (the PostgreSQL journal's DSN)")
    await check_journal(settings.journal)
    concurrency = settings.concurrency or DEFAULT_WORKER_CONCURRENCY
    client = build_client(settings)

    def rate_limit_for(
        template: ProactiveConversationRequest, send: SendSettings
    ) -> RateLimitBackend:
        redis_url = settings.redis_url or DEFAULT_REDIS_URL
        return build_send_rate_limit(settings, template, send, redis_url=redis_url)

    runner = SliceRunner(
        settings.journal,
        client,
        rate_limit_for=rate_limit_for,
        concurrency=concurrency,
        lease=lease,
    )
    worker = SliceWorker(runner, slices=slices)
    await worker.start()
    ctx[_CLIENT] = client
    ctx[_WORKER] = worker
    _log.info(
        "proactive-async worker: engine arq, queue %s, journal %s, API %s, "
        "%d calls in flight, %d slices at once, event loop %s",
        display_url(settings.redis_url or DEFAULT_REDIS_URL),
        runner.where,
        display_url(client.base_url),
        concurrency,
        slices,
        running_loop_name(),
    )


def client(ctx: dict[str, Any]) -> AsyncClient:
    """The worker process's ``AsyncClient`` (set up by ``startup``), for your own jobs
    beside the SDK's: one connection pool per process instead of two.

    Usage::

        async def send_reminder(ctx, phone):
            return await proactive_async.arq.client(ctx).create_proactive_conversation(...)
    """
    try:
        found: AsyncClient = ctx[_CLIENT]
    except KeyError:
        raise RuntimeError(
            "no SDK client in this worker: add proactive_async.arq.startup to on_startup"
        ) from None
    return found


async def shutdown(ctx: dict[str, Any]) -> None:
    """Stop the slices (calls in flight get a grace period), give them back, close.

    A burst worker's jobs have ended by then; a slice its sweep took is given back as
    well, for the sweep of a worker still running. A signal is not waited out: an
    orchestrator's kill would come in the middle of the calls.
    """
    worker: SliceWorker | None = ctx.pop(_WORKER, None)
    found: AsyncClient | None = ctx.pop(_CLIENT, None)
    if worker is not None:
        await worker.aclose()
    if found is not None:
        await found.aclose()


async def send_slice_job(ctx: dict[str, Any], campaign: str, slice_: int) -> str:
    """The job: send one stored slice; every record of it ends with its outcome."""
    worker: SliceWorker = ctx[_WORKER]
    try:
        result = await worker.run(campaign, slice_)
    except JournalError as exc:  # the job stays queued for a worker that can do it
        _log.error("slice %s of %s: %s; the job is retried in 10 s", slice_, campaign, exc)
        raise Retry(defer=10) from None
    return "busy" if result is None else result.state


JOB: Final = func(send_slice_job, name=JOB_NAME, keep_result=0, max_tries=1000)
"""The slice job as arq registers it, for your own ``WorkerSettings.functions``: results
are not kept (so a slice can be queued again at once) and tries are many (a journal outage
retries rather than drops a slice; the journal's sweep would take it up anyway)."""


class WorkerSettings:
    """``arq proactive_async.arq.WorkerSettings``: the job and its start-up and shutdown.

    arq's own command reads ``redis_settings`` from here, so this class alone reads
    ``PROACTIVE_REDIS_URL`` when it is imported; ``proactive-async worker`` passes the
    settings of its flags and environment as values instead (``worker_options``).
    """

    functions: Final = [JOB]
    redis_settings: RedisSettings = redis_settings(Settings.from_env().redis_url)
    on_startup = startup
    on_shutdown = shutdown
    max_jobs = DEFAULT_SLICES
    keep_result = 0
