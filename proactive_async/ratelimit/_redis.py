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

Adaptive mode (``rate=None``): the rate lives in the hash beside the GCRA state; a new
group starts at ``SHARED_START`` (100 targets/s) and doubles every quarter second until its
first 429 (slow start). One
congestion event cuts it once for the group: after a cut, 429s are not a new signal until
the pause plus a reaction window has passed (the same script holds that epoch). A rare 429
is noise, not a limit: it pauses but does not cut unless 429s are more than
``AdaptiveTuning.noise_share`` of the group's recent calls or ``noise_run`` come in a row
(see ``AdaptiveTuning``). Increases happen at most once per ``interval`` for the whole
group, and only when the group used at least ``busy`` of the rate: after a cut they close
``approach`` of the gap to just under the rate the group was sending at when cut, then
probe above it slowly.

Redis failing (unreachable, restarted, timing out): by default (``on_redis_error="wait"``)
acquire waits and retries Redis with backoff, so nothing is ever sent unpaced; with
``"local"`` it falls back to a local ``RateLimit`` at ``rate / processes`` until Redis
answers again. Either way a warning is logged once per outage and nothing is lost: a call
that waits is a call not yet made. The token is never written to Redis: the key names the
limit, nothing else is stored.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlsplit

from ._adaptive import DEFAULT_TUNING, AdaptiveTuning
from ._local import ADAPTIVE_START, RateLimit, unnamed_throttle_wait

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["SHARED_START", "SharedRateLimit", "default_limit_key"]

_log = logging.getLogger("proactive_async")

SHARED_START: Final = 100.0
"""Targets/s a new adaptive group starts at, doubling every quarter second until its first
429: several processes must not open with all their calls at once at an unknown server
(the local mode can start unbounded: one process learns from its own first answers)."""
_KEY_TTL_MS: Final = 3_600_000
"""An idle limit's state is forgotten after an hour (then it starts empty again)."""
_BACKOFF_MIN: Final = 0.05
_BACKOFF_MAX: Final = 2.0
_REPORT_INTERVAL: Final = 0.1
"""Seconds between two reports of accepted calls to Redis, per process (adaptive only)."""
_NOISE_MIN_CALLS: Final = 20

