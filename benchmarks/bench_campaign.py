"""Benchmark 2: calls/s of a full Campaign (planner, limiter, outcomes), journal off and on.

Measures ``Campaign(..., chunk_size=1, concurrency=64, rate=None, adaptive=False).run()``
over unique Brazilian mobile numbers (normalised and deduplicated by the planner, one
outcome per record) against the fast local server, once without a journal and once with a
SQLite journal in a temp dir (each through a client whose pool is warmed first, as the
baseline's is), alternating round by round with the baseline in the same run:
the hand-written aiohttp loop (one session, semaphore, msgspec decode into bare Structs)
making the same number of calls.

Targets: journal off >= 0.9x the raw aiohttp loop (issue 8 §6; was 0.85x); journal on >= 0.75x.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _baselines
from _common import (
    TOKEN,
    alternate,
    brazil_mobiles,
    fast_server,
    median,
    pin_client,
    rate_str,
    row,
    sdk_missing,
)

NAME = "2 campaign calls/s"
CONCURRENCY = 64
_offset = 0


async def campaign_loop(url: str, records: int, *, journal: str | None) -> dict[str, Any]:
    """Calls/s of one Campaign run over ``records`` fresh numbers; with its summary counts."""
    from proactive_async import AsyncClient, Limits, ProactiveConversationRequest
    from proactive_async._campaign import Campaign

    global _offset
    # Fresh numbers each round, so a journal or a dedupe never sees a repeat.
    targets = list(brazil_mobiles(records, start=_offset))
    _offset += records
    template = ProactiveConversationRequest(channel_id=1, bot_id=1, conversation_template_id=7)
    limits = Limits(max_connections=CONCURRENCY)
    async with AsyncClient(base_url=url, token=TOKEN, limits=limits) as client:
        # Open the pool's 64 connections first, as the baseline's warm-up does: both then
        # measure steady-state calls, not TLS-context and TCP set-up.
        await asyncio.gather(
            *(
                client.create_proactive_conversation(
                    channel_id=1, bot_id=1, recipient=["+5511999990000"]
                )
                for _ in range(CONCURRENCY)
            )
        )
        campaign = Campaign(
            client,
            template=template,
            targets=targets,
            chunk_size=1,
            concurrency=CONCURRENCY,
            rate=None,
            adaptive=False,
            journal=journal,
            default_region="BR",
        )
        start = time.perf_counter()
        summary = await campaign.run()
        elapsed = time.perf_counter() - start
    counts = {str(k): v for k, v in summary.counts.items()}
    return {"rate": summary.calls / elapsed, "calls": summary.calls, "counts": counts}


def run(quick: bool = False) -> dict[str, Any]:
    """Run benchmark 2; returns its rows and the per-round figures."""
    pinned = pin_client()
    records = 200 if quick else 16000
    rounds = 1 if quick else 7
    missing = sdk_missing("proactive_async:AsyncClient", "proactive_async._campaign:Campaign")
    summaries: list[dict[str, Any]] = []
    with fast_server() as server, tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(10_000))

        def with_journal(journal: bool) -> float:
            path = f"{tmp}/journal-{next(counter)}.db" if journal else None
            result = asyncio.run(campaign_loop(server.url, records, journal=path))
            summaries.append({"journal": journal, **result})
            return float(result["rate"])

        variants = {
            "aiohttp": lambda: asyncio.run(
                _baselines.aiohttp_loop(server.url, records, CONCURRENCY)
            )
        }
        if missing is None:
            variants = {
                "journal_off": lambda: with_journal(False),
                "journal_on": lambda: with_journal(True),
                **variants,
            }
        figures = alternate(variants, rounds)
    med = {name: median(values) for name, values in figures.items()}
    raw = med["aiohttp"]
    if missing is not None:
        rows = [
            row(
                f"{NAME}, journal off vs raw aiohttp",
                baseline=rate_str(raw),
                target=">= 0.9x",
                skipped=missing,
            ),
            row(
                f"{NAME}, journal on vs raw aiohttp",
                baseline=rate_str(raw),
                target=">= 0.75x",
                skipped=missing,
            ),
        ]
    else:
        lost = [s for s in summaries if sum(s["counts"].values()) != records]
        note = f"{len(lost)} run(s) lost records" if lost else "every record one outcome"
        rows = [
            row(
                f"{NAME}, journal off vs raw aiohttp",
                sdk=rate_str(med["journal_off"]),
                baseline=rate_str(raw),
                ratio=med["journal_off"] / raw,
                target=">= 0.9x",
                ok=med["journal_off"] >= 0.9 * raw and not lost,
                note=note,
            ),
            row(
                f"{NAME}, journal on vs raw aiohttp",
                sdk=rate_str(med["journal_on"]),
                baseline=rate_str(raw),
                ratio=med["journal_on"] / raw,
                target=">= 0.75x",
                ok=med["journal_on"] >= 0.75 * raw and not lost,
                note=note,
            ),
        ]
    return {
        "name": NAME,
        "rows": rows,
        "details": {
            "pinning": pinned,
            "records_per_round": records,
            "rounds": rounds,
            "figures": figures,
            "medians": med,
            "summaries": summaries,
        },
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=2))
