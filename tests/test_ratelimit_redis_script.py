"""The shared adaptive law (``ratelimit/_redis_script.py``) against a real redis-server, on
a fake clock: every ``AdaptiveTuning`` field changes what ``SharedRateLimit`` does, or is
refused; and the law is the local one (slow-start ceiling, plateau, convex probing,
confirming estimates)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields, replace
from typing import Any

import pytest

from proactive_async.ratelimit import AdaptiveTuning, SharedRateLimit
from proactive_async.ratelimit._redis import _UNHONOURED

LIMIT = 400.0
"""Targets (calls of one target) per second the simulated server accepts."""
STEP = 0.05
RETRY_AFTER = 0.05
NOISE_EVERY = 37
"""Every 37th step one call meets a stray 429 (a busy shard), limit or not."""


class FakeClock:
    """Seconds that move only when told (the script reads them instead of Redis TIME)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Step:
    """One step of a simulated group: the rate then, and what the acquire was told."""

    at: float
    rate: float
    granted: bool
    wait: float
    refused: int


async def simulate(url: str, tuning: AdaptiveTuning, seconds: float = 60.0) -> list[Step]:
    """A group sending at its shared rate to a server that takes ``LIMIT``/s.

    Each step reserves the step's calls as one weighted acquire, reports the accepted
    ones, and tells the limit about up to three of the refused ones (the rest are the
    same congestion event). The first 0.1 s the server refuses everything (a cold start).
    """
    clock = FakeClock()
    start = clock.now
    limit = SharedRateLimit(url, key=f"test:{uuid.uuid4().hex}", tuning=tuning, clock=clock)
    steps: list[Step] = []
    try:
        for index in range(round(seconds / STEP)):
            clock.now += STEP
            rate = limit.rate or 0.0
            calls = max(1, round(rate * STEP))
            granted, wait = await limit._call("acquire", float(calls))
            refused = 0
            if granted:
                capacity = 0 if clock.now - start <= 0.1 else round(LIMIT * STEP)
                refused = max(0, calls - capacity)
                if refused == 0 and index % NOISE_EVERY == 0:
                    refused = 1
                if calls - refused > 0:
                    await limit._call("report", float(calls - refused))
                for _ in range(min(refused, 3)):
                    await limit._call("throttle", RETRY_AFTER)
            steps.append(Step(clock.now - start, rate, granted, wait, refused))
    finally:
        await limit.aclose()
    return steps


VARIED: dict[str, Any] = {
    "floor": 300.0,
    "interval": 1.0,
    "window": 2.0,
    "reaction_window": 1.0,
    "decrease": 0.7,
    "slow_start": 1.5,
    "approach": 0.9,
    "probe": 0.1,
    "probe_growth": 3.0,
    "max_cut": 0.9,
    "busy": 1.5,
    "drain": False,
    "margin": 0.2,
    "plateau": 0.5,
    "max_plateau": 2.5,
    "confirm": 0.0,
    "noise_share": 0.0,
    "noise_run": 1,
}
"""A value other than the default for every field the shared limit honours."""

BASE = AdaptiveTuning()


def test_every_tuning_field_is_either_varied_here_or_refused() -> None:
    names = {field.name for field in fields(AdaptiveTuning)}
    assert set(VARIED) | set(_UNHONOURED) == names
    assert not set(VARIED) & set(_UNHONOURED)
    assert _UNHONOURED == ("unknown_pause",)


@pytest.mark.parametrize("name", sorted(_UNHONOURED))
def test_a_field_it_cannot_honour_is_refused_at_construction(name: str) -> None:
    tuning = replace(BASE, **{name: getattr(BASE, name) + 1.0})
    with pytest.raises(ValueError, match=f"AdaptiveTuning.{name}"):
        SharedRateLimit("redis://127.0.0.1:1/0", key="k", tuning=tuning)
    SharedRateLimit("redis://127.0.0.1:1/0", key="k", tuning=BASE)  # the default is fine


@pytest.fixture(scope="module")
def baseline(redis_server: Any) -> list[Step]:
    import asyncio

    return asyncio.run(simulate(redis_server.url, BASE))


@pytest.mark.parametrize("name", sorted(VARIED))
async def test_each_tuning_field_changes_what_the_shared_limit_does(
    redis_server: Any, baseline: list[Step], name: str
) -> None:
    varied = await simulate(redis_server.url, replace(BASE, **{name: VARIED[name]}))
    assert varied != baseline
