"""Benchmark 5: rate accuracy of a Campaign configured for 500 targets/s for 10 s.

Runs ``Campaign(..., rate=500, burst=50, adaptive=False, chunk_size=1, concurrency=64)``
over 5000 unique numbers against the fast local server, which records the arrival time of
every request on its side. From those timestamps: the achieved steady rate (the bucket
starts full, so the first ``burst`` targets are free: (N - burst) / (last - first)), the
naive rate N / (last - first), and the busiest 1-second sliding window. The baseline is
the configured rate itself.

Targets: achieved rate within +-2% of 500/s; no 1-second window above rate + burst.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    TOKEN,
    brazil_mobiles,
    fast_server,
    max_window,
    pin_client,
    row,
    sdk_missing,
)

NAME = "5 rate accuracy"


async def campaign_at(url: str, count: int, rate: float, burst: float) -> dict[str, Any]:
    from proactive_async import AsyncClient, Limits, ProactiveConversationRequest
    from proactive_async._campaign import Campaign

    template = ProactiveConversationRequest(channel_id=1, bot_id=1, conversation_template_id=7)
    limits = Limits(max_connections=64)
    async with AsyncClient(base_url=url, token=TOKEN, limits=limits) as client:
        campaign = Campaign(
            client,
            template=template,
            targets=list(brazil_mobiles(count)),
            chunk_size=1,
            concurrency=64,
            rate=rate,
            burst=burst,
            adaptive=False,
            default_region="BR",
        )
        summary = await campaign.run()
    return {
        "counts": {str(k): v for k, v in summary.counts.items()},
        "calls": summary.calls,
        "elapsed": summary.elapsed,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Run benchmark 5; returns its row and the measured figures."""
    pinned = pin_client()
    rate = 200.0 if quick else 500.0
    seconds = 1.0 if quick else 10.0
    burst = rate / 10
    count = int(rate * seconds)
    target = f"+-2% of {rate:.0f}/s; max 1 s window <= {rate + burst:.0f}"
    missing = sdk_missing("proactive_async._campaign:Campaign")
    if missing is not None:
        return {
            "name": NAME,
            "rows": [row(NAME, baseline=f"{rate:.0f} targets/s", target=target, skipped=missing)],
            "details": {},
        }
    with tempfile.TemporaryDirectory() as tmp:
        stamps_path = f"{tmp}/stamps.txt"
        server = fast_server(timestamps=stamps_path)
        with server:
            result = asyncio.run(campaign_at(server.url, count, rate, burst))
        stamps = sorted(float(x) for x in Path(stamps_path).read_text().split())
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else float("nan")
    steady = (len(stamps) - burst) / span
    naive = len(stamps) / span
    window = max_window(stamps)
    # Tells an over-full first second (the initial bucket) from bunching later on.
    later = max_window([t for t in stamps if t >= stamps[0] + 1.0]) if stamps else 0
    error = steady / rate - 1
    ok = abs(error) <= 0.02 and window <= rate + burst and len(stamps) == count
    return {
        "name": NAME,
        "rows": [
            row(
                NAME,
                sdk=f"{steady:.1f} targets/s, max window {window}",
                baseline=f"{rate:.0f} targets/s, burst {burst:.0f}",
                ratio=steady / rate,
                target=target,
                ok=ok,
                note=f"{error:+.2%}; naive N/span {naive:.1f}/s; max window after the first"
                f" second {later}; {len(stamps)} requests",
            )
        ],
        "details": {
            "pinning": pinned,
            "rate": rate,
            "burst": burst,
            "targets": count,
            "requests_seen": len(stamps),
            "span_s": span,
            "steady_rate": steady,
            "naive_rate": naive,
            "max_1s_window": window,
            "max_1s_window_after_first_second": later,
            "campaign": result,
        },
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=2))
