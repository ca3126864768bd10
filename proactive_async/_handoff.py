"""How a call reaches a user's ``AsyncTransport`` (``AsyncClient(transport=...)``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from ._errors import ClientStateError, ResponseTooLargeError
from ._transport import MAX_ERROR_BODY, RawResponse
from ._transport_api import AsyncTransport, TransportRequest, TransportResponse

__all__ = ["Handoff"]


class Handoff:
    """Hands each POST to a user's AsyncTransport as a TransportRequest, and its answer back
    as the RawResponse the client decodes, capped as the default transport caps it."""

    __slots__ = ("_cap", "_closed", "_headers", "_token", "_transport")

    def __init__(
        self,
        closed: Callable[[], bool],
        token: str,
        transport: AsyncTransport,
        headers: Mapping[str, str],
        cap: int,
    ) -> None:
        self._closed = closed  # the client's, at the time of each call
        self._transport = transport
        self._headers = headers
        self._token = token
        self._cap = cap

    async def post(self, url: str, body: bytes) -> RawResponse:
        if self._closed():
            raise ClientStateError("the client is closed; create a new AsyncClient")
        request = TransportRequest("POST", url, dict(self._headers), body, self._token)
        started = time.perf_counter()
        answer = await self._transport.handle_request(request)
        if not isinstance(answer, TransportResponse):
            raise TypeError(f"a transport returned {answer!r}, not a TransportResponse")
        payload = answer.body
        if not 200 <= answer.status < 300:
            payload = payload[:MAX_ERROR_BODY]
        elif len(payload) > self._cap:
            raise ResponseTooLargeError(
                f"response of {len(payload)} bytes passes max_response_bytes={self._cap}",
                status=answer.status,
            )
        return RawResponse(answer.status, answer.headers, payload, time.perf_counter() - started)
