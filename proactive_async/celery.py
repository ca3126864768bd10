"""Celery integration: distributed campaigns on Celery workers, and a single-call task.

Run a worker (prefork) with the SDK's app::

    PROACTIVE_BROKER_URL=redis://redis:6379/0 PROACTIVE_JOURNAL=postgresql://app@db/campaigns \\
    PROACTIVE_BASE_URL=https://api.example.com PROACTIVE_TOKEN=... \\
        proactive-async worker --engine celery

or add the tasks to your own app::

    from proactive_async.celery import register
    register(app)       # the slice task and the single-call task, and the process signals

Celery runs sync functions, so each worker process holds one event loop for its lifetime
(the blocking ``Client``'s, started on ``worker_process_init`` and closed on
``worker_process_shutdown``), with one connection pool and one ``SliceWorker``, whose
sweep of the journal runs on that loop between tasks (a task no caller waits for: a
keeper thread drives the loop while it runs).

Delivery: the slice task is ``acks_late`` with ``reject_on_worker_lost``: a worker process
killed mid-task gets its message back on the queue. None of that is what recovers a
campaign quickly: a dead or frozen worker's slice is taken over by a live worker's sweep
of the journal once its lease expires (seconds), and a message delivered while the slice
is held by a live owner just ends (``busy``). Exactly-once per record comes from the
journal's fence (``proactive_async.distributed``), never from Celery. The single-call task
is *not* ``acks_late``: a redelivered single call could send a message twice; lost, it is
the caller's to see.

Dependencies: the Redis transport of kombu 5.7 needs redis-py >= 6.4, which arq 0.28 does
not accept (< 6), so ``proactive-async[celery]`` and ``proactive-async[arq]`` are conflicting
extras, installed in separate environments (``make test`` tests each in its own).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from celery import Celery, signals

from ._client import AsyncClient
from ._errors import JournalError
from ._loop import running_loop_name
from ._models import ProactiveConversationRequest
from ._sync import Client
from .distributed import DEFAULT_SLICES, SendSettings, SliceRunner, SliceWorker
from .ratelimit import RateLimitBackend
from .settings import (
    DEFAULT_CELERY_PROCESSES,
    DEFAULT_REDIS_URL,
    DEFAULT_WORKER_CONCURRENCY,
    Settings,
    build_send_rate_limit,
    build_sync_client,
    display_url,
)

__all__ = [
    "SINGLE_CALL_TASK",
    "SLICE_TASK",
    "app",
    "configure",
    "create_app",
    "enqueue_slices",
    "register",
]

SLICE_TASK: Final = "proactive_async.send_slice"
SINGLE_CALL_TASK: Final = "proactive_async.create_proactive_conversation"
QUEUE: Final = "proactive-async"
_log = logging.getLogger("proactive_async")


class _Process:
    """The worker process's settings, client and slice worker (new ones after each fork)."""

    settings: Settings | None = None
    client: Client | None = None
    worker: SliceWorker | None = None


_PROCESS = _Process()


def configure(settings: Settings) -> None:
    """The settings every worker process of this interpreter uses (before it forks)."""
    _PROCESS.settings = settings


def _settings() -> Settings:
    if _PROCESS.settings is None:
        _PROCESS.settings = Settings.from_env()
    return _PROCESS.settings


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app for the SDK's tasks, with the delivery settings the fence needs."""
    settings = settings or _settings()
    application = Celery("proactive_async", broker=settings.broker_url or DEFAULT_REDIS_URL)
    application.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
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
    """Add the slice task and the single-call task to ``application``, and the signals that
    give each worker process its own event loop, client and slice worker."""
    application.task(
        name=SLICE_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=None,
        ignore_result=True,
    )(_send_slice)
    application.task(name=SINGLE_CALL_TASK, acks_late=False)(_single_call)
    signals.worker_process_init.connect(_process_init, weak=False)
    signals.worker_process_shutdown.connect(_process_shutdown, weak=False)


