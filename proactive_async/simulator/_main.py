"""``proactive-async simulate``: run the simulator in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from ._config import RETRY_AFTER_STYLES, Faults, SimulatorConfig
from ._server import Simulator

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proactive-async simulate",
        description="Serve a simulated Proactive Conversation API on HOST:PORT.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    add("--port", type=int, default=8080, help="0 for any free port (default: %(default)s)")
    add(
        "--token",
        default=None,
        help="Bearer token (default: $PROACTIVE_TOKEN, else simulator-token)",
    )
    add("--rate", type=float, default=None, help="server rate limit, targets per second")
    add("--burst", type=float, default=None, help="bucket size (default: 1 s of --rate)")
    add("--retry-after-style", choices=RETRY_AFTER_STYLES, default="seconds")
    add("--max-targets", type=int, default=None, help="most targets in one call; more answer 400")
    add("--fault-429", type=float, default=0.0, metavar="P", help="P(429), unprocessed")
    add("--fault-503", type=float, default=0.0, metavar="P", help="P(503), unprocessed")
    add("--fault-500", type=float, default=0.0, metavar="P", help="P(500 after processing)")
    add("--drop-before", type=float, default=0.0, metavar="P", help="P(drop), unprocessed")
    add("--drop-after", type=float, default=0.0, metavar="P", help="P(drop after processing)")
    add("--truncate", type=float, default=0.0, metavar="P", help="P(cut 200 body, processed)")
    add("--latency", type=float, default=0.0, metavar="S", help="seconds added before each answer")
    add("--jitter", type=float, default=0.0, metavar="S", help="+- uniform jitter on --latency")
    add("--seed", type=int, default=None, metavar="N", help="seed of the fault draw")
    return parser


def _config_of(args: argparse.Namespace) -> SimulatorConfig:
    faults = Faults(
        rate_429=args.fault_429,
        rate_503=args.fault_503,
        rate_500=args.fault_500,
        drop_before=args.drop_before,
        drop_after=args.drop_after,
        truncate_after=args.truncate,
        latency=args.latency,
        latency_jitter=args.jitter,
        seed=args.seed,
    )
    token = args.token if args.token is not None else _environment_token()
    return SimulatorConfig(
        token=token or "simulator-token",
        rate_limit=args.rate,
        burst=args.burst,
        retry_after_style=args.retry_after_style,
        max_targets_per_call=args.max_targets,
        faults=faults,
    )


def _environment_token() -> str | None:
    """``PROACTIVE_TOKEN``, read by the one reader of the environment (``settings``)."""
    from ..settings import environment_value  # imported when the flag is not given

    return environment_value("token")


async def _serve(config: SimulatorConfig, host: str, port: int) -> int:
    simulator = Simulator(config, host=host, port=port)
    try:
        await simulator.start()
    except OSError as exc:
        print(f"proactive-async simulate: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        print(f"listening on {simulator.url}", flush=True)
        await stop.wait()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        await simulator.aclose()
    audit = simulator.audit
    print(f"calls: {audit.calls}")
    print(f"processed: {audit.total_processed}")
    print(f"duplicates: {len(audit.duplicates())}")
    if audit.faults:
        print("faults: " + ", ".join(f"{kind}={n}" for kind, n in sorted(audit.faults.items())))
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM, then print the audit summary; the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = _config_of(args)
    except ValueError as exc:
        parser.error(str(exc))
    return asyncio.run(_serve(config, args.host, args.port))
