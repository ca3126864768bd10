"""arq: your own worker settings, running your jobs beside the SDK's campaign slices.

Run (from this folder)::

    pip install 'proactive-async[arq]'
    export PROACTIVE_BASE_URL=https://api.example.com PROACTIVE_TOKEN=...
    export PROACTIVE_REDIS_URL=redis://127.0.0.1:6379/0
    export PROACTIVE_JOURNAL=postgresql://app@db/campaigns   # distributed campaigns' journal
    export PROACTIVE_CHANNEL_ID=1 PROACTIVE_BOT_ID=2 PROACTIVE_TEMPLATE_ID=3   # the welcome
    arq arq_settings.WorkerSettings

Queue your own job from anywhere with ``await pool.enqueue_job("send_welcome", phone,
"Ana")``; queue a campaign's slices with ``proactive-async enqueue`` (same Redis, same
journal): this worker runs both. The SDK's ``startup`` puts one ``AsyncClient`` and one
slice worker per worker process in ``ctx``; your jobs send through that same client
(``proactive.client(ctx)``: one connection pool per process). ``startup`` here runs the
SDK's, then is where your own resources go; ``shutdown`` closes yours first, then the SDK's.
"""

from __future__ import annotations

import os
from typing import Any

from arq.connections import RedisSettings
from arq.worker import func

from proactive_async import ProactiveConversationRequest
from proactive_async import arq as proactive
from proactive_async.settings import DEFAULT_REDIS_URL, Settings

SETTINGS = Settings.from_env()  # PROACTIVE_REDIS_URL, PROACTIVE_JOURNAL, ...

WELCOME = ProactiveConversationRequest(
    channel_id=int(os.environ["PROACTIVE_CHANNEL_ID"]),
    bot_id=int(os.environ["PROACTIVE_BOT_ID"]),
    conversation_template_id=int(os.environ["PROACTIVE_TEMPLATE_ID"]),
)


async def send_welcome(ctx: dict[str, Any], phone: str, name: str) -> list[int]:
    """Your own job: one welcome message; the ids of the conversations it created."""
    conversations = await proactive.client(ctx).create_proactive_conversation(
        WELCOME, recipient=[phone], content_variables={"name": name}
    )
    return [conversation.id for conversation in conversations]


async def startup(ctx: dict[str, Any]) -> None:
    await proactive.startup(ctx)  # the client (PROACTIVE_BASE_URL, PROACTIVE_TOKEN), the slices
    # ... then your own resources: ctx["db"] = await create_db_pool(), ...


async def shutdown(ctx: dict[str, Any]) -> None:
    # ... your own resources first, then the SDK's
    await proactive.shutdown(ctx)


class WorkerSettings:
    functions = [
        # A single send is not safe to run twice (it could send twice): one try.
        func(send_welcome, name="send_welcome", max_tries=1),
        # The SDK's slice job as it registers it (many tries: it is retried while the
        # journal is down; a slice a live worker holds just ends).
        proactive.JOB,
    ]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(SETTINGS.redis_url or DEFAULT_REDIS_URL)
    # Your jobs and the SDK's slices at once; the SDK's calls in flight stay within
    # PROACTIVE_CONCURRENCY however many slices run.
    max_jobs = 16
