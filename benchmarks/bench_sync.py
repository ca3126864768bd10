"""Sync client overhead: a call through the blocking ``Client`` against ``AsyncClient``.

Measures the per-call wall time of ``Client.create_proactive_conversation``, one call in
flight from one thread (made in the calling thread itself, blocking sockets, no event loop:
``_transport/_blocking.py``), against the same call awaited on ``AsyncClient`` in the
caller's own ``asyncio.run``: one process, the fast local server, alternating block by
block. Reports the medians of the block p50s.

Also: calls/s of 8 threads sharing one ``Client`` (each thread makes its own calls over
the shared pool) against 8 tasks sharing one ``AsyncClient``, and (in the note) what the
event loop the sync Client keeps for campaigns costs a no-op call: through ``SharedLoop``
driven by the caller, handed to another thread that drives (a follower's hand-off), and,
for comparison, handed to a loop thread of its own by ``asyncio.run_coroutine_threadsafe``
and by anyio's ``BlockingPortal.call`` (two hand-offs: one to spawn the task, one for its
result).

Targets (issue 19): per call <= 1.15x AsyncClient's; 8 threads >= 0.9x of 8 tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TOKEN, alternate, fast_server, median, percentile, pin_client, row, sdk_missing

NAME = "sync client per call, 1 in flight"
THREADS = 8


def _client_class() -> Any:
    """``proactive_async.Client`` once exported, else where it is defined."""
    import proactive_async
    from proactive_async import _sync

    return getattr(proactive_async, "Client", _sync.Client)


def _phone(i: int) -> str:
    return f"+55119{10_000_000 + i:08d}"


def sync_latencies(url: str, calls: int, *, warmup: int = 20) -> list[float]:
    """Seconds per call, one call in flight, through the blocking Client."""
    from proactive_async import Limits

    out: list[float] = []
    with _client_class()(base_url=url, token=TOKEN, limits=Limits(max_connections=1)) as client:
        for i in range(warmup + calls):
            start = time.perf_counter()
            client.create_proactive_conversation(channel_id=1, bot_id=1, recipient=[_phone(i)])
            if i >= warmup:
                out.append(time.perf_counter() - start)
    return out


async def async_latencies(url: str, calls: int, *, warmup: int = 20) -> list[float]:
    """Seconds per call, one call in flight, through AsyncClient."""
    from proactive_async import AsyncClient, Limits

    out: list[float] = []
    limits = Limits(max_connections=1)
    async with AsyncClient(base_url=url, token=TOKEN, limits=limits) as client:
        for i in range(warmup + calls):
            start = time.perf_counter()
            await client.create_proactive_conversation(
                channel_id=1, bot_id=1, recipient=[_phone(i)]
            )
            if i >= warmup:
                out.append(time.perf_counter() - start)
    return out


def sync_rate(url: str, per_thread: int) -> float:
    """Calls/s of THREADS threads sharing one Client (its pool warmed first)."""
    with _client_class()(base_url=url, token=TOKEN) as client:

        def work(offset: int, count: int) -> None:
            for i in range(count):
                client.create_proactive_conversation(
                    channel_id=1, bot_id=1, recipient=[_phone(offset + i)]
                )

        _in_threads(work, 8)  # warm: one connection per thread
        start = time.perf_counter()
        _in_threads(work, per_thread)
        return THREADS * per_thread / (time.perf_counter() - start)


def _in_threads(work: Callable[[int, int], None], count: int) -> None:
    threads = [threading.Thread(target=work, args=(n * 100_000, count)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


async def async_rate(url: str, per_task: int) -> float:
    """Calls/s of THREADS tasks sharing one AsyncClient (its pool warmed first)."""
    from proactive_async import AsyncClient

    async with AsyncClient(base_url=url, token=TOKEN) as client:

        async def work(offset: int, count: int) -> None:
            for i in range(count):
                await client.create_proactive_conversation(
                    channel_id=1, bot_id=1, recipient=[_phone(offset + i)]
                )

        await asyncio.gather(*(work(n * 100_000, 8) for n in range(THREADS)))
        start = time.perf_counter()
        await asyncio.gather(*(work(n * 100_000, per_task) for n in range(THREADS)))
        return THREADS * per_task / (time.perf_counter() - start)


def hand_off_costs(calls: int) -> dict[str, float]:
    """Microseconds per no-op call: through ``SharedLoop`` (driven by the caller; handed to
    another thread that drives), and handed to a loop thread of its own and back."""
    from anyio.from_thread import start_blocking_portal

    async def noop() -> None:
        return None

    costs: dict[str, float] = {}
    with start_blocking_portal() as portal:
        loop = portal.call(asyncio.get_running_loop)
        ways: dict[str, Callable[[], object]] = {
            "run_coroutine_threadsafe": lambda: asyncio.run_coroutine_threadsafe(
                noop(), loop
            ).result(),
            "BlockingPortal.call": lambda: portal.call(noop),
        }
        costs.update(_timed(ways, calls))
    with contextlib.suppress(ImportError):
        from proactive_async._calls import SharedLoop

        shared = SharedLoop(asyncio.new_event_loop())
        costs["Client"] = _timed({"": lambda: shared.run(noop())}, calls)[""]
        release = asyncio.Event()

        async def hold() -> None:  # another thread's long call: it drives meanwhile
            await release.wait()

        driver = threading.Thread(target=shared.run, args=(hold(),))
        driver.start()
        time.sleep(0.05)
        try:
            costs["Client follower"] = _timed({"": lambda: shared.run(noop())}, calls)[""]
        finally:
            shared.loop.call_soon_threadsafe(release.set)
            driver.join()
        shared.close()
    return costs


def _timed(ways: dict[str, Callable[[], object]], calls: int) -> dict[str, float]:
    costs: dict[str, float] = {}
    for name, hand_off in ways.items():
        for _ in range(100):
            hand_off()
        start = time.perf_counter()
        for _ in range(calls):
            hand_off()
        costs[name] = (time.perf_counter() - start) / calls * 1e6
    return costs


def run(quick: bool = False) -> dict[str, Any]:
    """Run the sync-client benchmark; returns its rows and the per-block figures."""
    pinned = pin_client()
    calls = 50 if quick else 1000
    rounds = 1 if quick else 7
    per_thread = 25 if quick else 500
    missing = sdk_missing("proactive_async._sync:Client")
    if missing is not None:
        return {
            "name": NAME,
            "rows": [
                row(f"{NAME} vs AsyncClient", skipped=missing),
                row(f"sync client {THREADS} threads vs AsyncClient", skipped=missing),
            ],
            "details": {"pinning": pinned},
        }
    samples: dict[str, list[float]] = {"sync": [], "async": []}

    def block(name: str, url: str) -> float:
        if name == "sync":
            lat = sync_latencies(url, calls)
        else:
            lat = asyncio.run(async_latencies(url, calls))
        samples[name] += lat
        return percentile(lat, 50) * 1e6

    with fast_server() as server:
        p50s = alternate(
            {
                "sync": lambda: block("sync", server.url),
                "async": lambda: block("async", server.url),
            },
            rounds,
        )
        rates = alternate(
            {
                "sync": lambda: sync_rate(server.url, per_thread),
                "async": lambda: asyncio.run(async_rate(server.url, per_thread)),
            },
            rounds,
        )
    hand_off = hand_off_costs(2000 if quick else 20000)
    med = {name: median(values) for name, values in p50s.items()}
    p99 = {name: percentile(values, 99) * 1e6 for name, values in samples.items()}
    rate = {name: median(values) for name, values in rates.items()}
    sync, base = med["sync"], med["async"]
    rows = [
        row(
            f"{NAME} vs AsyncClient",
            sdk=f"{sync:.0f} us",
            baseline=f"{base:.0f} us",
            ratio=sync / base,
            target="<= 1.15x",
            ok=sync / base <= 1.15,
            note=(
                f"{sync - base:+.0f} us a call; p99 {p99['sync']:.0f} us vs "
                f"{p99['async']:.0f} us; the loop kept for campaigns: a no-op call "
                f"{hand_off.get('Client', 0):.0f} us driven by its caller, "
                f"{hand_off.get('Client follower', 0):.0f} us handed "
                f"to a driving thread (to a loop thread: run_coroutine_threadsafe "
                f"{hand_off['run_coroutine_threadsafe']:.0f} us, "
                f"portal.call {hand_off['BlockingPortal.call']:.0f} us)"
            ),
        ),
        row(
            f"sync client {THREADS} threads x 1 Client vs AsyncClient {THREADS} in flight",
            sdk=f"{rate['sync']:.0f} calls/s",
            baseline=f"{rate['async']:.0f} calls/s",
            ratio=rate["sync"] / rate["async"],
            target=">= 0.9x",
            ok=rate["sync"] / rate["async"] >= 0.9,
        ),
    ]
    return {
        "name": NAME,
        "rows": rows,
        "details": {
            "pinning": pinned,
            "calls_per_block": calls,
            "rounds": rounds,
            "calls_per_thread": per_thread,
            "p50_us_per_block": p50s,
            "medians_us": med,
            "p99_us": p99,
            "calls_per_second": rates,
            "hand_off_us": hand_off,
        },
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=2))
