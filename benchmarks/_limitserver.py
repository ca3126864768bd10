"""The simulator with a rate limit and random 429s, logging every answer (benchmarks 6 and 9).

The SDK's own simulator (``proactive_async.simulator.Simulator``: a token bucket over
targets, injected faults) with two things its CLI does not offer: the Retry-After of the
injected 429s (``--retry-after``, fractional seconds, so 0.05 s is said as ``0.05`` and a
limit's own 429 names its real wait) and ``--log FILE``: one line per answered call,
``<monotonic seconds> <status> <targets processed>``, written when stopped with
SIGTERM/SIGINT. The benchmarks read that log for goodput over time, 429 shares, the
busiest second and the plots; the clock is the server's, so the client's never matters.

Run: ``python benchmarks/_limitserver.py --port 0 --rate 2000 --fault-429 0.01
--retry-after 0.05 --log answers.txt`` prints ``listening on http://HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

TOKEN = "bench-token"


def _logging_simulator(log: list[tuple[float, int, int]]) -> Any:
    from proactive_async.simulator import Simulator

    class LoggingSimulator(Simulator):
        """Appends (arrival, status, targets processed) for every call it answers."""

        async def _handle(self, request: Any) -> Any:  # the simulator's one endpoint handler
            arrived = time.monotonic()
            before = self.audit.total_processed
            response = await super()._handle(request)
            log.append((arrived, response.status, self.audit.total_processed - before))
            return response

    return LoggingSimulator


async def serve(args: argparse.Namespace, log: list[tuple[float, int, int]]) -> None:
    from proactive_async.simulator import Faults, SimulatorConfig

    config = SimulatorConfig(
        token=TOKEN,
        rate_limit=args.rate,
        burst=args.burst,
        retry_after_style=args.style,
        faults=Faults(rate_429=args.fault_429, retry_after=args.retry_after, seed=args.seed),
    )
    simulator = _logging_simulator(log)(config, port=args.port)
    await simulator.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening on {simulator.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await simulator.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate", type=float, default=None, help="targets/s; none: no limit")
    parser.add_argument("--burst", type=float, default=None, help="default: 1 s of --rate")
    parser.add_argument("--fault-429", type=float, default=0.0, metavar="P")
    parser.add_argument("--retry-after", type=float, default=1.0, metavar="S")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--style",
        choices=("fractional", "seconds"),
        default="fractional",
        help="how Retry-After is written (seconds: rounded up, as `simulate` does)",
    )
    parser.add_argument("--log", default=None, metavar="FILE")
    args = parser.parse_args()
    log: list[tuple[float, int, int]] = []
    asyncio.run(serve(args, log))
    if args.log:
        Path(args.log).write_text("".join(f"{t:.6f} {s} {n}\n" for t, s, n in log))


def read_log(path: str | Path) -> list[tuple[float, int, int]]:
    """The (arrival, status, targets processed) lines of a ``--log`` file, by arrival."""
    rows = []
    for line in Path(path).read_text().splitlines():
        t, status, n = line.split()
        rows.append((float(t), int(status), int(n)))
    rows.sort()
    return rows


if __name__ == "__main__":
    sys.exit(main())
