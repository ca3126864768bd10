"""A pytest fixture with a running simulator.

Usage, in a ``conftest.py`` or test module::

    pytest_plugins = ["proactive_async.simulator.pytest_plugin"]

    async def test_send(proactive_simulator):
        ...  # proactive_simulator.url, proactive_simulator.config.token

    def test_view(proactive_simulator_threaded):  # for FastAPI's TestClient, Flask, Django
        ...

``proactive_simulator`` is served by the test's own event loop: a synchronous call made from
that loop (a test client) would block it, so use ``proactive_simulator_threaded`` there.
Needs pytest-asyncio: ``pip install 'proactive-async[testing]'``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from ._server import Simulator
from ._threaded import ThreadedSimulator

__all__ = ["proactive_simulator", "proactive_simulator_threaded"]


@pytest_asyncio.fixture
async def proactive_simulator() -> AsyncIterator[Simulator]:
    """A started ``Simulator()`` on 127.0.0.1, a free port; closed after the test."""
    async with Simulator() as simulator:
        yield simulator


@pytest.fixture
def proactive_simulator_threaded() -> Iterator[ThreadedSimulator]:
    """A started ``ThreadedSimulator()``: its own thread and loop, for synchronous tests."""
    with ThreadedSimulator() as simulator:
        yield simulator
