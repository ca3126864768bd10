"""The shared adaptive limit (``ratelimit/_redis.py`` and ``_redis_script.py``) against a
real redis-server, on a fake clock: every ``AdaptiveTuning`` field changes what
``SharedRateLimit`` does, or is refused; and the law it runs is the local one (slow-start
ceiling, plateau, convex probing, confirming estimates), its state kept in Redis."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass, fields, replace
from typing import Any

import msgspec
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
                    await limit._tell("report", float(calls - refused), calls - refused)
                for _ in range(min(refused, 3)):
                    await limit._tell("throttle", RETRY_AFTER)
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
    return asyncio.run(simulate(redis_server.url, BASE))


@pytest.mark.parametrize("name", sorted(VARIED))
async def test_each_tuning_field_changes_what_the_shared_limit_does(
    redis_server: Any, baseline: list[Step], name: str
) -> None:
    varied = await simulate(redis_server.url, replace(BASE, **{name: VARIED[name]}))
    assert varied != baseline


class Group:
    """One shared adaptive limit on a fake clock, driven call by call."""

    def __init__(self, url: str, tuning: AdaptiveTuning) -> None:
        self.clock = FakeClock()
        self.key = f"test:{uuid.uuid4().hex}"
        self.limit = SharedRateLimit(url, key=self.key, tuning=tuning, clock=self.clock)
        self.tuning = tuning

    async def send(self, seconds: float, step: float = 0.1) -> list[tuple[float, float]]:
        """Send at the shared rate for ``seconds``, all accepted: (time, rate) per step."""
        rates = []
        for _ in range(round(seconds / step)):
            self.clock.now += step
            weight = (self.limit.rate or 0.0) * step
            await self.limit._call("acquire", weight)
            await self.limit._tell("report", weight, max(1, round(weight)))
            rates.append((self.clock.now, self.limit.rate or 0.0))
        return rates

    async def refuse(self, retry_after: float = 0.05) -> None:
        self.clock.now += 0.01
        assert await self.limit._tell("throttle", retry_after)

    async def state(self, name: str) -> float:
        """A field of the law's state in Redis (None read as 0: not measured yet)."""
        law = msgspec.json.decode(await self.limit._redis.hget(self.key, "law"))
        return float(law.get(name) or 0.0)

    async def aclose(self) -> None:
        await self.limit.aclose()


async def test_after_a_cut_the_rate_closes_the_gap_holds_a_plateau_then_probes_convexly(
    redis_server: Any,
) -> None:
    group = Group(redis_server.url, AdaptiveTuning(noise_share=0.0))
    try:
        await group.send(1.2)
        await group.refuse()
        estimate = await group.state("estimate")
        target = estimate * (1 - group.tuning.margin)
        rates = await group.send(8.0)
    finally:
        await group.aclose()
    at_target = [at for at, rate in rates if rate == pytest.approx(target)]
    assert at_target, rates
    # Concave on the way up: each step closes a share of the gap, never passing it.
    below = [rate for at, rate in rates if at < at_target[0]]
    gaps = [target - rate for rate in below]
    assert all(gap > 0 for gap in gaps)
    assert all(b <= a for a, b in itertools.pairwise(gaps))
    # The plateau: just under the limit for plateau seconds, no probing meanwhile.
    held = at_target[-1] - at_target[0]
    plateau = group.tuning.plateau
    assert plateau - 0.15 <= held <= plateau + group.tuning.interval + 0.15
    # Then convex: each step above the estimate probe_growth times the last.
    above = sorted({rate for at, rate in rates if at > at_target[-1]})
    steps = [b / a - 1 for a, b in zip([target, *above], above, strict=False)]
    assert len(steps) >= 3
    assert steps[0] == pytest.approx(group.tuning.probe, rel=0.01)
    for a, b in itertools.pairwise(steps):
        assert b == pytest.approx(a * group.tuning.probe_growth, rel=0.01)


async def test_a_cut_that_confirms_the_limit_doubles_the_plateau_and_another_limit_resets_it(
    redis_server: Any,
) -> None:
    tuning = AdaptiveTuning(noise_share=0.0)
    group = Group(redis_server.url, tuning)
    try:
        await group.send(1.2)
        await group.refuse()
        first = await group.state("estimate")
        assert await group.state("plateau") == tuning.plateau
        await group.send(3.0)  # back up to just under it, holding there
        await group.refuse()  # the same limit again: it is real
        assert await group.state("estimate") == pytest.approx(first, rel=tuning.confirm)
        assert await group.state("plateau") == 2 * tuning.plateau
        await group.send(12.0)  # long past the plateau: probing far above the limit
        await group.refuse()
        assert await group.state("estimate") > first * (1 + tuning.confirm)
        assert await group.state("plateau") == tuning.plateau
    finally:
        await group.aclose()


async def test_refused_before_anything_was_measured_slow_start_stops_just_under_that_rate(
    redis_server: Any,
) -> None:
    tuning = AdaptiveTuning()
    group = Group(redis_server.url, tuning)
    try:
        group.clock.now += 0.1
        await group.limit._call("acquire", 20.0)  # 20 targets in the first 0.1 s
        await group.refuse()  # before any call was accepted
        refused_at = await group.state("provisional")
        assert await group.state("estimate") == 0  # nothing measured: a ceiling, not a limit
        # Cut from the rate really sent, by max_cut as well as decrease (the start).
        assert group.limit.rate == pytest.approx(refused_at * tuning.max_cut * tuning.decrease)
        rates = [rate for _, rate in await group.send(3.0)]
    finally:
        await group.aclose()
    ceiling = refused_at * (1 - tuning.margin)
    first_at_ceiling = next(i for i, rate in enumerate(rates) if rate == pytest.approx(ceiling))
    # Slow start up to the ceiling, never past it by a doubling...
    climb = sorted(set(rates[:first_at_ceiling]))
    assert all(b == pytest.approx(a * tuning.slow_start) for a, b in itertools.pairwise(climb))
    # ...then probing above it, a small step first (no plateau: nothing was measured).
    above = sorted({rate for rate in rates[first_at_ceiling:] if rate > ceiling * 1.0001})
    assert above and above[0] == pytest.approx(ceiling * (1 + tuning.probe))
