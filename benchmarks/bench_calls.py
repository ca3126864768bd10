"""Benchmark 1: calls/s of single-recipient calls through AsyncClient, 64 in flight.

Measures ``AsyncClient.create_proactive_conversation`` (rate limit off, default retry policy,
responses decoded into the SDK's Conversation) against the fast local server
(``_fastserver.py``, pinned to core 1; the client on core 0), alternating round by round with
two baselines in the same run: a hand-written aiohttp loop (one ClientSession,
TCPConnector(limit=64), a semaphore, msgspec decode into bare Structs) and an
httpx.AsyncClient loop (limits 64). The server's own ceiling is measured with wrk.

Each of the SDK and the aiohttp loop runs on both event loops (issue 19): asyncio's own,
and uvloop (``proactive-async[fast]``); each on its own loop in a round, the four
alternating. On uvloop the SDK is compared with the aiohttp loop on uvloop (the same
loop: what the SDK adds), and the note gives it against the aiohttp loop on asyncio.

Targets (issue 19): SDK >= 0.93x the raw aiohttp loop, on asyncio and on uvloop; SDK >= 5x
httpx.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _baselines
from _common import (
    TOKEN,
    alternate,
    fast_server,
    median,
    pin_client,
    rate_str,
    row,
    run_on,
    sdk_missing,
    uvloop_missing,
    wrk_ceiling,
)

NAME = "1 calls/s, 64 in flight"
CONCURRENCY = 64
TARGET = 0.93


async def sdk_loop(url: str, calls: int, concurrency: int, *, warmup: int = 64) -> float:
    """Calls/s of the SDK's AsyncClient, a semaphore keeping ``concurrency`` in flight."""
    from proactive_async import AsyncClient, Limits

    limits = Limits(max_connections=concurrency)
    async with AsyncClient(base_url=url, token=TOKEN, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                await client.create_proactive_conversation(
                    channel_id=1, bot_id=1, recipient=[f"+55119{10_000_000 + i:08d}"]
                )

        await asyncio.gather(*(one(i) for i in range(warmup)))
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
        return calls / (time.perf_counter() - start)


CEILING = "1 fast server ceiling (wrk, 64 conns)"
CEILING_TARGET = "server not the bottleneck"


def run(quick: bool = False) -> dict[str, Any]:
    """Run benchmark 1; returns its rows and the per-round figures."""
    pinned = pin_client()
    calls = 200 if quick else 16000
    httpx_calls = 100 if quick else 300
    rounds = 1 if quick else 7
    missing = sdk_missing("proactive_async:AsyncClient")
    no_uvloop = uvloop_missing()
    with fast_server() as server:
        ceiling = wrk_ceiling(server.url, seconds=1 if quick else 3)
        url = server.url
        variants = {
            "aiohttp": lambda: run_on("asyncio", _baselines.aiohttp_loop(url, calls, CONCURRENCY)),
            "httpx": lambda: asyncio.run(_baselines.httpx_loop(url, httpx_calls, CONCURRENCY)),
        }
        if no_uvloop is None:
            variants["aiohttp_uvloop"] = lambda: run_on(
                "uvloop", _baselines.aiohttp_loop(url, calls, CONCURRENCY)
            )
        if missing is None:
            variants["sdk"] = lambda: run_on("asyncio", sdk_loop(url, calls, CONCURRENCY))
            if no_uvloop is None:
                variants["sdk_uvloop"] = lambda: run_on("uvloop", sdk_loop(url, calls, CONCURRENCY))
        figures = alternate(variants, rounds)
    med = {name: median(values) for name, values in figures.items()}
    raw, httpx = med["aiohttp"], med["httpx"]
    sdk = med.get("sdk", float("nan"))
    target = f">= {TARGET}x"
    asyncio_name, uvloop_name = f"{NAME} vs raw aiohttp", f"{NAME}, uvloop vs raw aiohttp on uvloop"
    if missing is not None:
        rows = [
            row(asyncio_name, baseline=rate_str(raw), target=target, skipped=missing),
            row(uvloop_name, target=target, skipped=missing),
            row(f"{NAME} vs httpx", baseline=rate_str(httpx), target=">= 5x", skipped=missing),
        ]
    else:
        rows = [
            row(
                asyncio_name,
                sdk=rate_str(sdk),
                baseline=rate_str(raw),
                ratio=sdk / raw,
                target=target,
                ok=sdk >= TARGET * raw,
                note=_spread(figures, "sdk", "aiohttp"),
            ),
            _uvloop_row(uvloop_name, med, figures, no_uvloop),
            row(
                f"{NAME} vs httpx",
                sdk=rate_str(sdk),
                baseline=rate_str(httpx),
                ratio=sdk / httpx,
                target=">= 5x",
                ok=sdk >= 5 * httpx,
            ),
        ]
    fastest = max(value for value in med.values() if value == value)
    if isinstance(ceiling, float):
        rows.append(
            row(
                CEILING,
                baseline=rate_str(ceiling, "req/s"),
                target=CEILING_TARGET,
                ok=ceiling > 2 * fastest,
            )
        )
    else:
        rows.append(row(CEILING, target=CEILING_TARGET, skipped=ceiling))
    return {
        "name": NAME,
        "rows": rows,
        "details": {
            "pinning": pinned,
            "calls_per_round": calls,
            "httpx_calls_per_round": httpx_calls,
            "rounds": rounds,
            "figures": figures,
            "medians": med,
            "wrk": ceiling,
        },
    }


def _uvloop_row(
    name: str, med: dict[str, float], figures: dict[str, list[float]], missing: str | None
) -> dict[str, Any]:
    """The SDK on uvloop against the aiohttp loop on uvloop; the note: against asyncio's."""
    target = f">= {TARGET}x"
    if missing is not None:
        return row(name, target=target, skipped=missing)
    sdk, raw = med["sdk_uvloop"], med["aiohttp_uvloop"]
    return row(
        name,
        sdk=rate_str(sdk),
        baseline=rate_str(raw),
        ratio=sdk / raw,
        target=target,
        ok=sdk >= TARGET * raw,
        note=f"{sdk / med['aiohttp']:.2f}x the aiohttp loop on asyncio; "
        + _spread(figures, "sdk_uvloop", "aiohttp_uvloop"),
    )


def _spread(figures: dict[str, list[float]], *names: str) -> str:
    """calls/s of each round, min-max, of the variants compared."""
    return "rounds: " + ", ".join(
        f"{name} {min(figures[name]):,.0f}-{max(figures[name]):,.0f}" for name in names
    )


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=2))
