"""The Lua script behind ``SharedRateLimit``: every change of a shared limit, atomically.

One script, four operations (``acquire``, ``report``, ``throttle``, ``busy``), so that each
change of the group's state is one atomic step timed by one clock (the server's ``TIME``).
The adaptive part is the law of ``AdaptiveRate`` (``_adaptive.py``), step for step; only
the measurement differs: the group's rate sent (grants over the last one or two windows)
stands for the goodput, since accepted calls reach Redis in batches.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ARGUMENTS", "SCRIPT"]

ARGUMENTS: Final = (
    "op",
    "value",
    "fixed",
    "burst",
    "ttl",
    "now",
    "start",
    "min_calls",
    "ceiling",
    "floor",
    "interval",
    "window",
    "reaction_window",
    "decrease",
    "slow_start",
    "approach",
    "probe",
    "probe_growth",
    "max_cut",
    "busy",
    "drain",
    "margin",
    "plateau",
    "max_plateau",
    "confirm",
    "noise_share",
    "noise_run",
    "pauses_per_plateau",
)
"""ARGV in order: the operation, its value, the limit's shape, the clock (0: the server's),
then the ``AdaptiveTuning`` fields the script honours."""

# Numbers go back to Python as strings: Redis truncates Lua numbers to integers.
SCRIPT: Final = """
local key = KEYS[1]
local a = {}
local names = {__NAMES__}
for i, name in ipairs(names) do a[name] = ARGV[i] end
local op = a.op
local arg = tonumber(a.value)
local fixed = tonumber(a.fixed)
local burst = tonumber(a.burst)
for _, name in ipairs(names) do
  if name ~= 'op' then a[name] = tonumber(a[name]) end
end

local now = a.now
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local FIELDS = {'tat', 'pause', 'rate', 'hold', 'grow', 'granted', 'wt', 'wg', 'pt', 'pg',
  'ok', 'th', 'pok', 'pth', 'run', 'est', 'prov', 'plat', 'holdfor', 'reached', 'probes',
  'started'}
local values = redis.call('HMGET', key, unpack(FIELDS))
local s = {}
for i, name in ipairs(FIELDS) do s[name] = tonumber(values[i]) end

local adaptive = fixed == 0
local rate = fixed
if adaptive then rate = s.rate or a.start end
local spacing = 1 / rate
local size = burst
if size == 0 then size = math.max(1, rate) end
local tolerance = size * spacing
-- A new key starts empty (paced from the first call), unless adaptive without drain.
local fresh = now + tolerance
if adaptive and a.drain == 0 then fresh = now end
local tat = s.tat or fresh
local pause = s.pause or 0
local hold = s.hold or 0
local grow = s.grow or 0
local granted = s.granted or 0
local wt = s.wt or now
local wg = s.wg or granted
local pt = s.pt or wt
local pg = s.pg or wg
local ok = s.ok or 0
local th = s.th or 0
local pok = s.pok or 0
local pth = s.pth or 0
local run = s.run or 0
local est = s.est or 0          -- the limit measured at a cut; 0: none yet
local prov = s.prov or 0        -- the rate refused before anything was measured; 0: none
local plat = s.plat or a.plateau
local holdfor = s.holdfor or a.plateau
local reached = s.reached or -1 -- when the rate came up to just under est; -1: not yet
local probes = s.probes or 0
local started = s.started or -1 -- the group's first answer; -1: none yet

-- Two windows of history: what the group was granted, accepted and refused lately.
if now - wt >= a.window then
  pt, pg, pok, pth = wt, wg, ok, th
  wt, wg, ok, th = now, granted, 0, 0
  if now - pt >= 2 * a.window then pt, pg, pok, pth = wt, wg, 0, 0 end
end
if (op == 'report' or op == 'throttle') and started < 0 then started = now end

-- Is a 429 the server's limit? More than noise_share of recent calls, or a run of them.
if op == 'throttle' then
  th = th + 1
  run = run + 1
end
local function limit_speaks()
  if ok + pok == 0 then return true end  -- nothing accepted lately: the limit speaks
  local calls = math.max(ok + th + pok + pth, a.min_calls)
  return (th + pth) / calls > a.noise_share or run >= a.noise_run
