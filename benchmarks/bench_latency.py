"""Benchmark 7: latency the SDK adds per call, one call in flight.

Measures the per-call wall time of ``AsyncClient.create_proactive_conversation`` (default
retry policy, decoding on), one call at a time against the fast local server, alternating
block by block with the baseline in the same run: a hand-written aiohttp loop (one
ClientSession, msgspec decode into bare Structs). Reports the medians of the block p50s.

Target: SDK p50 overhead <= 10% over raw aiohttp.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _baselines
from _common import TOKEN, alternate, fast_server, median, percentile, pin_client, row, sdk_missing

NAME = "7 latency p50, 1 in flight"


async def sdk_latencies(url: str, calls: int, *, warmup: int = 20) -> list[float]:
    """Seconds per call, one call in flight, through the SDK."""
    from proactive_async import AsyncClient, Limits

    out: list[float] = []
    limits = Limits(max_connections=1)
    async with AsyncClient(base_url=url, token=TOKEN, limits=limits) as client:
        for i in range(warmup + calls):
            start = time.perf_counter()
            await client.create_proactive_conversation(
                channel_id=1, bot_id=1, recipient=[f"+55119{10_000_000 + i:08d}"]
            )
            if i >= warmup:
                out.append(time.perf_counter() - start)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Run benchmark 7; returns its rows and the per-block p50/p99 figures."""
    pinned = pin_client()
    calls = 50 if quick else 1000
    rounds = 1 if quick else 7
    missing = sdk_missing("proactive_async:AsyncClient")
    samples: dict[str, list[float]] = {"sdk": [], "aiohttp": []}

    def block(name: str, url: str) -> float:
        if name == "sdk":
            lat = asyncio.run(sdk_latencies(url, calls))
        else:
            lat = asyncio.run(_baselines.aiohttp_latencies(url, calls))
        samples[name] += lat
        return percentile(lat, 50) * 1e6

    with fast_server() as server:
        variants = {"aiohttp": lambda: block("aiohttp", server.url)}
        if missing is None:
            variants = {"sdk": lambda: block("sdk", server.url), **variants}
        figures = alternate(variants, rounds)
    med = {name: median(values) for name, values in figures.items()}
    p99 = {name: percentile(values, 99) * 1e6 for name, values in samples.items() if values}
    raw = med["aiohttp"]
    if missing is not None:
        rows = [
            row(
                f"{NAME} vs raw aiohttp",
                baseline=f"{raw:.0f} us",
                target="overhead <= 10%",
                skipped=missing,
            )
        ]
    else:
        sdk = med["sdk"]
        rows = [
            row(
                f"{NAME} vs raw aiohttp",
                sdk=f"{sdk:.0f} us",
                baseline=f"{raw:.0f} us",
                ratio=sdk / raw,
                target="overhead <= 10% (<= 1.1x)",
                ok=sdk <= 1.1 * raw,
                note=f"p99 {p99['sdk']:.0f} us vs {p99['aiohttp']:.0f} us",
            )
        ]
    return {
        "name": NAME,
        "rows": rows,
        "details": {
            "pinning": pinned,
            "calls_per_block": calls,
            "rounds": rounds,
            "p50_us_per_block": figures,
            "medians_us": med,
            "p99_us": p99,
        },
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=2))
