"""FastAPI: one AsyncClient for the app's lifetime, one rate limit for every uvicorn worker.

Run (from this folder, with ``web_common.py`` beside it)::

    pip install 'proactive-async[redis]' fastapi uvicorn
    export PROACTIVE_BASE_URL=https://api.example.com PROACTIVE_TOKEN=...
    export PROACTIVE_CHANNEL_ID=1 PROACTIVE_BOT_ID=2 PROACTIVE_TEMPLATE_ID=3
    export PROACTIVE_REDIS_URL=redis://127.0.0.1:6379/0 PROACTIVE_RATE=50   # both optional
    uvicorn fastapi_app:app --workers 4

    curl -X POST localhost:8000/notifications -H 'content-type: application/json' \\
         -d '{"recipient": "+5511999990000", "variables": {"name": "Ana"}}'

Each uvicorn worker is a process with its own event loop, so each runs the lifespan: one
``AsyncClient`` (one connection pool) per worker, made at start-up and closed at shutdown,
never one per request. With ``PROACTIVE_REDIS_URL`` every worker's ``SharedRateLimit``
names the same key (the API host and the channel), so the workers together send at most
``PROACTIVE_RATE`` targets/s (adaptive to the API's 429s when unset); without it, no
client-side limit.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated, TypedDict

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from web_common import answer_for, channel_id_from_env, template_from_env

from proactive_async import (
    AsyncClient,
    ProactiveConversationRequest,
    ProactiveError,
    SharedRateLimit,
    default_limit_key,
)


class State(TypedDict):
    """What the lifespan gives every request (``request.state``)."""

    client: AsyncClient
    template: ProactiveConversationRequest


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[State]:
    base_url = os.environ["PROACTIVE_BASE_URL"]
    redis_url = os.environ.get("PROACTIVE_REDIS_URL")
    rate = os.environ.get("PROACTIVE_RATE")
    # Closed in reverse order at shutdown: the client first, then the limit's Redis pool.
    async with AsyncExitStack() as resources:
        limit: SharedRateLimit | None = None
        if redis_url:
            limit = await resources.enter_async_context(
                SharedRateLimit(
                    redis_url,
                    key=default_limit_key(base_url, channel_id_from_env()),
                    rate=float(rate) if rate else None,
                )
            )
        client = await resources.enter_async_context(
            AsyncClient(base_url, rate_limit=limit)  # the token: PROACTIVE_TOKEN
        )
        yield {"client": client, "template": template_from_env()}


app = FastAPI(lifespan=lifespan)


def proactive_client(request: Request) -> AsyncClient:
    client: AsyncClient = request.state.client
    return client


def message_template(request: Request) -> ProactiveConversationRequest:
    template: ProactiveConversationRequest = request.state.template
    return template


class Notification(BaseModel):
    recipient: str
    variables: dict[str, str] = {}


class Sent(BaseModel):
    conversation_ids: list[int]


@app.post("/notifications", status_code=201)
async def notify(
    notification: Notification,
    client: Annotated[AsyncClient, Depends(proactive_client)],
    template: Annotated[ProactiveConversationRequest, Depends(message_template)],
) -> Sent:
    conversations = await client.create_proactive_conversation(
        template, recipient=[notification.recipient], content_variables=notification.variables
    )
    return Sent(conversation_ids=[conversation.id for conversation in conversations])


@app.exception_handler(ProactiveError)
async def proactive_error(request: Request, exc: ProactiveError) -> JSONResponse:
    answer = answer_for(exc)
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)
