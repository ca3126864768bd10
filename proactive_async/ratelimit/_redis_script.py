"""The Lua script behind ``SharedRateLimit``: every change of a shared limit, atomically.

One script, five operations, each one atomic step timed by one clock (the server's ``TIME``):

* ``acquire``: the weighted GCRA (a slot for ``value`` targets at the group's rate); an
  adaptive limit reserves no further ahead than ``horizon`` seconds (a caller further back
  comes back later, in a line), so a slot is paced at the rate in force when it is near: 192 calls
  queued at a new group's 100/s once held three processes at 100/s for two seconds while
  the law had doubled the rate twice;
* ``report``: ``value`` targets accepted in ``calls`` calls (the group's counters);
* ``throttle``: a 429 asking for ``value`` seconds: a fixed limit pauses the group here; an
  adaptive one only counts it and answers the reading and the law's state, for the
  process that saw it to decide (``_law.py``) and ``commit``;
* ``busy``: a 503: the group pauses ``value`` seconds;
* ``commit``: the law's new state and rate, only if its generation number is still the
  one the decision was made on (else nothing changes: the caller reads again and decides
  again), and the pause it asks for (the bucket emptied until it ends, with ``drain``).

The script holds no control law: it counts and it paces. The counters: the weight granted
and accepted so far, the weight accepted in each of the last ten tenths of a ``window``
(a ring, answered per window: scaled from the time it covers), and the calls accepted and
refused in this window and the one before with the 429s in a row (the noise filter's
counts).
"""

from __future__ import annotations

from typing import Final

__all__ = ["ARGUMENTS", "SCRIPT", "SLOTS"]

ARGUMENTS: Final = (
    "op",
    "value",
    "calls",
    "fixed",
    "burst",
    "ttl",
    "now",
    "start",
    "window",
    "horizon",
    "drain",
    "gen",
    "state",
    "rate",
    "until",
)
"""ARGV in order: the operation and its value (and the calls of a report), the limit's
shape, the clock (0: the server's), then what a ``commit`` writes."""

SLOTS: Final = 10
"""The accepted weight of the last window is kept in this many slots of window / SLOTS."""

