"""The simulated API: an aiohttp.web server for the one endpoint, with audit and faults.

Each call goes: auth (401) -> content type (415) -> body validation (400) -> token bucket
(429) -> one fault draw: drop_before / 429 / 503 leave it unprocessed -> PROCESS (the
audit counts every target) -> 500 / drop_after / truncate_after -> 200.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
import time
from types import TracebackType
from typing import Any, Final

import msgspec
from aiohttp import web

from .._constants import API_PATH
from ._audit import Audit
from ._bucket import TokenBucket, format_retry_after
from ._config import SimulatorConfig
from ._registry import SERVING
from ._render import Renderer
from ._validation import Call, parse_call

__all__ = ["ENDPOINT_PATH", "Simulator"]

ENDPOINT_PATH: Final = API_PATH
"""The path the simulator serves (the API's, ``_constants.API_PATH``)."""
# Kestrel's default MaxRequestBodySize; a bigger body answers 413.
_MAX_BODY_BYTES = 30_000_000
_JSON = "application/json; charset=utf-8"
_PROBLEM_JSON = "application/problem+json; charset=utf-8"
_RFC9110 = "https://tools.ietf.org/html/rfc9110#section-"
_RFC6585_429 = "https://tools.ietf.org/html/rfc6585#section-4"
_encode = msgspec.json.Encoder().encode
_UNPROCESSED_FAULTS = frozenset({"drop_before", "rate_429", "rate_503"})


def _trace_id() -> str:
    """A W3C traceparent, as ASP.NET Core puts in every ProblemDetails."""
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-00"


def _problem(status: int, type_: str, title: str, **extra: Any) -> bytes:
    return _encode(
        {"type": type_, "title": title, "status": status, **extra, "traceId": _trace_id()}
    )


def _is_json(content_type: str) -> bool:
    return content_type in ("application/json", "text/json") or content_type.endswith("+json")


class Simulator:
    """A real HTTP server that imitates the Proactive Conversation API, on 127.0.0.1.

    Usage::

        async with Simulator(SimulatorConfig(faults=Faults(rate_503=0.1, seed=1))) as sim:
            ...  # point a client at sim.url with token sim.config.token
            assert sim.audit.duplicates() == {}

    Parameters:
        config: token, rate limit, limits and faults; change it later with ``configure``.
        host: the address to bind (loopback by default).
        port: the port to bind; 0 picks a free one, read it back from ``url``.
        ssl_context: serve HTTPS with this server context (``url`` is then ``https://``).
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.audit: Audit = Audit()
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._renderer = Renderer()
        self.configure(config if config is not None else SimulatorConfig())

    @property
    def config(self) -> SimulatorConfig:
        """The configuration in force."""
        return self._config

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:40123`` (after ``start``)."""
        if self._url is None:
            raise RuntimeError("the simulator is not started")
        return self._url

    @property
    def port(self) -> int:
        """The bound port (after ``start``)."""
        if self._url is None:
            raise RuntimeError("the simulator is not started")
        return self._port

    def configure(self, config: SimulatorConfig) -> None:
        """Switch to ``config`` now: a full bucket, the fault draw restarted from its seed."""
        self._config = config
        self._bearer = f"Bearer {config.token}"
        size = config.bucket_size
        self._bucket = (
            TokenBucket(config.rate_limit, size)
            if config.rate_limit is not None and size is not None
            else None
        )
        faults = config.faults
        self._thresholds = faults.thresholds()
        # Two streams, so that turning latency on does not change which calls fail.
        self._fault_rng = random.Random(faults.seed)
        self._latency_rng = random.Random(faults.seed)

    async def start(self) -> None:
        """Bind and serve."""
        if self._runner is not None:
            raise RuntimeError("the simulator is already started")
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_post(ENDPOINT_PATH, self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, ssl_context=self._ssl)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        scheme = "https" if self._ssl is not None else "http"
        self._url = f"{scheme}://{host}:{self._port}"
        SERVING[self._url] = asyncio.get_running_loop()

    async def aclose(self) -> None:
        """Stop serving and close every connection; calling it again does nothing."""
        runner, self._runner = self._runner, None
        if runner is not None:
            SERVING.pop(self.url, None)
            await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<Simulator {self._url or 'not started'} {self.audit.summary()}>"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received_ns = time.time_ns()
        self.audit.calls += 1
        if not self._authorized(request.headers.get("Authorization")):
            return await self._unauthorized()
        if not _is_json(request.content_type):
            body = _problem(415, f"{_RFC9110}15.5.16", "Unsupported Media Type")
            return await self._answer(415, body)
        parsed = parse_call(await request.read(), self._config.max_targets_per_call)
        if not isinstance(parsed, Call):
            return await self._answer(400, _validation_problem(parsed))
        if self._bucket is not None:
            wait = self._bucket.acquire(parsed.target_count)
            if wait > 0.0:
                return await self._rate_limited(wait)
        fault = self._draw_fault()
        if fault in _UNPROCESSED_FAULTS:
            return await self._fault_before(request, fault)
        self.audit.record(parsed.target_keys())
        if fault is None:
            return await self._answer(200, self._renderer.render(parsed, received_ns), _JSON)
        return await self._fault_after(request, fault, parsed, received_ns)

    def _authorized(self, header: str | None) -> bool:
        if header == self._bearer:
            return True
        if header is None:
            return False
        scheme, _, token = header.strip().partition(" ")
        return scheme.lower() == "bearer" and token.strip() == self._config.token

    def _draw_fault(self) -> str | None:
        """One draw per admitted call picks at most one fault."""
        if not self._thresholds:
            return None
        draw = self._fault_rng.random()
        for threshold, kind in self._thresholds:
            if draw < threshold:
                return kind
        return None

    async def _delay(self) -> None:
        faults = self._config.faults
        if faults.latency <= 0.0 and faults.latency_jitter <= 0.0:
            return
        jitter = faults.latency_jitter
        seconds = faults.latency + (self._latency_rng.uniform(-jitter, jitter) if jitter else 0.0)
        if seconds > 0.0:
            await asyncio.sleep(seconds)

    async def _answer(
        self,
        status: int,
        body: bytes,
        content_type: str = _PROBLEM_JSON,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        await self._delay()
        self.audit.statuses[status] += 1
        all_headers = {"Content-Type": content_type}
        if headers:
            all_headers.update(headers)
        return web.Response(status=status, body=body, headers=all_headers)

    async def _unauthorized(self) -> web.Response:
        body = _problem(401, f"{_RFC9110}15.5.2", "Unauthorized")
        return await self._answer(401, body, headers={"WWW-Authenticate": "Bearer"})

    async def _rate_limited(self, wait: float) -> web.Response:
        self.audit.faults["rate_limit"] += 1
        retry_after = format_retry_after(wait, self._config.retry_after_style)
        body = _problem(
            429,
            _RFC6585_429,
            "Too Many Requests",
            detail=f"Rate limit of {self._config.rate_limit:g} targets per second exceeded.",
        )
        return await self._answer(429, body, headers={"Retry-After": retry_after})

    async def _fault_before(self, request: web.Request, fault: str) -> web.StreamResponse:
        """An injected fault that leaves the call unprocessed."""
        self.audit.faults[fault] += 1
        if fault == "drop_before":
            return await self._drop(request)
        retry_after = format_retry_after(
            self._config.faults.retry_after, self._config.retry_after_style
        )
        if fault == "rate_429":
            body = _problem(429, _RFC6585_429, "Too Many Requests")
            return await self._answer(429, body, headers={"Retry-After": retry_after})
        body = _problem(503, f"{_RFC9110}15.6.4", "Service Unavailable")
        return await self._answer(503, body, headers={"Retry-After": retry_after})

    async def _fault_after(
        self, request: web.Request, fault: str, call: Call, received_ns: int
    ) -> web.StreamResponse:
        """An injected fault on a call that was processed."""
        self.audit.faults[fault] += 1
        if fault == "rate_500":
            body = _problem(
                500, f"{_RFC9110}15.6.1", "An error occurred while processing your request."
            )
            return await self._answer(500, body)
        if fault == "drop_after":
            return await self._drop(request)
        return await self._truncate(request, self._renderer.render(call, received_ns))

    async def _drop(self, request: web.Request) -> web.StreamResponse:
        """Close the connection without a byte of response."""
        await self._delay()
        transport = request.transport
        if transport is not None:
            transport.abort()
        # Never written: aiohttp finds the transport closed and treats it as a client that
        # went away, quietly.
        return web.Response(status=204)

    async def _truncate(self, request: web.Request, payload: bytes) -> web.StreamResponse:
        """Promise the whole body in Content-Length, send half of it, close."""
        await self._delay()
        self.audit.statuses[200] += 1
        response = web.StreamResponse(status=200, headers={"Content-Type": _JSON})
        response.content_length = len(payload)
        await response.prepare(request)
        await response.write(payload[: len(payload) // 2])
        transport = request.transport
        if transport is not None:
            # close(), not abort(): the half body already buffered must reach the client.
            transport.close()
        return response


def _validation_problem(errors: dict[str, list[str]]) -> bytes:
    return _problem(
        400, f"{_RFC9110}15.5.1", "One or more validation errors occurred.", errors=errors
    )
