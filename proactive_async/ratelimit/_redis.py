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

A 429 pauses every process on the key for its ``Retry-After`` and empties the bucket until
the pause ends (so the first calls after it are paced, not a burst); a 503 pauses them all.

Adaptive mode (``rate=None``): the rate lives in the hash beside the GCRA state, moved by
the law of the local ``AdaptiveRate`` for the whole group (``_redis_script.py``). A new
group starts at ``SHARED_START`` (100 targets/s) and doubles every quarter second until its
first 429 (slow start); a 429 before anything was measured is a ceiling that slow start
stops just under. One congestion event cuts the rate once for the group, whichever process
saw it: later 429s are not a new signal until the pause plus a reaction window has passed.
After a cut, increases close ``approach`` of the gap to just under the limit, hold there for
a plateau (doubling, up to ``max_plateau``, each time a cut ``confirm``s the same limit),
then probe above it, each step ``probe_growth`` times the last. A rare 429 is noise, not a
limit (``noise_share``, ``noise_run``). Every ``AdaptiveTuning`` field is honoured but
``unknown_pause``, refused unless left at its default (a 429 without Retry-After pauses the
group for ``unnamed_throttle_wait``, as ``RateLimit`` does).

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
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlsplit

from .._errors import ProactiveError
from .._secrets import display_url
from ._adaptive import DEFAULT_TUNING, NOISE_MIN_CALLS, PAUSES_PER_PLATEAU, AdaptiveTuning
from ._bucket import Clock
from ._local import ADAPTIVE_START, RateLimit, unnamed_throttle_wait
from ._redis_script import ARGUMENTS, SCRIPT

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
_TRANSIENT_ANSWERS: Final = ("LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")
"""Error answers that pass by themselves (a restart, a failover): waited out like an outage."""
_DETAIL_MAX: Final = 160
_REPORT_INTERVAL: Final = 0.1
"""Seconds between two reports of accepted calls to Redis, per process (adaptive only)."""
_UNHONOURED: Final = tuple(f.name for f in fields(AdaptiveTuning) if f.name not in ARGUMENTS)
"""``AdaptiveTuning`` fields the script does not read (``unknown_pause``: a 429 without
Retry-After pauses the group for ``unnamed_throttle_wait``, as in ``RateLimit``); a value
other than the default is refused, never ignored."""
_OP, _VALUE, _NOW = (ARGUMENTS.index(name) for name in ("op", "value", "now"))


