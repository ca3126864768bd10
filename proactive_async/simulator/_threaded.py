"""A Simulator serving from a thread and an event loop of its own, for synchronous tests."""

from __future__ import annotations

import asyncio
import ssl
import threading
from types import TracebackType

from ._audit import Audit
from ._config import SimulatorConfig
from ._server import Simulator

__all__ = ["ThreadedSimulator"]

_START_TIMEOUT = 10.0


class ThreadedSimulator:
    """A Simulator in its own thread and event loop: for code that blocks the caller's loop.

    A synchronous test client (FastAPI's ``TestClient``, Flask's or Django's test client) or
    a blocking ``Client`` waits for its answer, so the simulator must not be served by the
    loop that waits: this one never is. Usage::

        with ThreadedSimulator() as sim:
            with TestClient(app) as http:  # the app's client points at sim.url
                http.post("/notifications", json={...})
            assert sim.audit.duplicates() == {}

    Parameters:
        config: as ``Simulator``'s (token, rate limit, faults); change it with ``configure``.
        ssl_context: serve HTTPS with this server context.
        host: the address to listen on (``0.0.0.0``: every address of the machine).
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        ssl_context: ssl.SSLContext | None = None,
        *,
        host: str = "127.0.0.1",
    ) -> None:
        self.simulator: Simulator = Simulator(config, host=host, ssl_context=ssl_context)
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="proactive-simulator", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start(): a port in use, a bad context
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.simulator:
            self._ready.set()
            await self._stop.wait()

    def start(self) -> None:
        """Start serving; returns once ``url`` is bound."""
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise RuntimeError(f"the simulator did not start in {_START_TIMEOUT:g} s")
        if self._failure is not None:
            raise RuntimeError(f"the simulator did not start: {self._failure}") from self._failure

    def stop(self) -> None:
        """Stop serving and wait for the thread to end; calling it again does nothing."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
            self._thread.join(_START_TIMEOUT)

    def __enter__(self) -> ThreadedSimulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:40123``."""
        return self.simulator.url

    @property
    def config(self) -> SimulatorConfig:
        """The configuration in force (its ``token`` is the one to send)."""
        return self.simulator.config

    @property
    def audit(self) -> Audit:
        """Every target processed: ``audit.duplicates() == {}`` when nothing was sent twice."""
        return self.simulator.audit

    def configure(self, config: SimulatorConfig) -> None:
        """Switch to ``config``, on the simulator's own loop (between two calls)."""
        loop = self._loop
        if loop is None:
            self.simulator.configure(config)
            return
        asyncio.run_coroutine_threadsafe(self._configure(config), loop).result(_START_TIMEOUT)

    async def _configure(self, config: SimulatorConfig) -> None:
        self.simulator.configure(config)

    def __repr__(self) -> str:
        return f"<ThreadedSimulator {self.simulator!r}>"
