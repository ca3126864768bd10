"""Celery integration: distributed campaigns on Celery workers, and a single-call task.

Run a worker (prefork) with the SDK's app::

    PROACTIVE_BROKER_URL=redis://redis:6379/0 PROACTIVE_JOURNAL=postgresql://app@db/campaigns \\
    PROACTIVE_BASE_URL=https://api.example.com PROACTIVE_TOKEN=... \\
        proactive-async worker --engine celery

or add the tasks to your own app::

    from proactive_async.celery import register
    register(app)       # the chunk task and the single-call task, and the process signals

Celery runs sync functions, so each worker process holds one event loop for its lifetime
(the blocking ``Client``'s loop thread, started on ``worker_process_init`` and closed on
``worker_process_shutdown``), with one connection pool and one ``ChunkRunner``.

Delivery: the chunk task is ``acks_late`` with ``reject_on_worker_lost``: a worker process
killed mid-task gets its message back on the queue at once (the pool's parent rejects it);
a whole worker killed with ``kill -9`` leaves the message unacknowledged, and the Redis
broker hands it to another worker after ``visibility_timeout`` (60 s here, Celery's own
default is an hour; ``PROACTIVE_VISIBILITY_TIMEOUT``) and its next sweep (every 5 s here;
kombu's default is about every 100 s): about a minute in all. A message redelivered while its first
execution is still alive (a chunk running longer than the timeout) meets the chunk's lock
and is retried until the first ends. Exactly-once per record comes from the journal's fence
(``_distributed``), never from Celery. The single-call task is *not* ``acks_late``: a
redelivered single call could send a message twice; lost, it is the caller's to see.

Dependencies: the Redis transport of kombu 5.7 needs redis-py >= 6.4, which arq 0.28 does
not accept (< 6), so ``proactive-async[celery]`` and ``proactive-async[arq]`` are conflicting
extras, installed in separate environments (``make test`` tests each in its own).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Final

from celery import Celery, signals

from ._client import AsyncClient
from ._distributed import ChunkBusyError, ChunkRunner, SendSettings
from ._errors import JournalError
from ._models import ProactiveConversationRequest
from ._ratelimit import RateLimit, RateLimitBackend
from ._ratelimit_redis import SharedRateLimit, default_limit_key
from ._sync import Client

__all__ = ["CHUNK_TASK", "SINGLE_CALL_TASK", "app", "create_app", "enqueue_chunks", "register"]

CHUNK_TASK: Final = "proactive_async.send_chunk"
SINGLE_CALL_TASK: Final = "proactive_async.create_proactive_conversation"
QUEUE: Final = "proactive-async"
_DEFAULT_VISIBILITY: Final = 60
_log = logging.getLogger("proactive_async")


class _Process:
    """The worker process's client and runner (a new pair after each fork)."""

    client: Client | None = None
    runner: ChunkRunner | None = None


_PROCESS = _Process()


def create_app(broker_url: str | None = None) -> Celery:
    """A Celery app for the SDK's tasks, with the delivery settings the fence needs."""
    broker = broker_url or os.environ.get("PROACTIVE_BROKER_URL") or "redis://127.0.0.1:6379/0"
    visibility = int(os.environ.get("PROACTIVE_VISIBILITY_TIMEOUT", _DEFAULT_VISIBILITY))
    application = Celery("proactive_async", broker=broker)
    application.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        # Unacknowledged messages older than the visibility timeout are looked for every
        # 5 s (kombu's default sweep runs about every 100 s).
        broker_transport_options={
            "visibility_timeout": visibility,
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
    )
    register(application)
    return application


def register(application: Celery) -> None:
    """Add the chunk task and the single-call task to ``application``, and the signals that
    give each worker process its own event loop, client and runner."""
    application.task(
        name=CHUNK_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=None,
        ignore_result=True,
    )(_send_chunk)
    application.task(name=SINGLE_CALL_TASK, acks_late=False)(_single_call)
    signals.worker_process_init.connect(_process_init, weak=False)
    signals.worker_process_shutdown.connect(_process_shutdown, weak=False)


def enqueue_chunks(application: Celery, campaign: str, chunks: list[int]) -> int:
    """One task per chunk (task id ``<campaign>:<chunk>``); how many were sent."""
    for chunk in chunks:
        application.send_task(
            CHUNK_TASK, args=[campaign, chunk], task_id=f"{campaign}:{chunk}", queue=QUEUE
        )
    return len(chunks)


def _send_chunk(task: Any, campaign: str, chunk: int) -> str:
    client = _client()
    try:
        return client.run(_run_chunk, campaign, chunk)
    except ChunkBusyError as exc:
        # Its first execution is alive: look again once it has had time to finish.
        raise task.retry(countdown=2, exc=exc) from None
    except JournalError as exc:
        _log.warning("chunk %s of %s: journal unavailable (%s); retrying", chunk, campaign, exc)
        raise task.retry(countdown=5, exc=exc) from None


def _single_call(**fields: Any) -> list[int]:
    """One call, returning the ids of the conversations it created."""
    conversations = _client().create_proactive_conversation(**fields)
    return [conversation.id for conversation in conversations]


async def _run_chunk(client: AsyncClient, campaign: str, chunk: int) -> str:
    if _PROCESS.runner is None:
        journal = os.environ.get("PROACTIVE_JOURNAL")
        if not journal:
            raise RuntimeError("PROACTIVE_JOURNAL (the PostgreSQL journal's DSN) is not set")
        _PROCESS.runner = ChunkRunner(journal, client, rate_limit_for=_rate_limit_for(client))
    return await _PROCESS.runner.run(campaign, chunk)


def _rate_limit_for(client: AsyncClient) -> Any:
    """The shared limit through Redis when there is one (PROACTIVE_REDIS_URL, or a Redis
    broker); else a limit per process."""
    redis_url = os.environ.get("PROACTIVE_REDIS_URL")
    broker = os.environ.get("PROACTIVE_BROKER_URL", "")
    if not redis_url and broker.startswith(("redis://", "rediss://")):
        redis_url = broker

    def build(template: ProactiveConversationRequest, settings: SendSettings) -> RateLimitBackend:
        if redis_url is None:
            return RateLimit(settings.rate, burst=settings.burst, adaptive=settings.adaptive)
        channel = template.channel_id if isinstance(template.channel_id, int) else None
        return SharedRateLimit(
            redis_url,
            key=default_limit_key(client.base_url, channel),
            rate=settings.rate,
            burst=settings.burst,
        )

    return build


def _client() -> Client:
    if _PROCESS.client is None or _PROCESS.client.closed:
        _PROCESS.client = Client()
    return _PROCESS.client


def _process_init(**_: Any) -> None:
    """A new worker process (a fork): nothing of the parent's client or runner is used."""
    _PROCESS.client = None
    _PROCESS.runner = None


def _process_shutdown(**_: Any) -> None:
    client, runner = _PROCESS.client, _PROCESS.runner
    _PROCESS.client = _PROCESS.runner = None
    if client is None:
        return
    if runner is not None:
        try:
            client.run(_close_runner, runner)
        except Exception:  # the loop may already be stopping: nothing left to flush then
            _log.debug("closing the chunk runner failed", exc_info=True)
    client.close()


async def _close_runner(_: AsyncClient, runner: ChunkRunner) -> None:
    await runner.aclose()


app: Final = create_app()
"""The SDK's own app (broker from ``PROACTIVE_BROKER_URL``): ``proactive-async worker
--engine celery`` runs it; ``celery -A proactive_async.celery worker`` does too."""
