"""The transport seam: what ``AsyncClient(transport=...)`` hands one request to.

The client builds the request, retries, paces, decodes and raises; a transport only makes
one POST and returns the raw answer. The default ones are the SDK's own (``_transport``);
``proactive_async.testing.MockTransport`` answers from a function, without sockets.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import msgspec

__all__ = ["AsyncTransport", "TransportRequest", "TransportResponse"]


@dataclass(frozen=True, slots=True)
class TransportRequest:
    """One POST the client wants sent: method, URL, headers and the encoded JSON body.

    ``headers`` hold everything sent except ``Authorization``; a transport that really
    sends takes the token from ``token`` (kept out of ``repr`` and of ``headers``, so that
    a failed assertion never prints it).
    """

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    token: str = field(default="", repr=False, compare=False)

    @property
    def path(self) -> str:
        """The URL's path, e.g. ``/api/Conversation/proactive-conversation``."""
        rest = self.url.partition("://")[2]
        return "/" + rest.partition("/")[2].partition("?")[0]

    def json(self) -> Any:
        """The body decoded: a dict with the API's camelCase keys (``recipient``, ...)."""
        return msgspec.json.decode(self.body)


@dataclass(frozen=True, slots=True, init=False)
class TransportResponse:
    """The raw answer to one request: status, headers (case-insensitive) and body.

    Usage::

        TransportResponse(200, {"Content-Type": "application/json"}, b"[]")
        TransportResponse.json([], status=200)
    """

    status: int
    headers: Mapping[str, str]
    body: bytes

    def __init__(
        self, status: int, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> None:
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "headers", _Headers((headers or {}).items()))
        object.__setattr__(self, "body", body)

    @classmethod
    def json(
        cls, data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> TransportResponse:
        """``data`` encoded as JSON, with ``Content-Type: application/json``."""
        merged = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        return cls(status, merged, msgspec.json.encode(data))


@runtime_checkable
class AsyncTransport(Protocol):
    """What sends one request and returns its raw answer, for ``AsyncClient(transport=)``.

    It raises the SDK's transport errors (``ConnectError``, ``ReadTimeout``,
    ``ConnectionLostError``, ...) for a request that got no answer; a status, any status,
    is an answer. Retries, rate limits, decoding and status errors stay the client's.
    ``aclose`` is awaited when the client closes.
    """

    async def handle_request(self, request: TransportRequest, /) -> TransportResponse:
        """Send ``request`` once (never follow a redirect) and return the answer."""
        ...

    async def aclose(self) -> None:
        """Release what the transport holds; the client calls it once, from ``aclose``."""
        ...


class _Headers(Mapping[str, str]):
    """Read-only headers looked up case-insensitively, as HTTP's are."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._items = {name.lower(): (name, value) for name, value in items}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return repr(dict(self.items()))
