"""A rate limit shared by many processes through Redis (a ``RateLimitBackend``).

Every process that names the same key draws from one budget: 8 web workers, 4 task-queue
workers and two campaign scripts on one channel send ``rate`` targets/s together, not
each. The state is one Redis hash, changed only by one Lua script (registered once; redis-py
sends EVALSHA and reloads it when a restarted server lost it) that reads the server's clock
(``TIME``), so the clocks of the processes never matter.

The algorithm is a weighted GCRA with reservations: each acquire moves the theoretical
arrival time (``tat``) on by ``weight / rate`` and is told when its slot comes; the caller
sleeps until then. Slots are handed out in the order requests reach Redis, so no process
starves, and a call is never sent early. A weight above the burst is admitted into debt
once the bucket is full, as the local bucket does (the published GCRA scripts refuse it for
ever). A new key starts empty, as a campaign's local bucket does. A slot given to a caller
that is then cancelled is lost: the group sends less, never more.

A 429 pauses every process on the key for its ``Retry-After`` (in adaptive mode, for as
long as the law's ``group_pause`` says) and empties the bucket until the pause ends (so the
first calls after it are paced, not a burst); a 503 pauses them all.

Adaptive mode (``rate=None``): the group's rate is moved by the one control law of the
local ``AdaptiveRate`` (``_law.py``), decided in Python, with only the shared state in Redis:
the bucket, the counters (weight granted and accepted, the accepted weight of the last
window in tenths, the noise filter's call counts) and the law's state with a generation
number. Each process reports what it saw (accepted calls every ``_REPORT_INTERVAL``, every
429); the script answers with the group's reading and the law's state; the process runs the
law and commits the new state only if the generation is still the one it read (else it
reads again and decides again). So one congestion event cuts the rate once for the group,
whichever process saw it first: later 429s find the cut made and only extend the pause. A
new group starts at ``SHARED_START`` (100 targets/s) and doubles every quarter second until
its first 429. Every ``AdaptiveTuning`` field is honoured but ``unknown_pause``, refused
unless left at its default (a 429 without Retry-After pauses the group for
``unnamed_throttle_wait``, as ``RateLimit`` does).

Redis away (unreachable, restarted, loading, timing out): by default
(``on_redis_error="wait"``) acquire waits and retries Redis with backoff, so nothing is
ever sent unpaced; with ``"local"`` it falls back to a local ``RateLimit`` at
``rate / processes`` (starting empty, so it keeps to its share from the first second)
until Redis answers again, asking Redis again at most every couple of seconds. Either way
a warning is logged once per outage, ``problem`` says so for a live display, and nothing
is lost: a call that waits is a call not yet made.

Redis answering with an error (a wrong or missing password, out of memory, a read-only
replica, something that is not Redis at all) will not mend by waiting: the next
``acquire`` raises ``SharedLimitError`` (fatal, nothing sent), which stops a campaign as a
401 does. The one rule for which is which is ``_is_outage``. The token is never written to
Redis: the key names the limit, nothing else is stored; the password of the URL is never
shown (``display_url``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple
from urllib.parse import urlsplit

import msgspec

from .._secrets import display_url
from ._bucket import Clock
from ._law import CallCounts, Law, LawState, Reading, covers
from ._local import ADAPTIVE_START, RateLimit, unnamed_throttle_wait
from ._redis_errors import (
    DETAIL_MAX,
    SharedLimitError,
    UnexpectedReply,
    describe_client,
    is_outage,
    outage_reason,
    reason,
)
from ._redis_script import ARGUMENTS, SCRIPT
from ._tuning import DEFAULT_TUNING, AdaptiveTuning

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["SHARED_START", "SharedLimitError", "SharedRateLimit", "default_limit_key"]

_log = logging.getLogger("proactive_async")

SHARED_START: Final = 100.0
"""Targets/s a new adaptive group starts at, doubling every quarter second until its first
429: several processes must not open with all their calls at once at an unknown server
(the local mode can start unbounded: one process learns from its own first answers)."""
_KEY_TTL_MS: Final = 3_600_000
"""An idle limit's state is forgotten after an hour (then it starts empty again)."""
_BACKOFF_MIN: Final = 0.05
_BACKOFF_MAX: Final = 2.0
_PROBE_MAX: Final = 2.0
"""Seconds at most between two tries of an unreachable Redis while pacing locally."""
_REPORT_INTERVAL: Final = 0.025
"""Seconds between two reports of accepted calls to Redis, per process (adaptive only): the
group's goodput reads at most this much late (at 0.1 s, a tenth of the law's window, every
estimate read 5-10% low)."""
_HORIZON: Final = 0.1
"""Seconds ahead at most an adaptive group's slot is reserved (see ``_redis_script``)."""
_COMMIT_TRIES: Final = 4
"""Decisions made again on a fresh reading when another process committed first."""
_UNHONOURED: Final = ("unknown_pause",)
"""``AdaptiveTuning`` fields the shared limit does not read (a 429 without Retry-After pauses
the group for ``unnamed_throttle_wait``, as in ``RateLimit``); a value other than the
default is refused, never ignored."""
_OP, _VALUE, _CALLS, _NOW, _GEN, _STATE, _RATE, _UNTIL = (
    ARGUMENTS.index(name)
    for name in ("op", "value", "calls", "now", "gen", "state", "rate", "until")
)
_INDEX: Final = {name: index for index, name in enumerate(ARGUMENTS)}
_NO_CALLS: Final = CallCounts(0, 0, 0)
_encode_state = msgspec.json.Encoder().encode
_decode_state = msgspec.json.Decoder(LawState).decode


