"""A minimal, fast HTTP/1.1 server for the endpoint, so the server is never the bottleneck.

A raw asyncio Protocol (no framework): it answers every POST with a prebuilt JSON array of
one realistic Conversation per recipient (every field of the OpenAPI Conversation, one
message whose ``to`` echoes the recipient), keep-alive, pipelining-safe. ``--timestamps
FILE`` records each request's arrival time (monotonic seconds) and writes them, one per
line, when stopped with SIGTERM/SIGINT; benchmark 5 reads them.

Run: ``python benchmarks/_fastserver.py --port 0`` prints ``listening on http://HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: "
_RECIPIENT_KEY = b'"recipient":['
_MARK = "__TO__"


def conversation(index: int = 1, to: str = _MARK) -> dict[str, Any]:
    """One Conversation of realistic shape: every field of the contract, one message."""
    stamp = "2024-05-01T12:34:56.1234567Z"
    return {
        "id": 1000 + index,
        "active": True,
        "liveAgent": False,
        "from": "+5511988887777",
        "conversationId": f"c0ffee00-0000-4000-8000-{index:012d}",
        "waterMark": "1714566896123",
        "token": None,
        "createdAt": stamp,
        "finishedAt": None,
        "queuedAt": None,
        "lastConversationUpdateTime": stamp,
        "lastMessageContent": "Olá! Sua fatura de maio está disponível.",
        "contactName": "Ana Souza",
        "userId": 17,
        "userName": "bot-user",
        "counterpartUserId": 0,
        "counterpartUserName": None,
        "botId": 1,
        "botName": "Billing bot",
        "fileUrl": None,
        "fileName": None,
        "tenantId": 42,
        "conversationSummary": None,
        "messages": [
            {
                "id": 5000 + index,
                "createdAt": stamp,
                "from": "+5511988887777",
                "to": to,
                "content": "Olá! Sua fatura de maio está disponível.",
                "conversationId": 1000 + index,
                "sentiment": None,
                "offset": None,
                "isNPS": False,
                "contentSid": "HXb5b62575e6e4ff6129ad7c8efe1f983e",
                "messageType": 1,
                "mediaUrl": None,
                "mediaFileName": None,
                "tenantId": 42,
                "userId": 17,
                "contentVariables": '{"1":"Ana","2":"maio"}',
                "messageSid": "SM1234567890abcdef1234567890abcdef",
                "messageStatus": 1,
                "sent": True,
                "delivered": False,
                "read": False,
                "errorCode": None,
                "errorMessage": None,
                "isReadByUser": False,
                "documentId": 0,
            }
        ],
        "score": 0,
        "finalScore": 0,
        "checklistId": 0,
        "channelId": 1,
        "conversationIntegrationType": 3,
        "duration": "00:00:00.1230000",
        "highImportanceErrorDetected": False,
        "tags": [{"id": 9, "name": "billing", "active": True, "createdAt": stamp, "tenantId": 42}],
        "conversationEvaluationStatus": 0,
        "conversationEvaluationStatusMessage": None,
        "queueId": 3,
        "queueName": "Financeiro",
        "conversationEndedReasonId": 0,
        "agentType": 1,
        "conversationType": 2,
        "applicationStatusId": 0,
        "overallSentiment": None,
        "callStatus": None,
        "disconnectionReason": None,
        "callSuccessful": False,
        "totalUnreadedMessagesByUser": 0,
        "dynamicVariables": [
            {"id": 1, "name": "name", "value": "Ana", "conversationId": 1000 + index}
        ],
        "dataCollection": [],
        "agentId": 0,
    }


_BEFORE, _AFTER = msgspec.json.encode(conversation()).split(_MARK.encode())
_DEFAULT_TO = b"+5511999990000"


def _recipients(body: bytes) -> list[bytes]:
    """The recipient strings of a request body, found without a JSON parse."""
    start = body.find(_RECIPIENT_KEY)
    if start < 0:
        return [_DEFAULT_TO]
    start += len(_RECIPIENT_KEY)
    end = body.find(b"]", start)
    items = [item.strip().strip(b'"') for item in body[start:end].split(b",")]
    return [item for item in items if item] or [_DEFAULT_TO]


def _response(body: bytes) -> bytes:
    payload = b"[" + b",".join(_BEFORE + to + _AFTER for to in _recipients(body)) + b"]"
    return _HEAD + str(len(payload)).encode() + b"\r\n\r\n" + payload


class _Http(asyncio.Protocol):
    """Reads requests from a buffer (Content-Length bodies only) and answers each in turn."""

    def __init__(self, stamps: list[float] | None) -> None:
        self._buffer = bytearray()
        self._stamps = stamps
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        out: list[bytes] = []
        while True:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                break
            length = _content_length(bytes(self._buffer[:head_end]))
            total = head_end + 4 + length
            if len(self._buffer) < total:
                break
            body = bytes(self._buffer[head_end + 4 : total])
            del self._buffer[:total]
            if self._stamps is not None:
                self._stamps.append(time.monotonic())
            out.append(_response(body))
        if out and self._transport is not None:
            self._transport.write(b"".join(out))


def _content_length(head: bytes) -> int:
    lower = head.lower()
    index = lower.find(b"\r\ncontent-length:")
    if index < 0:
        return 0
    end = lower.find(b"\r\n", index + 2)
    return int(lower[index + 17 : end if end >= 0 else None].strip())


async def _serve(host: str, port: int, stamps: list[float] | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Http(stamps), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()
    print(f"listening on http://{bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--timestamps", default=None)
    args = parser.parse_args(argv)
    stamps: list[float] | None = [] if args.timestamps else None
    asyncio.run(_serve(args.host, args.port, stamps))
    if args.timestamps and stamps is not None:
        Path(args.timestamps).write_text("\n".join(f"{t:.6f}" for t in stamps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