# Numbers go back to Python as strings: Redis truncates Lua numbers to integers.
SCRIPT: Final = """
local key = KEYS[1]
local a = {}
local names = {__NAMES__}
for i, name in ipairs(names) do a[name] = ARGV[i] end
local op = a.op
for _, name in ipairs(names) do
  if name ~= 'op' and name ~= 'state' then a[name] = tonumber(a[name]) end
end
local SLOTS = __SLOTS__

local now = a.now
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
-- acquire (every call) reads only the bucket; the counters are read by the other ops.
local FIELDS = {'tat', 'pause', 'rate', 'granted', 'born', 'qat'}
if op ~= 'acquire' then
  for _, name in ipairs({'acc', 'wt', 'ok', 'th', 'pok', 'pth', 'run', 'sid', 'gen'}) do
    FIELDS[#FIELDS + 1] = name
  end
  for i = 0, SLOTS - 1 do FIELDS[#FIELDS + 1] = 's' .. i end
end
local values = redis.call('HMGET', key, unpack(FIELDS))
local s = {}
for i, name in ipairs(FIELDS) do s[name] = tonumber(values[i]) end

local adaptive = a.fixed == 0
local rate = a.fixed
if adaptive then rate = s.rate or a.start end
-- The bucket: a burst's worth of time at the rate (a second's worth without a burst).
local function tolerance_at(r)
  if a.burst == 0 then return math.max(1, r) / r end
  return a.burst / r
end
local tolerance = tolerance_at(rate)
-- A new key starts empty (paced from the first call), unless adaptive without drain.
local fresh = now + tolerance
if adaptive and a.drain == 0 then fresh = now end
local tat = s.tat or fresh
local pause = s.pause or 0
local granted = s.granted or 0
local acc = s.acc or 0
local gen = s.gen or 0
local born = s.born or now  -- the group's first call: where the law's clocks start

-- The noise filter's counts: this window and the one before, and the 429s in a row.
local wt = s.wt or now
local ok, th, pok, pth, run = s.ok or 0, s.th or 0, s.pok or 0, s.pth or 0, s.run or 0
if now - wt >= a.window then
  if now - wt < 2 * a.window then pok, pth = ok, th else pok, pth = 0, 0 end
  wt, ok, th = now, 0, 0
end
-- The weight accepted in each tenth of the last window: a ring of SLOTS slots.
local width = a.window / SLOTS
local index = math.floor(now / width)
local sid = s.sid or index
local ring = {}
for i = 0, SLOTS - 1 do ring[i] = s['s' .. i] or 0 end
if index - sid >= SLOTS then
  for i = 0, SLOTS - 1 do ring[i] = 0 end
elseif index > sid then
  for i = sid + 1, index do ring[i % SLOTS] = 0 end
end
sid = math.max(sid, index)

local function reading(status, wait)
  local recent = 0
  for i = 0, SLOTS - 1 do recent = recent + ring[i] end
  -- The ring holds the last SLOTS - 1 slots and the current one, partly gone by: per
  -- window, what it holds reads up to a slot's worth low.
  local covered = (SLOTS - 1) * width + (now - index * width)
  recent = recent * a.window / covered
  return {status, tostring(wait), tostring(rate), tostring(now), tostring(granted),
    tostring(acc), tostring(recent), tostring(ok + pok), tostring(th + pth), tostring(run),
    tostring(gen), redis.call('HGET', key, 'law') or '', tostring(born)}
end

local function pause_until(t)
  if t > pause then pause = t end
  -- The server's bucket is empty: paced after the pause, not a burst.
  if not adaptive or a.drain == 1 then tat = math.max(tat, pause + tolerance) end
end

local result
if op == 'acquire' then
  if pause > now then
    result = {'0', tostring(pause - now), tostring(rate)}
  else
    local cost = a.value / rate
    local later = math.max(tat, now) + cost
    local go = later - math.max(tolerance, cost)
    -- The slots of others ahead of this one, at most horizon seconds' worth (its own
    -- cost never counts: a call heavier than the horizon is not refused for ever).
    local ahead = a.horizon + cost
    if adaptive and go - now > ahead then
      -- Not reserved: a slot far ahead would keep the rate of now after the rate moved.
      -- Callers sent back are told to come back in a line half a slot apart (qat), not
      -- all at once: about two asks per call, not one per caller ahead.
      local qat = math.max(s.qat or 0, go) + cost / 2
      redis.call('HSET', key, 'qat', tostring(qat))
      result = {'0', tostring(qat - ahead - now), tostring(rate)}
    else
      tat = later
      granted = granted + a.value
      result = {'1', tostring(math.max(0, go - now)), tostring(rate)}
    end
  end
elseif op == 'report' then
  ok = ok + a.calls
  if a.calls > 0 then run = 0 end
  acc = acc + a.value
  ring[index % SLOTS] = ring[index % SLOTS] + a.value
  result = reading('1', 0)
elseif op == 'throttle' and not adaptive then
  pause_until(now + a.value)
  result = {'1', tostring(pause - now), tostring(rate)}
elseif op == 'throttle' then
  th = th + 1
  run = run + 1
  result = reading('1', math.max(0, pause - now))
elseif op == 'busy' then
  pause_until(now + a.value)
  result = {'1', tostring(pause - now), tostring(rate)}
elseif op == 'commit' then
  if a.gen == gen then
    gen = gen + 1
    rate = a.rate
    tolerance = tolerance_at(rate)
    redis.call('HSET', key, 'law', a.state, 'rate', tostring(rate))
    if a['until'] > 0 then pause_until(a['until']) end
    result = reading('1', math.max(0, pause - now))
  else
    result = reading('0', math.max(0, pause - now))
  end
end

if op == 'acquire' then
  -- The hot path writes only what it changed.
  redis.call('HSET', key, 'tat', tostring(tat), 'granted', tostring(granted))
  if s.born == nil then redis.call('HSET', key, 'born', tostring(born)) end
  redis.call('PEXPIRE', key, a.ttl)
  return result
end
local out = {'tat', tostring(tat), 'pause', tostring(pause), 'granted', tostring(granted),
  'acc', tostring(acc), 'wt', tostring(wt), 'ok', tostring(ok), 'th', tostring(th),
  'pok', tostring(pok), 'pth', tostring(pth), 'run', tostring(run), 'sid', tostring(sid),
  'gen', tostring(gen), 'born', tostring(born)}
for i = 0, SLOTS - 1 do
  out[#out + 1] = 's' .. i
  out[#out + 1] = tostring(ring[i])
end
redis.call('HSET', key, unpack(out))
redis.call('PEXPIRE', key, a.ttl)
return result
""".replace("__NAMES__", ", ".join(f"'{name}'" for name in ARGUMENTS)).replace(
    "__SLOTS__", str(SLOTS)
)
