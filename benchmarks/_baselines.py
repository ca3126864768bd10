"""The baselines, written here: bare msgspec Structs, a pydantic v2 model, and the hand-written
aiohttp and httpx call loops the SDK is compared with.

The bare Structs have the same fields as the SDK's Conversation but none of its additions:
no defaults (every field required, as the contract's sample always sends them), plain
``int`` for enums, no tolerant second pass.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import msgspec
from _common import PATH, TOKEN


class BareMessage(msgspec.Struct, rename="camel"):
    id: int
    created_at: datetime
    from_: str | None = msgspec.field(name="from")
    to: str | None
    content: str | None
    conversation_id: int
    sentiment: str | None
    offset: str | None
    is_nps: bool = msgspec.field(name="isNPS")
    content_sid: str | None
    message_type: int
    media_url: str | None
    media_file_name: str | None
    tenant_id: int
    user_id: int
    content_variables: str | None
    message_sid: str | None
    message_status: int
    sent: bool
    delivered: bool
    read: bool
    error_code: str | None
    error_message: str | None
    is_read_by_user: bool
    document_id: int


class BareTag(msgspec.Struct, rename="camel"):
    id: int
    name: str | None
    active: bool
    created_at: datetime
    tenant_id: int


class BareVariable(msgspec.Struct, rename="camel"):
    id: int
    name: str | None
    value: str | None
    conversation_id: int


class BareConversation(msgspec.Struct, rename="camel"):
    id: int
    active: bool
    live_agent: bool
    from_: str | None = msgspec.field(name="from")
    conversation_id: str | None
    water_mark: str | None
    token: str | None
    created_at: datetime
    finished_at: datetime | None
    queued_at: datetime | None
    last_conversation_update_time: datetime
    last_message_content: str | None
    contact_name: str | None
    user_id: int
    user_name: str | None
    counterpart_user_id: int
    counterpart_user_name: str | None
    bot_id: int
    bot_name: str | None
    file_url: str | None
    file_name: str | None
    tenant_id: int
    conversation_summary: str | None
    messages: list[BareMessage] | None
    score: int
    final_score: int
    checklist_id: int
    channel_id: int
    conversation_integration_type: int
    duration: str | None
    high_importance_error_detected: bool
    tags: list[BareTag] | None
    conversation_evaluation_status: int
    conversation_evaluation_status_message: str | None
    queue_id: int
    queue_name: str | None
    conversation_ended_reason_id: int
    agent_type: int
    conversation_type: int
    application_status_id: int
    overall_sentiment: str | None
    call_status: str | None
    disconnection_reason: str | None
    call_successful: bool
    total_unreaded_messages_by_user: int
    dynamic_variables: list[BareVariable] | None
    data_collection: list[BareVariable] | None
    agent_id: int


BARE_DECODER = msgspec.json.Decoder(list[BareConversation])
_HEADERS = {
    "Authorization": f"Bearer {TOKEN}",
    "Content-Type": "application/json",
    "Accept": "application/json",
}
_encode = msgspec.json.Encoder().encode


def request_body(recipient: str) -> bytes:
    return _encode({"channelId": 1, "botId": 1, "recipient": [recipient]})


def pydantic_adapter() -> Any:
    """``TypeAdapter(list[Model])`` of a pydantic v2 model with the same fields (camel aliases)."""
    from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
    from pydantic.alias_generators import to_camel

    class _Base(BaseModel):
        model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    def model_of(struct: type[msgspec.Struct]) -> type[BaseModel]:
        # Build each model from the bare Struct's annotations, so the two can never drift.
        import typing

        hints = typing.get_type_hints(struct)
        annotations: dict[str, Any] = {}
        namespace: dict[str, Any] = {}
        for name, hint in hints.items():
            nested = _nested_struct(hint)
            if nested is not None:
                hint = list[model_of(nested)] | None  # type: ignore[misc]
            annotations[name] = hint
            if name == "from_":
                namespace[name] = Field(alias="from")
            elif name == "is_nps":
                namespace[name] = Field(alias="isNPS")
        namespace["__annotations__"] = annotations
        return type("P" + struct.__name__, (_Base,), namespace)

    return TypeAdapter(list[model_of(BareConversation)])  # type: ignore[misc,arg-type]


def _nested_struct(hint: Any) -> type[msgspec.Struct] | None:
    import typing

    for arg in typing.get_args(hint):
        for inner in typing.get_args(arg):
            if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
                return inner
    return None


# --- call loops -------------------------------------------------------------------------


async def aiohttp_loop(url: str, calls: int, concurrency: int, *, warmup: int = 64) -> float:
    """Calls/s of a hand-written loop: one ClientSession, TCPConnector(limit), a semaphore,
    msgspec decode into the bare Structs."""
    import aiohttp

    endpoint = url + PATH
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=_HEADERS) as session:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate, session.post(endpoint, data=request_body(_phone(i))) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                BARE_DECODER.decode(body)

        await asyncio.gather(*(one(i) for i in range(warmup)))
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
        return calls / (time.perf_counter() - start)


async def aiohttp_latencies(url: str, calls: int, *, warmup: int = 20) -> list[float]:
    """Seconds per call, one call in flight, of the hand-written aiohttp loop."""
    import aiohttp

    endpoint = url + PATH
    out: list[float] = []
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, headers=_HEADERS) as session:
        for i in range(warmup + calls):
            start = time.perf_counter()
            async with session.post(endpoint, data=request_body(_phone(i))) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                BARE_DECODER.decode(body)
            if i >= warmup:
                out.append(time.perf_counter() - start)
    return out


async def httpx_loop(url: str, calls: int, concurrency: int, *, warmup: int = 64) -> float:
    """Calls/s of an httpx.AsyncClient loop (limits = concurrency), same decode."""
    import httpx

    endpoint = url + PATH
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, headers=_HEADERS) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                resp = await client.post(endpoint, content=request_body(_phone(i)))
                if resp.status_code != 200:
                    raise RuntimeError(f"HTTP {resp.status_code}")
                BARE_DECODER.decode(resp.content)

        await asyncio.gather(*(one(i) for i in range(warmup)))
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
        return calls / (time.perf_counter() - start)


def _phone(i: int) -> str:
    return f"+55119{10_000_000 + i % 80_000_000:08d}"
