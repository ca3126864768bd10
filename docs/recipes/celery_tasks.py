"""Celery: your app runs your own tasks and the SDK's, distributed campaigns included.

Run a worker (from this folder)::

    pip install 'proactive-async[celery]'
    export PROACTIVE_BROKER_URL=redis://127.0.0.1:6379/0
    export PROACTIVE_BASE_URL=https://api.example.com PROACTIVE_TOKEN=...
    export PROACTIVE_JOURNAL=postgresql://app@db/campaigns   # distributed campaigns' journal
    export PROACTIVE_CHANNEL_ID=1 PROACTIVE_BOT_ID=2 PROACTIVE_TEMPLATE_ID=3
    celery -A celery_tasks worker --concurrency 4

Send one message from your code: ``send_order_confirmation.delay("+5511999990000", "Ana",
"A-1001")``, or with the SDK's single-call task: ``app.send_task(SINGLE_CALL_TASK,
kwargs={"channel_id": 1, "bot_id": 2, "conversation_template_id": 3, "recipient": [...]})``.
Run a campaign on these workers: ``proactive-async enqueue recipients.csv --engine celery
...`` with the same broker and journal; its slices go to the SDK's queue, which this app's
workers consume beside their default one. Each worker process has its own event loop,
connection pool and slice worker (``register`` hooks them to the process signals).
``CELERY_RESULT_BACKEND`` (optional) keeps the tasks' results.
"""

from __future__ import annotations

import functools
import os

from celery import Celery, Task
from kombu.entity import Queue

from proactive_async import (
    Client,
    ProactiveConversationRequest,
    ProactiveError,
    RateLimitError,
    ServiceUnavailableError,
    is_safe_to_retry,
)
from proactive_async import celery as proactive

app = Celery(
    "shop",
    broker=os.environ.get("PROACTIVE_BROKER_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("CELERY_RESULT_BACKEND"),
)
app.conf.update(
    # Your tasks on Celery's default queue, the campaign slices on the SDK's: a worker
    # consumes every queue listed here.
    task_queues=[Queue("celery"), Queue(proactive.QUEUE)],
    # A slice waits for a free worker process, not behind a busy one.
    worker_prefetch_multiplier=1,
    # A message of a worker killed outright comes back after a minute, not Celery's hour
    # (its slice does not wait for it: a live worker takes it over once its lease expires).
    broker_transport_options={"visibility_timeout": 60},
)
proactive.register(app)

CONFIRMATION = ProactiveConversationRequest(
    channel_id=int(os.environ["PROACTIVE_CHANNEL_ID"]),
    bot_id=int(os.environ["PROACTIVE_BOT_ID"]),
    conversation_template_id=int(os.environ["PROACTIVE_TEMPLATE_ID"]),
)


@functools.cache
def proactive_client() -> Client:
    """One blocking client per worker process (a forked process makes its own pool)."""
    return Client()  # PROACTIVE_BASE_URL, PROACTIVE_TOKEN


# Not acks_late: a message redelivered after the send could send it twice.
@app.task(bind=True, max_retries=5)
def send_order_confirmation(self: Task, phone: str, name: str, order: str) -> list[int]:
    """Your own task: one message; the ids of the conversations it created."""
    try:
        conversations = proactive_client().create_proactive_conversation(
            CONFIRMATION, recipient=[phone], content_variables={"name": name, "order": order}
        )
    except ProactiveError as exc:
        # The SDK has already retried what it safely could; when the API is still
        # throttling or down, try again later, but never a send that may have gone out.
        if not is_safe_to_retry(exc):
            raise
        raise self.retry(exc=exc, countdown=_retry_after(exc)) from None
    return [conversation.id for conversation in conversations]


def _retry_after(exc: ProactiveError) -> float:
    """The API's ``Retry-After`` when it gave one; else half a minute."""
    if isinstance(exc, RateLimitError | ServiceUnavailableError) and exc.retry_after is not None:
        return exc.retry_after
    return 30.0