# One script, several operations, so that every change of the shared state is atomic and
# timed by the server. Numbers go back to Python as strings: Redis truncates Lua numbers.
_SCRIPT: Final = """
local key = KEYS[1]
local op = ARGV[1]
local arg = tonumber(ARGV[2])
local fixed = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local floor = tonumber(ARGV[6])
local ceiling = tonumber(ARGV[7])
local decrease = tonumber(ARGV[8])
local slow_start = tonumber(ARGV[9])
local interval = tonumber(ARGV[10])
local reaction = tonumber(ARGV[11])
local window = tonumber(ARGV[12])
local busy = tonumber(ARGV[13])
local noise_share = tonumber(ARGV[14])
local noise_run = tonumber(ARGV[15])
local probe = tonumber(ARGV[16])
local start = tonumber(ARGV[17])
local min_calls = tonumber(ARGV[18])
local approach = tonumber(ARGV[19])
local margin = tonumber(ARGV[20])

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local f = redis.call('HMGET', key, 'tat', 'pause', 'rate', 'hold', 'grow',
  'granted', 'wt', 'wg', 'pt', 'pg', 'ok', 'th', 'pok', 'pth', 'run', 'cuts', 'est')
local rate = fixed
if fixed == 0 then rate = tonumber(f[3]) or start end
local spacing = 1 / rate
local size = burst
if size == 0 then size = math.max(1, rate) end
local tolerance = size * spacing
local tat = tonumber(f[1]) or (now + tolerance)
local pause = tonumber(f[2]) or 0
local hold = tonumber(f[4]) or 0
local grow = tonumber(f[5]) or 0
local granted = tonumber(f[6]) or 0
local wt = tonumber(f[7]) or now
local wg = tonumber(f[8]) or granted
local pt = tonumber(f[9]) or wt
local pg = tonumber(f[10]) or wg
local ok = tonumber(f[11]) or 0
local th = tonumber(f[12]) or 0
local pok = tonumber(f[13]) or 0
local pth = tonumber(f[14]) or 0
local run = tonumber(f[15]) or 0
local cuts = tonumber(f[16]) or 0
local est = tonumber(f[17]) or 0  -- the group's sending rate at its last cut: the limit

-- Two windows of history: what the group was granted, accepted and refused lately.
if now - wt >= window then
  pt, pg, pok, pth = wt, wg, ok, th
  wt, wg, ok, th = now, granted, 0, 0
  if now - pt >= 2 * window then pt, pg, pok, pth = wt, wg, 0, 0 end
end

-- Is a 429 the server's limit? More than noise_share of recent calls, or a run of them.
-- Counted here, before the decision, for every 429.
if op == 'throttle' then
  th = th + 1
  run = run + 1
end
local function limit_speaks()
  if ok + pok == 0 then return true end  -- nothing accepted lately: the limit speaks
  local calls = math.max(ok + th + pok + pth, min_calls)
  return (th + pth) / calls > noise_share or run >= noise_run
end

local result
if op == 'acquire' then
  if pause > now then
    result = {'0', tostring(pause - now), tostring(rate)}
  else
    local cost = arg * spacing
    local later = math.max(tat, now) + cost
    local go = later - math.max(tolerance, cost)
    tat = later
    granted = granted + arg
    result = {'1', tostring(math.max(0, go - now)), tostring(rate)}
  end
elseif op == 'throttle' and fixed == 0 and now >= hold and not limit_speaks() then
  -- Noise (a rare 429): the rate stays and nobody else waits.
  result = {'0', tostring(math.max(0, pause - now)), tostring(rate)}
elseif op == 'throttle' or op == 'busy' then
  if now + arg > pause then pause = now + arg end
  if op == 'throttle' then
    tat = math.max(tat, pause + tolerance)
    if fixed == 0 and now >= hold then
      local span = math.max(now - pt, window / 4)
      local sent = (granted - pg) / span
      local basis = rate
      if sent > 0 and sent < rate then basis = sent end
      est = basis
      rate = math.min(ceiling, math.max(floor, basis * decrease))
      hold = now + arg + reaction
      cuts = cuts + 1
      run = 0
    end
  end
  result = {'1', tostring(pause - now), tostring(rate)}
elseif op == 'report' then
  ok = ok + arg
  if arg > 0 then run = 0 end
  local step = interval
  if cuts == 0 then step = interval / 2 end  -- slow start: twice as often
  if fixed == 0 and now >= hold and now - grow >= step then
    local span = math.max(now - pt, window / 4)
    local sent = (granted - pg) / span
    if sent >= busy * rate then
      local target = est * (1 - margin)
      if cuts == 0 then
        rate = rate * slow_start
      elseif rate < target * (1 - probe) then
        rate = rate + (target - rate) * approach  -- far under the limit: close the gap
      else
        rate = rate * (1 + probe) + 1  -- near it: probe above, slowly
      end
      rate = math.min(ceiling, math.max(floor, rate))
    end
    grow = now
  end
  result = {'1', '0', tostring(rate)}
end

redis.call('HSET', key, 'tat', tostring(tat), 'pause', tostring(pause), 'hold', tostring(hold),
  'grow', tostring(grow), 'granted', tostring(granted), 'wt', tostring(wt), 'wg', tostring(wg),
  'pt', tostring(pt), 'pg', tostring(pg), 'ok', tostring(ok), 'th', tostring(th),
  'pok', tostring(pok), 'pth', tostring(pth), 'run', tostring(run), 'cuts', tostring(cuts),
  'est', tostring(est))
if fixed == 0 then redis.call('HSET', key, 'rate', tostring(rate)) end
redis.call('PEXPIRE', key, ttl)
return result
"""


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
        tuning: how the adaptive mode moves (and what it takes for noise).
        on_redis_error: ``"wait"`` (retry Redis; never send unpaced) or ``"local"`` (a
            local ``RateLimit`` at ``rate / processes`` until Redis answers again).
        processes: how many processes share the key (for the local fallback only).
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
        if isinstance(redis, str):
            self._redis = aioredis_module.Redis.from_url(
                redis, socket_timeout=2.0, socket_connect_timeout=2.0
            )
            self._owns_redis = True
        else:
            self._redis = redis
            self._owns_redis = False
        self._errors: tuple[type[BaseException], ...] = (
            redis_errors.ConnectionError,
            redis_errors.TimeoutError,
            redis_errors.BusyLoadingError,
            OSError,
        )
        self.key = key
        self._fixed = rate
        self._burst = burst
        self._tuning = tuning
        self._on_error = on_redis_error
        self._processes = processes
        self._script = self._redis.register_script(_SCRIPT)
        self._rate = rate if rate is not None else SHARED_START
        self._fallback: RateLimit | None = None
        self._outage_since: float | None = None
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
            try:
                granted, wait = await self._call("acquire", weight)
            except self._errors as exc:
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
        tuning = self._tuning
        args: list[Any] = [
            op,
            repr(float(value)),
            repr(float(self._fixed or 0)),
            repr(float(self._burst or 0)),
            _KEY_TTL_MS,
            repr(tuning.floor),
            repr(float(self._fixed or ADAPTIVE_START)),
            repr(tuning.decrease),
            repr(tuning.slow_start),
            repr(tuning.interval),
            repr(tuning.reaction_window),
            repr(tuning.window),
            repr(tuning.busy),
            repr(tuning.noise_share),
            tuning.noise_run,
            repr(tuning.probe),
            repr(SHARED_START),
            _NOISE_MIN_CALLS,
            repr(tuning.approach),
            repr(tuning.margin),
        ]
        reply = await self._script(keys=[self.key], args=args)
        self._recovered()
        self._rate = float(reply[2])
        return reply[0] in (b"1", "1"), float(reply[1])

    async def _tell(self, op: str, value: float) -> bool:
        """Report to the group; True when every process now waits a shared pause. If Redis
        is away, the local fallback (if any) hears it instead."""
        try:
            paused, _ = await self._call(op, value)
            return paused
        except self._errors as exc:
            self._note_outage(exc)
            if self._fallback is None:
                return False
            if op == "throttle":
                return await self._fallback.on_throttle(1.0, value)
            if op == "busy":
                await self._fallback.on_busy(value)
                return True
            return False

    def _local(self, exc: BaseException) -> RateLimit:
        self._note_outage(exc)
        if self._fallback is None:
            share = self._fixed / self._processes if self._fixed is not None else None
            self._fallback = RateLimit(share, tuning=self._tuning)
        return self._fallback

    def _note_outage(self, exc: BaseException) -> None:
        if self._outage_since is not None:
            return
        self._outage_since = time.monotonic()
        what = (
            "waiting for it (no call is sent unpaced)"
            if self._on_error == "wait"
            else f"pacing locally at 1/{self._processes} of the rate until it is back"
        )
        _log.warning(
            "shared rate limit %r: Redis unavailable (%s); %s", self.key, type(exc).__name__, what
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


def _backoff(attempt: int) -> float:
    wait: float = min(_BACKOFF_MAX, _BACKOFF_MIN * 2.0 ** min(attempt - 1, 10))
    return wait + random.uniform(0, wait / 2)
