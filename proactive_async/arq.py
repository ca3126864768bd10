"""arq integration: the chunks of a distributed campaign as arq jobs on Redis.

Run a worker with arq's own command (or ``proactive-async worker``)::

    PROACTIVE_BASE_URL=https://api.example.com PROACTIVE_TOKEN=... \\
    PROACTIVE_JOURNAL=postgresql://app@db/campaigns PROACTIVE_REDIS_URL=redis://redis:6379/0 \\
        arq proactive_async.arq.WorkerSettings

or add the job to your own worker settings::

    from proactive_async.arq import JOB, startup, shutdown     # functions = [JOB, ...]

A job names its campaign and chunk, nothing more (no token, no password): the worker
takes the API's base URL and token, the journal's DSN and Redis from its own environment.
One ``AsyncClient`` and one ``ChunkRunner`` per worker process live in arq's ``ctx``
(``on_startup`` / ``on_shutdown``). A job id is ``<campaign>:<chunk>``, so enqueuing a
campaign twice queues each chunk once. arq runs a job at least once (a killed worker's job
runs again); ``ChunkRunner`` makes that exactly-once per record (see ``_distributed``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from typing import Any, Final

from arq import Retry
from arq.connections import RedisSettings, create_pool
from arq.worker import func

from ._client import AsyncClient
from ._config import Limits
from ._distributed import ChunkBusyError, ChunkRunner, SendSettings
from ._errors import JournalError
from ._models import ProactiveConversationRequest
from ._ratelimit_redis import SharedRateLimit, default_limit_key

__all__ = [
    "ENQUEUE_CONCURRENCY",
    "JOB",
    "JOB_NAME",
    "WorkerSettings",
    "client",
    "enqueue_chunks",
    "job_id",
    "send_chunk_job",
    "shutdown",
    "startup",
]

JOB_NAME: Final = "proactive_async.send_chunk"
_RUNNER: Final = "proactive_async.runner"
_CLIENT: Final = "proactive_async.client"
_DEFAULT_REDIS: Final = "redis://127.0.0.1:6379/0"
_log = logging.getLogger("proactive_async")


def job_id(campaign: str, chunk: int) -> str:
    """The deterministic id of a chunk's job: enqueuing twice queues it once."""
    return f"{campaign}:{chunk}"


def redis_settings(url: str | None = None) -> RedisSettings:
    return RedisSettings.from_dsn(url or os.environ.get("PROACTIVE_REDIS_URL") or _DEFAULT_REDIS)


ENQUEUE_CONCURRENCY: Final = 16
"""Jobs being queued at once: arq queues one job in several round trips to Redis."""


async def enqueue_chunks(redis_url: str, campaign: str, chunks: Iterable[int]) -> int:
    """One job per chunk, ``ENQUEUE_CONCURRENCY`` at a time; returns how many were newly
    queued (the rest already were: a job id is its campaign and chunk)."""
    pool = await create_pool(redis_settings(redis_url))
    queued = 0
    pending = iter(chunks)  # shared: each chunk is taken by one queuer

    async def queuer() -> None:
        nonlocal queued
        for chunk in pending:
            job = await pool.enqueue_job(JOB_NAME, campaign, chunk, _job_id=job_id(campaign, chunk))
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


async def startup(ctx: dict[str, Any]) -> None:
    """One client and one runner per worker process, from the worker's environment."""
    env = os.environ
    journal = env.get("PROACTIVE_JOURNAL")
    if not journal:
        raise RuntimeError("PROACTIVE_JOURNAL (the PostgreSQL journal's DSN) is not set")
    concurrency = int(env.get("PROACTIVE_WORKER_CONCURRENCY", "16"))
    client = AsyncClient(limits=Limits(max_connections=max(100, concurrency)))
    redis_url = env.get("PROACTIVE_REDIS_URL") or _DEFAULT_REDIS

    def rate_limit_for(
        template: ProactiveConversationRequest, settings: SendSettings
    ) -> SharedRateLimit:
        return SharedRateLimit(
            redis_url,
            key=default_limit_key(client.base_url, _channel(template)),
            rate=settings.rate,
            burst=settings.burst,
        )

    ctx[_CLIENT] = client
    ctx[_RUNNER] = ChunkRunner(journal, client, rate_limit_for=rate_limit_for)


def _channel(template: ProactiveConversationRequest) -> int | None:
    return template.channel_id if isinstance(template.channel_id, int) else None


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
    runner: ChunkRunner | None = ctx.pop(_RUNNER, None)
    client: AsyncClient | None = ctx.pop(_CLIENT, None)
    if runner is not None:
        await runner.aclose()
    if client is not None:
        await client.aclose()


async def send_chunk_job(ctx: dict[str, Any], campaign: str, chunk: int) -> str:
    """The job: send one stored chunk; every record of it ends with its outcome."""
    runner: ChunkRunner = ctx[_RUNNER]
    try:
        return await runner.run(campaign, chunk)
    except ChunkBusyError:
        # Another execution holds the chunk: it is alive. Look again later; by then it
        # has finished (and this run finds nothing left) or died (and this run sends).
        raise Retry(defer=2) from None
    except JournalError as exc:
        _log.warning("chunk %s of %s: journal unavailable (%s); retrying", chunk, campaign, exc)
        raise Retry(defer=5) from None


JOB: Final = func(send_chunk_job, name=JOB_NAME, keep_result=0, max_tries=1000)
"""The chunk job as arq registers it, for your own ``WorkerSettings.functions``: results
are not kept (so a chunk can be queued again at once) and tries are many (a journal outage
retries rather than drops a chunk)."""


class WorkerSettings:
    """``arq proactive_async.arq.WorkerSettings``: settings from the environment.

    ``PROACTIVE_REDIS_URL`` (the queue and the shared rate limit), ``PROACTIVE_JOURNAL``,
    ``PROACTIVE_BASE_URL``, ``PROACTIVE_TOKEN``, ``PROACTIVE_WORKER_CONCURRENCY`` (jobs at
    once, default 16) and ``PROACTIVE_JOB_TIMEOUT`` (seconds, default 300; a killed
    worker's job runs again after this plus 10 s).
    """

    functions: Final = [JOB]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = redis_settings()
    max_jobs = int(os.environ.get("PROACTIVE_WORKER_CONCURRENCY", "16"))
    job_timeout = int(os.environ.get("PROACTIVE_JOB_TIMEOUT", "300"))
    keep_result = 0