class _Reply(NamedTuple):
    """The script's answer to report, throttle, read and commit."""

    ok: bool
    wait: float
    rate: float
    reading: Reading
    gen: int
    state: bytes
    born: float
    """When the group made its first call: a new law's clocks start there."""


def default_limit_key(base_url: str, channel_id: int | None) -> str:
    """The key two campaigns on the same API host and channel share without being told."""
    host = urlsplit(base_url).hostname or base_url
    channel = "any" if channel_id is None else str(channel_id)
    return f"proactive-async:limit:{host}:channel:{channel}"


class SharedRateLimit:
    """Paces every process that names the same ``key``: one budget through Redis.

    Usage::

        limit = SharedRateLimit("redis://127.0.0.1:6379/0", key="acme:channel:1", rate=300)
        async with AsyncClient(URL, TOKEN, rate_limit=limit) as client:
            ...                      # every call of every worker waits its turn
        await limit.aclose()

    Parameters:
        redis: a ``redis://`` URL, or a ``redis.asyncio.Redis`` client (closed by its owner).
        key: the limit's name in Redis; processes with the same key share the budget.
        rate: targets per second for all processes together; None: adaptive (the group
            finds the server's limit together).
        burst: the bucket size in targets; None: one second's worth.
        tuning: how the adaptive mode moves (and what it takes for noise); the same law
            as ``RateLimit``'s, for the whole group.
        on_redis_error: what to do while Redis cannot be reached: ``"wait"`` (retry it;
            never send unpaced) or ``"local"`` (a local ``RateLimit`` at
            ``rate / processes`` until Redis answers again). An error answer is never
            waited for: ``acquire`` raises ``SharedLimitError``.
        processes: how many processes share the key (for the local fallback only).
        clock: the clock of the script and of the reports, for tests; None: the Redis
            server's ``TIME`` (and ``time.monotonic`` between two reports), so the
            processes' clocks never matter.

    Raises ValueError for a ``tuning`` field it cannot honour (see the module docstring).
    ``problem`` says, while Redis is away, what the limit is doing about it.
    """

    def __init__(
        self,
        redis: str | aioredis.Redis,
        *,
        key: str,
        rate: float | None = None,
        burst: float | None = None,
        tuning: AdaptiveTuning = DEFAULT_TUNING,
        on_redis_error: Literal["wait", "local"] = "wait",
        processes: int = 1,
        clock: Clock | None = None,
    ) -> None:
        try:
            import redis.asyncio as aioredis_module
            import redis.exceptions as redis_errors
        except ImportError as exc:  # pragma: no cover - the extra is in the dev install
            raise ImportError(
                "SharedRateLimit needs redis-py: pip install 'proactive-async[redis]'"
            ) from exc
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be positive or None, not {rate!r}")
        if burst is not None and not burst > 0:
            raise ValueError(f"burst must be positive or None, not {burst!r}")
        if on_redis_error not in ("wait", "local"):
            raise ValueError("on_redis_error must be 'wait' or 'local'")
        if processes < 1:
            raise ValueError("processes must be at least 1")
        _refuse_unhonoured(tuning)
        if isinstance(redis, str):
            self._redis = aioredis_module.Redis.from_url(
                redis, socket_timeout=2.0, socket_connect_timeout=2.0
            )
            self._owns_redis = True
            self._where = display_url(redis)
        else:
            self._redis = redis
            self._owns_redis = False
            self._where = describe_client(redis)
        self._redis_errors = redis_errors
        self.key = key
        self._fixed = rate
        self._burst = burst
        self._tuning = tuning
        self._on_error = on_redis_error
        self._processes = processes
        self._script = self._redis.register_script(SCRIPT)
        self._args = _script_args(rate, burst, tuning)
        self._law = Law(tuning, ceiling=ADAPTIVE_START)
        self._clock = clock
        self._rate = rate if rate is not None else SHARED_START
        self._fallback: RateLimit | None = None
        self._outage_since: float | None = None
        self._outage_reason = ""
        self._probes = 0
        self._probe_at = 0.0  # while pacing locally: when to ask Redis again
        self._failure: SharedLimitError | None = None
        self._accepted = 0.0
        self._accepted_calls = 0
        self._reported_at = 0.0

    def __repr__(self) -> str:
        mode = "adaptive" if self._fixed is None else "fixed"
        return f"SharedRateLimit(key={self.key!r}, rate={self._rate!r}, {mode})"

    @property
    def rate(self) -> float | None:
        """The group's targets-per-second limit, as last heard from Redis."""
        return self._rate

    @property
    def adaptive(self) -> bool:
        return self._fixed is None

    @property
    def problem(self) -> str | None:
        """While Redis cannot be reached: what this limit is doing about it, in one line
        (for a live display); None while Redis answers."""
        since = self._outage_since
        if since is None or self._failure is not None:
            return None
        away = f"Redis at {self._where} unreachable ({self._outage_reason}) for "
        away += f"{time.monotonic() - since:.0f} s"
        fallback = self._fallback
        if self._on_error == "local" and fallback is not None and fallback.rate is not None:
            return f"{away}: pacing locally at {fallback.rate:g} targets/s"
        if self._on_error == "local":
            return f"{away}: pacing locally at 1/{self._processes} of the rate"
        return f"{away}: waiting for it, nothing is sent unpaced"

    async def aclose(self) -> None:
        """Close the Redis connection this limit opened (not one it was given)."""
        if self._owns_redis:
            await self._redis.aclose()

    async def __aenter__(self) -> SharedRateLimit:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the protocol --------------------------------------------------------------------

    async def acquire(self, weight: float = 1.0) -> None:
        """Wait until the group's bucket in Redis grants ``weight`` targets (after any
        shared pause); while Redis is away, as ``on_redis_error`` says."""
        attempt = 0
        while True:
            if self._failure is not None:
                raise self._failure
            fallback = self._fallback
            if fallback is not None:
                if time.monotonic() < self._probe_at:
                    await fallback.acquire(weight)  # Redis was away a moment ago: not yet
                    return
                self._probe_at = time.monotonic() + _PROBE_MAX  # one caller asks Redis
            try:
                granted, wait = await self._call("acquire", weight)
            except Exception as exc:
                if not self._is_outage(exc):
                    raise self._fail(exc) from None
                if self._on_error == "local":
                    await self._local(exc).acquire(weight)
                    return
                self._note_outage(exc)
                attempt += 1
                await asyncio.sleep(_backoff(attempt))
                continue
            if granted:
                if wait > 0:
                    await asyncio.sleep(wait)
                return
            # Paused: nothing was reserved; come back when the pause ends (jittered, so
            # that the processes do not all arrive in the same millisecond).
            await asyncio.sleep(wait + random.uniform(0, 0.01))

    async def on_success(self, weight: float) -> None:
        """An accepted call of ``weight`` targets, for an adaptive group: counted, and
        reported to the group's law at most every 25 ms."""
        if self._fixed is not None:
            return
        self._accepted += weight
        self._accepted_calls += 1  # the noise filter counts 429s against calls
        now = self._clock() if self._clock is not None else time.monotonic()
        if now - self._reported_at < _REPORT_INTERVAL:
            return
        self._reported_at = now
        accepted, self._accepted = self._accepted, 0.0
        calls, self._accepted_calls = self._accepted_calls, 0
        await self._tell("report", accepted, calls)

    async def on_throttle(self, weight: float, retry_after: float | None) -> bool:
        """A 429, told to the group: True when every process now waits a shared pause."""
        wait = retry_after if retry_after is not None else unnamed_throttle_wait(weight, self._rate)
        return await self._tell("throttle", wait)

    async def on_busy(self, seconds: float) -> None:
        """A 503: every process of the group pauses for ``seconds``."""
        await self._tell("busy", seconds)

    # -- Redis ---------------------------------------------------------------------------

    async def _run(self, op: str, value: float, **extra: str) -> list[Any]:
        args = self._args.copy()
        args[_OP], args[_VALUE] = op, repr(float(value))
        for name, text in extra.items():
            args[_INDEX[name]] = text
        if self._clock is not None:
            args[_NOW] = repr(self._clock())
        reply: list[Any] = await self._script(keys=[self.key], args=args)
        return reply

    async def _call(self, op: str, value: float) -> tuple[bool, float]:
        """acquire, busy, and a fixed limit's throttle: (granted or paused, seconds)."""
        reply = await self._run(op, value)
        try:
            granted, wait, rate = reply[0] in (b"1", "1"), float(reply[1]), float(reply[2])
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise UnexpectedReply(f"an unexpected answer to the limit's script: {reply!r}") from exc
        self._recovered()
        self._rate = rate
        return granted, wait

    async def _exchange(self, op: str, value: float = 0.0, **extra: str) -> _Reply:
        """report, throttle, read or commit of an adaptive limit: the group's reading."""
        reply = await self._run(op, value, **extra)
        try:
            numbers = [float(item) for item in reply[1:10]]
            wait, rate, now, granted, accepted, recent, calls_ok, calls_429, run = numbers
            parsed = _Reply(
                ok=reply[0] in (b"1", "1"),
                wait=wait,
                rate=rate,
                reading=Reading(
                    now,
                    granted,
                    accepted,
                    recent,
                    CallCounts(int(calls_ok), int(calls_429), int(run)),
                ),
                gen=int(float(reply[10])),
                state=reply[11] if isinstance(reply[11], bytes) else str(reply[11]).encode(),
                born=float(reply[12]),
            )
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise UnexpectedReply(f"an unexpected answer to the limit's script: {reply!r}") from exc
        self._recovered()
        self._rate = rate
        return parsed

    async def _adapt(self, op: str, value: float, calls: float) -> bool:
        """Run the law on what this process saw; True when the group now waits a pause that
        covers the caller's own wait (``value``)."""
        reply = await self._exchange(op, value, calls=repr(float(calls)))
        if op == "report":
            decide: Callable[[LawState, Reading], bool] = self._law_success
        else:

            def decide(state: LawState, reading: Reading) -> bool:
                return self._law.on_throttle(state, reading, value) != "noise"

        for _ in range(_COMMIT_TRIES):
            state = self._law_state(reply)
            if state is None:  # a new group (or one Redis forgot): the law starts
                state = self._law.start(SHARED_START, Reading(reply.born, 0.0, 0.0, 0.0, _NO_CALLS))
            rate = state.rate
            paused = decide(state, reply.reading)
            encoded = _encode_state(state)
            if encoded == reply.state:
                return False  # nothing decided, nothing to write: the caller waits its own
            if state.rate != rate or paused:
                _log.debug(
                    "shared rate limit %r: %s: rate %.1f -> %.1f, estimate %s, pause %.3f s",
                    self.key,
                    op,
                    rate,
                    state.rate,
                    state.estimate,
                    (state.paused_until or 0.0) - reply.reading.now,
                )
            until = state.paused_until if paused and state.paused_until is not None else 0.0
            spared = paused and covers(until - reply.reading.now, value)
            reply = await self._exchange(
                "commit",
                gen=str(reply.gen),
                state=encoded.decode(),
                rate=repr(state.rate),
                until=repr(until),
            )
            if reply.ok:
                return spared
        _log.debug("shared rate limit %r: the law's state changed under us each time", self.key)
        return False  # the caller waits its own: never too short

    def _law_state(self, reply: _Reply) -> LawState | None:
        """The law's state in Redis; None for none, or for one this version cannot read
        (written by another version of the SDK on the same key): the law starts again."""
        if not reply.state:
            return None
        try:
            return _decode_state(reply.state)
        except msgspec.DecodeError:  # ValidationError is one
            _log.warning(
                "shared rate limit %r: the adaptive state in Redis is not one this version "
                "reads (another version of proactive-async on the same key?); starting again",
                self.key,
            )
            return None

    def _law_success(self, state: LawState, reading: Reading) -> bool:
        self._law.on_success(state, reading)
        return False

    async def _tell(self, op: str, value: float, calls: float = 0.0) -> bool:
        """Report to the group; True when every process now waits a shared pause. If Redis
        is away, the local fallback (if any) hears it instead."""
        if self._failure is not None:
            return False
        try:
            if self._fixed is None and op in ("report", "throttle"):
                return await self._adapt(op, value, calls)
            paused, _ = await self._call(op, value)
            return paused
        except Exception as exc:
            if not self._is_outage(exc):
                # Not raised here: the call it reports on was made; the next acquire raises.
                self._fail(exc)
                return False
            self._note_outage(exc)
            if self._fallback is None:
                return False
            if op == "throttle":
                return await self._fallback.on_throttle(1.0, value)
            if op == "busy":
                await self._fallback.on_busy(value)
                return True
            return False

    def _is_outage(self, exc: BaseException) -> bool:
        return is_outage(exc, self._redis_errors)

    def _fail(self, exc: BaseException) -> SharedLimitError:
        """Latch an error answer: every later acquire raises it (and nothing is sent)."""
        if self._failure is None:
            why = reason(exc, self._redis_errors)
            detail = " ".join(str(exc).split())[:DETAIL_MAX] or type(exc).__name__
            self._failure = SharedLimitError(
                f"shared rate limit: Redis at {self._where} {why} ({detail})", reason=why
            )
            _log.error("%s", self._failure.message)
        return self._failure

    def _local(self, exc: BaseException) -> RateLimit:
        self._note_outage(exc)
        self._probes += 1
        self._probe_at = time.monotonic() + min(_PROBE_MAX, _backoff(self._probes))
        if self._fallback is None:
            share = self._fixed / self._processes if self._fixed is not None else None
            self._fallback = RateLimit(share, tuning=self._tuning)
            # Empty: a full bucket would let twice the share through in the first second.
            self._fallback.start_empty()
        return self._fallback

    def _note_outage(self, exc: BaseException) -> None:
        self._outage_reason = outage_reason(exc)  # the latest: what the display says
        if self._outage_since is not None:
            return
        self._outage_since = time.monotonic()
        what = (
            "waiting for it (no call is sent unpaced)"
            if self._on_error == "wait"
            else f"pacing locally at 1/{self._processes} of the rate until it is back"
        )
        _log.warning(
            "shared rate limit %r: Redis unavailable (%s: %s); %s",
            self.key,
            self._where,
            self._outage_reason,
            what,
        )

    def _recovered(self) -> None:
        if self._outage_since is None:
            return
        _log.warning(
            "shared rate limit %r: Redis is back after %.1f s",
            self.key,
            time.monotonic() - self._outage_since,
        )
        self._outage_since = None
        self._fallback = None
        self._probes = 0


