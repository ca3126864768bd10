"""A bare aiohttp server answering the API's endpoint with a test's own handler."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web

from proactive_async._constants import API_PATH


@asynccontextmanager
async def custom_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A bare aiohttp server on 127.0.0.1, port 0, answering the endpoint with ``handler``;
    yields its base URL."""
    app = web.Application()
    app.router.add_post(API_PATH, handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