class SharedLimitError(ProactiveError):
    """The shared rate limit's Redis answered with an error that waiting will not mend (a
    wrong or missing password, out of memory, a read-only replica, not Redis at all).

    Raised by ``SharedRateLimit.acquire`` before a call is made: nothing was sent, and a
    campaign stops at once, as for a 401. ``reason`` is the short why (``"refused the
    password"``); the message names Redis by its URL without the password.
    """

    fatal = True
    may_have_been_processed = False

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


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
        clock: the script's clock, for tests; None: the Redis server's ``TIME``, so the
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
            self._where = _describe_client(redis)
        self._redis_errors = redis_errors
        self.key = key
        self._fixed = rate
        self._burst = burst
        self._tuning = tuning
        self._on_error = on_redis_error
        self._processes = processes
        self._script = self._redis.register_script(SCRIPT)
        self._args = _script_args(rate, burst, tuning)
        self._clock = clock
        self._rate = rate if rate is not None else SHARED_START
        self._fallback: RateLimit | None = None
        self._outage_since: float | None = None
        self._outage_reason = ""
        self._probes = 0
        self._probe_at = 0.0  # while pacing locally: when to ask Redis again
        self._failure: SharedLimitError | None = None
        self._accepted = 0.0
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
        if self._fixed is not None:
            return
        self._accepted += 1  # calls: the noise filter counts 429s against calls
        now = time.monotonic()
        if now - self._reported_at < _REPORT_INTERVAL:
            return
        self._reported_at = now
        accepted, self._accepted = self._accepted, 0.0
        await self._tell("report", accepted)

    async def on_throttle(self, weight: float, retry_after: float | None) -> bool:
        wait = retry_after if retry_after is not None else unnamed_throttle_wait(weight, self._rate)
        return await self._tell("throttle", wait)

    async def on_busy(self, seconds: float) -> None:
        await self._tell("busy", seconds)

    # -- Redis ---------------------------------------------------------------------------

    async def _call(self, op: str, value: float) -> tuple[bool, float]:
        args = self._args.copy()
        args[_OP], args[_VALUE] = op, repr(float(value))
        if self._clock is not None:
            args[_NOW] = repr(self._clock())
        reply = await self._script(keys=[self.key], args=args)
        try:
            granted, wait, rate = reply[0] in (b"1", "1"), float(reply[1]), float(reply[2])
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise _UnexpectedReply(
                f"an unexpected answer to the limit's script: {reply!r}"
            ) from exc
        self._recovered()
        self._rate = rate
        return granted, wait

    async def _tell(self, op: str, value: float) -> bool:
        """Report to the group; True when every process now waits a shared pause. If Redis
        is away, the local fallback (if any) hears it instead."""
        if self._failure is not None:
            return False
        try:
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
        """The one rule: Redis away (waited for, or paced locally) or an error answer (fatal)."""
        errors = self._redis_errors
        if isinstance(exc, errors.AuthenticationError | errors.AuthorizationError):
            return False  # a ConnectionError in redis-py, but no wait brings a password
        if isinstance(exc, errors.ConnectionError | errors.TimeoutError | OSError):
            return True
        return isinstance(exc, errors.ResponseError) and str(exc).startswith(_TRANSIENT_ANSWERS)

    def _fail(self, exc: BaseException) -> SharedLimitError:
        """Latch an error answer: every later acquire raises it (and nothing is sent)."""
        if self._failure is None:
            reason = _reason(exc, self._redis_errors)
            detail = " ".join(str(exc).split())[:_DETAIL_MAX] or type(exc).__name__
            self._failure = SharedLimitError(
                f"shared rate limit: Redis at {self._where} {reason} ({detail})", reason=reason
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
        self._outage_reason = _outage_reason(exc)  # the latest: what the display says
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
    """The script's ARGV, built once; ``op``, ``value`` and ``now`` are set per call."""
    values: dict[str, float] = {
        name: getattr(tuning, name) for name in ARGUMENTS if hasattr(tuning, name)
    }
    values.update(
        value=0.0,
        fixed=rate or 0.0,
        burst=burst or 0.0,
        ttl=_KEY_TTL_MS,
        now=0.0,  # 0: the Redis server's clock
        start=SHARED_START,
        min_calls=NOISE_MIN_CALLS,
        ceiling=rate or ADAPTIVE_START,
        pauses_per_plateau=PAUSES_PER_PLATEAU,
    )
    # bool is an int: drain goes as 1 or 0. repr keeps every digit of a float.
    return ["" if name == "op" else repr(float(values[name])) for name in ARGUMENTS]


def _backoff(attempt: int) -> float:
    wait: float = min(_BACKOFF_MAX, _BACKOFF_MIN * 2.0 ** min(attempt - 1, 10))
    return wait + random.uniform(0, wait / 2)


class _UnexpectedReply(Exception):
    """The script's answer is not what it returns: whatever answered is not our Redis."""


def _reason(exc: BaseException, errors: Any) -> str:
    """Why an error answer stops the limit, in words an operator acts on."""
    text = str(exc)
    # Unauthenticated, Redis refuses a command of many arguments as a protocol error.
    if "unauthenticated" in text or "NOAUTH" in text:
        return "asks for a password (give it in the URL: redis://:PASSWORD@host)"
    if isinstance(exc, errors.AuthenticationError) or text.startswith("WRONGPASS"):
        if "required" in text.lower():
            return "asks for a password (give it in the URL: redis://:PASSWORD@host)"
        return "refused the password (or the user)"
    if isinstance(exc, errors.AuthorizationError | errors.NoPermissionError):
        return "does not let this user run the limit's script (NOPERM)"
    if isinstance(exc, errors.OutOfMemoryError):
        return "is out of memory and refuses writes (maxmemory)"
    if isinstance(exc, errors.ReadOnlyError):
        return "is a read-only replica (point the URL at the primary)"
    if isinstance(exc, errors.InvalidResponse | _UnexpectedReply):
        return "does not answer as Redis does (is the URL's host and port a Redis?)"
    return "answered with an error"


def _outage_reason(exc: BaseException) -> str:
    """``connection refused``, ``timed out``: what the display says of an outage."""
    text = str(exc).lower()
    for words, reason in _OUTAGE_REASONS:
        if words in text:
            return reason
    return type(exc).__name__


_OUTAGE_REASONS: Final = (
    ("refused", "connection refused"),
    ("error 111 ", "connection refused"),  # redis-py: "Error 111 connecting to ..."
    ("connect call failed", "connection refused"),
    ("timed out", "timed out"),
    ("timeout", "timed out"),
    ("loading", "loading its data"),
    ("reset", "connection reset"),
    ("closed", "connection closed"),
    ("name or service", "host name not found"),
)


def _describe_client(client: aioredis.Redis) -> str:
    """Host, port and database of a given client: never its password."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    host, port, db = kwargs.get("host", "localhost"), kwargs.get("port", 6379), kwargs.get("db", 0)
    return f"redis://{host}:{port}/{db}"