end
local function bound(r) return math.min(a.ceiling, math.max(a.floor, r)) end
-- The rate the group really sent at lately (grants over the last one or two windows).
local function sent_rate()
  return (granted - pg) / math.max(now - pt, a.window / 4)
end

local function cut(wait)
  local sent = sent_rate()
  local accepted = ok + pok > 0
  local basis = rate
  if sent > 0 and sent < rate then basis = sent end
  if not accepted then
    if est > 0 then
      basis = math.min(rate, est)  -- no answer lately: keep to the limit, not to zero
    else
      basis = basis * a.max_cut    -- the start: refused before anything was accepted
    end
  end
  if est == 0 and sent > 0 then prov = math.min(rate, sent) end
  if accepted and now - started >= a.window then
    local previous = est
    est = basis
    if previous == 0 or math.abs(basis - previous) > a.confirm * previous then
      plat = a.plateau               -- another limit: start again from the first plateau
    elseif reached >= 0 then
      plat = math.min(a.max_plateau, plat * 2)  -- the same limit, met on the way back
    end
  elseif est > 0 then
    est = math.min(est, rate)
  end
  reached = -1
  holdfor = math.max(plat, wait * a.pauses_per_plateau)
  rate = bound(basis * a.decrease)
  hold = now + wait + a.reaction_window
  grow = now
  probes = 0
  run = 0
end

local function increase()
  local e = est
  local provisional = e == 0 and prov > 0
  if provisional then e = prov end
  if e == 0 then
    rate = bound(rate * a.slow_start)
    return
  end
  local target = e * (1 - a.margin)
  if rate < target * (1 - a.probe) then
    if provisional then
      rate = bound(math.min(rate * a.slow_start, target))
    else
      rate = bound(rate + (target - rate) * a.approach)  -- concave: close the gap
    end
    return
  end
  if reached < 0 then reached = now end
  if not provisional and now - reached < holdfor then
    rate = bound(math.max(rate, target))  -- just under the limit: hold there
  else
    local step = a.probe * a.probe_growth ^ probes  -- convex: creep above it
    rate = bound(rate * math.min(a.slow_start, 1 + step))
    probes = probes + 1
  end
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
elseif op == 'throttle' and adaptive and now >= hold and not limit_speaks() then
  -- Noise (a rare 429): the rate stays and nobody else waits.
  result = {'0', tostring(math.max(0, pause - now)), tostring(rate)}
elseif op == 'throttle' or op == 'busy' then
  if now + arg > pause then pause = now + arg end
  if op == 'throttle' then
    -- The server's bucket is empty: paced after the pause, not a burst.
    if not adaptive or a.drain == 1 then tat = math.max(tat, pause + tolerance) end
    if adaptive and now >= hold then cut(arg) end
  end
  result = {'1', tostring(pause - now), tostring(rate)}
elseif op == 'report' then
  ok = ok + arg
  if arg > 0 then run = 0 end
  local step = a.interval
  if est == 0 then step = a.interval / 2 end  -- nothing measured yet: twice as often
  if adaptive and now >= hold and now - grow >= step then
    if sent_rate() >= a.busy * rate then increase() end
    grow = now
  end
  result = {'1', '0', tostring(rate)}
end

redis.call('HSET', key, 'tat', tostring(tat), 'pause', tostring(pause), 'hold', tostring(hold),
  'grow', tostring(grow), 'granted', tostring(granted), 'wt', tostring(wt), 'wg', tostring(wg),
  'pt', tostring(pt), 'pg', tostring(pg), 'ok', tostring(ok), 'th', tostring(th),
  'pok', tostring(pok), 'pth', tostring(pth), 'run', tostring(run), 'est', tostring(est),
  'prov', tostring(prov), 'plat', tostring(plat), 'holdfor', tostring(holdfor),
  'reached', tostring(reached), 'probes', tostring(probes), 'started', tostring(started))
if adaptive then redis.call('HSET', key, 'rate', tostring(rate)) end
redis.call('PEXPIRE', key, a.ttl)
return result
""".replace("__NAMES__", ", ".join(f"'{name}'" for name in ARGUMENTS))