def enqueue_slices(application: Celery, campaign: str, slices: list[int]) -> int:
    """One task per slice (task id ``<campaign>:<slice>``); how many were sent."""
    for number in slices:
        application.send_task(
            SLICE_TASK, args=[campaign, number], task_id=f"{campaign}:{number}", queue=QUEUE
        )
    return len(slices)


def _send_slice(task: Any, campaign: str, slice_: int) -> str:
    client = _client()
    try:
        return client.run(_run_slice, campaign, slice_)
    except JournalError as exc:  # the task stays queued for a worker that can do it
        _log.error("slice %s of %s: %s; the task is retried in 10 s", slice_, campaign, exc)
        raise task.retry(countdown=10, exc=exc) from None


def _single_call(**fields: Any) -> list[int]:
    """One call, returning the ids of the conversations it created."""
    conversations = _client().create_proactive_conversation(**fields)
    return [conversation.id for conversation in conversations]


async def _run_slice(client: AsyncClient, campaign: str, slice_: int) -> str:
    worker = await _worker(client)
    result = await worker.run(campaign, slice_)
    return "busy" if result is None else result.state


async def _worker(client: AsyncClient) -> SliceWorker:
    if _PROCESS.worker is None:
        settings = _settings()
        if not settings.journal:
            raise JournalError("no journal: set PROACTIVE_JOURNAL (the PostgreSQL journal's DSN)")
        runner = SliceRunner(
            settings.journal,
            client,
            rate_limit_for=_rate_limit_for(settings),
            concurrency=settings.concurrency or DEFAULT_WORKER_CONCURRENCY,
        )
        _PROCESS.worker = SliceWorker(runner, slices=DEFAULT_SLICES)
        await _PROCESS.worker.start()
        _log.info(
            "proactive-async worker process: engine celery, broker %s, journal %s, API %s, "
            "%d calls in flight, event loop %s",
            display_url(settings.broker_url or DEFAULT_REDIS_URL),
            runner.where,
            display_url(client.base_url),
            runner.concurrency,
            running_loop_name(),
        )
    return _PROCESS.worker


def _rate_limit_for(settings: Settings) -> Any:
    """The shared limit through Redis when there is one (PROACTIVE_REDIS_URL, or a Redis
    broker); else each process keeps to its share of the rate."""
    redis_url = settings.redis_url
    broker = settings.broker_url or ""
    if redis_url is None and broker.startswith(("redis://", "rediss://")):
        redis_url = broker
    processes = settings.worker_concurrency or DEFAULT_CELERY_PROCESSES

    def build(template: ProactiveConversationRequest, send: SendSettings) -> RateLimitBackend:
        share = None if redis_url else processes
        return build_send_rate_limit(settings, template, send, redis_url=redis_url, processes=share)

    return build


def _client() -> Client:
    if _PROCESS.client is None or _PROCESS.client.closed:
        _PROCESS.client = build_sync_client(_settings())
    return _PROCESS.client


def _process_init(**_: Any) -> None:
    """A new worker process (a fork): its own client and slice worker, sweeping at once."""
    _PROCESS.client = None
    _PROCESS.worker = None
    if _settings().journal:
        try:
            _client().run(_worker)
        except Exception:  # the first task says why again; the process must still start
            _log.warning("the slice worker could not start", exc_info=True)


def _process_shutdown(**_: Any) -> None:
    client, worker = _PROCESS.client, _PROCESS.worker
    _PROCESS.client = _PROCESS.worker = None
    if client is None:
        return
    if worker is not None:
        try:
            client.run(_close_worker, worker)
        except Exception:  # the loop may already be stopping: nothing left to flush then
            _log.debug("closing the slice worker failed", exc_info=True)
    client.close()


async def _close_worker(_: AsyncClient, worker: SliceWorker) -> None:
    await worker.aclose()


app: Final = create_app()
"""The SDK's own app (broker from ``PROACTIVE_BROKER_URL``): ``proactive-async worker
--engine celery`` runs it; ``celery -A proactive_async.celery worker`` does too."""
