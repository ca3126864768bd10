"""An embedded simulator of the Proactive Conversation API, for tests, demos and benchmarks.

A real aiohttp.web server on 127.0.0.1 that validates requests like the real service,
enforces a rate limit, injects faults (before or after processing) and audits every
target it processed, so a test can assert that nothing was sent twice::

    async with Simulator(SimulatorConfig(faults=Faults(rate_503=0.2, seed=3))) as sim:
        ...  # a client pointed at sim.url, token sim.config.token
        assert sim.audit.duplicates() == {}

It shares no code with the SDK, so it cannot agree with the SDK's mistakes.
"""

from ._audit import Audit
from ._config import Faults, SimulatorConfig
from ._main import main
from ._server import ENDPOINT_PATH, Simulator
from ._threaded import ThreadedSimulator

__all__ = [
    "ENDPOINT_PATH",
    "Audit",
    "Faults",
    "Simulator",
    "SimulatorConfig",
    "ThreadedSimulator",
    "main",
]
