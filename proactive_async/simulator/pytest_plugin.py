"""A pytest fixture with a running simulator.

Usage, in a ``conftest.py`` or test module::

    pytest_plugins = ["proactive_async.simulator.pytest_plugin"]

    async def test_send(proactive_simulator):
        ...  # proactive_simulator.url, proactive_simulator.config.token
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from ._server import Simulator

__all__ = ["proactive_simulator"]


@pytest_asyncio.fixture
async def proactive_simulator() -> AsyncIterator[Simulator]:
    """A started ``Simulator()`` on 127.0.0.1, a free port; closed after the test."""
    async with Simulator() as simulator:
        yield simulator