def _refuse_unhonoured(tuning: AdaptiveTuning) -> None:
    """A tuning field the script does not read must keep its default: never ignored."""
    for name in _UNHONOURED:
        if getattr(tuning, name) != getattr(DEFAULT_TUNING, name):
            raise ValueError(
                f"SharedRateLimit does not honour AdaptiveTuning.{name}; "
                f"leave it at its default ({getattr(DEFAULT_TUNING, name)!r})"
            )


def _script_args(rate: float | None, burst: float | None, tuning: AdaptiveTuning) -> list[str]:
    """The script's ARGV, built once; the operation and its values are set per call."""
    values: dict[str, float] = {
        "value": 0.0,
        "calls": 0.0,
        "fixed": rate or 0.0,
        "burst": burst or 0.0,
        "ttl": _KEY_TTL_MS,
        "now": 0.0,  # 0: the Redis server's clock
        "start": SHARED_START,
        "window": tuning.window,
        "horizon": _HORIZON,
        "drain": float(tuning.drain),
        "gen": 0.0,
        "rate": 0.0,
        "until": 0.0,
    }
    # repr keeps every digit of a float.
    return [repr(values[name]) if name in values else "" for name in ARGUMENTS]


def _backoff(attempt: int) -> float:
    wait: float = min(_BACKOFF_MAX, _BACKOFF_MIN * 2.0 ** min(attempt - 1, 10))
    return wait + random.uniform(0, wait / 2)
