"""Test code that calls the API, without the API: a mock transport and a threaded simulator.

``MockTransport`` answers every POST from a function of yours, without sockets; the client
over it retries, paces, decodes and raises exactly as over the network::

    from proactive_async import AsyncClient
    from proactive_async.testing import MockTransport, TransportResponse

    def handler(request):
        assert request.json()["recipient"] == ["+5511999990000"]
        return TransportResponse.json([{"id": 1, "active": True}])

    async with AsyncClient("https://api.test", "t", transport=MockTransport(handler)) as client:
        ...

``ThreadedSimulator`` is the real simulator served from its own thread, for synchronous test
clients (FastAPI's ``TestClient``, Flask, Django) that would block an async fixture's loop.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

from ._errors import ClientStateError
from ._transport_api import AsyncTransport, TransportRequest, TransportResponse
from .simulator import ThreadedSimulator

__all__ = [
    "AsyncTransport",
    "MockHandler",
    "MockTransport",
    "ThreadedSimulator",
    "TransportRequest",
    "TransportResponse",
    "answer_like_the_api",
    "problem_response",
]


class MockHandler(Protocol):
    """Your function: a request in, an answer out (or awaitable); raise to fail the POST."""

    def __call__(
        self, request: TransportRequest, /
    ) -> TransportResponse | Awaitable[TransportResponse]: ...


class MockTransport:
    """An ``AsyncTransport`` that answers from ``handler``, without sockets.

    Usage::

        transport = MockTransport(lambda request: TransportResponse(503))
        client = AsyncClient("https://api.test", "token", transport=transport)
        ...
        assert [r.path for r in transport.requests] == [...]

    The handler gets a ``TransportRequest`` (``method``, ``url``, ``path``, ``headers``
    without the token, ``body`` and ``json()``) and returns a ``TransportResponse`` (or
    an awaitable of one). To fail a POST without an answer, raise the SDK's error for it:
    ``ConnectError`` (not sent), ``ReadTimeout`` or ``ConnectionLostError`` (may have been
    processed).

    Parameters:
        handler: sync or async; default ``answer_like_the_api`` (200, one conversation per
            target).
    """

    def __init__(self, handler: MockHandler | None = None) -> None:
        self.handler: MockHandler = handler if handler is not None else answer_like_the_api
        self.requests: list[TransportRequest] = []
        """Every request handed to the handler, in order."""
        self.closed: bool = False

    async def handle_request(self, request: TransportRequest, /) -> TransportResponse:
        """Record ``request`` and return the handler's answer."""
        self.requests.append(request)
        answer = self.handler(request)
        if inspect.isawaitable(answer):
            answer = await answer
        if not isinstance(answer, TransportResponse):
            raise ClientStateError(
                f"the MockTransport's handler returned {answer!r}: return a TransportResponse"
                " (TransportResponse.json(data), problem_response(status, title))"
            )
        return answer

    async def aclose(self) -> None:
        """Mark the transport closed (``closed``); requests already recorded stay."""
        self.closed = True

    def __repr__(self) -> str:
        return f"<MockTransport {len(self.requests)} requests>"


def answer_like_the_api(request: TransportRequest, /) -> TransportResponse:
    """A 200 as the API gives it: one conversation per recipient and per contact id (ids
    1, 2, ... in each answer, in request order)."""
    call: Mapping[str, Any] = request.json()
    # Recipients first, then contacts, as the API orders them; a contact's number is made up.
    targets: list[tuple[str, str | None]] = [(str(r), None) for r in call.get("recipient") or ()]
    targets += [(f"+1{int(c) % 10**10:010d}", f"Contact {c}") for c in call.get("contactIds") or ()]
    conversations = []
    for number, (to, contact_name) in enumerate(targets, start=1):
        conversations.append(
            {
                "id": number,
                "active": True,
                "conversationId": f"mock-{number}",
                "channelId": call.get("channelId", 0),
                "botId": call.get("botId", 0),
                "contactName": contact_name,
                "messages": [{"id": number, "to": to, "conversationId": number}],
            }
        )
    return TransportResponse.json(conversations)


def problem_response(
    status: int,
    title: str,
    *,
    errors: Mapping[str, list[str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> TransportResponse:
    """An error answer with an RFC 9457 ProblemDetails body, as the API sends them.

    ``problem_response(429, "Too Many Requests", headers={"Retry-After": "1"})``;
    ``errors`` are a 400's validation errors by field (``{"Recipient": ["..."]}``).
    """
    problem: dict[str, Any] = {"title": title, "status": status}
    if errors is not None:
        problem["errors"] = dict(errors)
    merged = {"Content-Type": "application/problem+json; charset=utf-8", **(headers or {})}
    return TransportResponse.json(problem, status=status, headers=merged)


def _conforms(transport: MockTransport) -> AsyncTransport:
    return transport  # mypy checks here that MockTransport implements the protocol
