"""``proactive-async simulate``: serve the API simulator (its own flags: ``simulate --help``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._common import EXIT_USAGE

__all__ = ["add_parser", "simulate_command"]


def simulate_command(argv: Sequence[str]) -> int:
    """Run the simulator's own command line: it owns its options."""
    from ..simulator import main as simulator_main  # aiohttp.web only when it is used

    try:
        return int(simulator_main(list(argv)) or 0)
    except SystemExit as exc:  # its argparse: --help and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def add_parser(commands: Any) -> None:
    """Listed in ``--help`` only: ``main`` hands ``simulate ...`` over before parsing."""
    commands.add_parser(
        "simulate",
        help="serve the API simulator (see: proactive-async simulate --help)",
        add_help=False,
    )
