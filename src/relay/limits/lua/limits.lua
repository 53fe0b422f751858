-- Relay limits: reserve, release and usage in one script, so each is one atomic round trip.
--
-- This is windows.py (and memory.py) in Lua; change them together. Times are integer microseconds (exact in a
-- Lua number below 2^53). Rolling and GCRA read the clock with Redis TIME, so the clocks of the callers do not
-- matter; a calendar limit's day is chosen by the caller (zoneinfo lives in Python), which passes the time
-- left until that day's reset and how long to keep its counter (a duration, so caller clock skew cannot
-- expire it early).
--
-- ARGV[1] is the operation.
--
-- reserve  ARGV[2] = cost, then 4 fields per limit, KEYS[i] its counter:
--            rolling   limit  period_us    bucket_us
--            calendar  limit  reset_in_us  expire_in_ms
--            gcra      burst  interval_us  0
--          Every limit is checked before any is changed. Answers {0, i, wait_us} when limit i refuses
--          (wait_us = -1: never), or {1, now_us, remaining_1, aux_1, ...}: aux is the bucket index (rolling),
--          0 (calendar) or the new TAT (gcra).
-- release  KEYS[1] = the token's marker, then one key per hold; 4 fields per hold: kind amount where until_us.
--          Answers 0 when the token was already released, else 1. Counters never go below zero.
-- usage    ARGV[2] is ignored, then 4 fields per limit as for reserve. Read-only.
--          Answers {now_us, used_1, remaining_1, next_us_1, full_us_1, ...}.

local NEVER = -1
local RELEASED_GRACE_MS = 86400000

local function fmt(n)
  return string.format('%d', n)
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function ceil_ms(us)
  return math.max(1, math.ceil(us / 1000))
end

-- rolling ----------------------------------------------------------------------------------------------------

local function rolling_load(key, now, period, bucket)
  local first = math.floor((now - period) / bucket)
  local flat = redis.call('HGETALL', key)
  local live, stale, used = {}, {}, 0
  for j = 1, #flat, 2 do
    local index, count = tonumber(flat[j]), tonumber(flat[j + 1])
    if index >= first then
      used = used + count
      live[#live + 1] = {index, count}
    else
      stale[#stale + 1] = flat[j]
    end
  end
  table.sort(live, function(x, y) return x[1] < y[1] end)
  return used, live, stale
end

local function rolling_leaves_at(index, period, bucket)
  return (index + 1) * bucket + period
end

local function rolling_wait(live, now, period, bucket, need)
  if need <= 0 then
    return 0
  end
  local freed = 0
  for _, entry in ipairs(live) do
    freed = freed + entry[2]
    if freed >= need then
      return math.max(0, rolling_leaves_at(entry[1], period, bucket) - now)
    end
  end
  return NEVER
end

local function rolling_full_reset(live, now, period, bucket)
  local last = nil
  for _, entry in ipairs(live) do
    if entry[2] > 0 then
      last = entry[1]
    end
  end
  if last == nil then
    return 0
  end
  return math.max(0, rolling_leaves_at(last, period, bucket) - now)
end

-- calendar ---------------------------------------------------------------------------------------------------

local function calendar_wait(count, limit, cost, reset_in)
  local need = count + cost - limit
  if need <= 0 then
    return 0
  end
  if need > count then
    return NEVER
  end
  return reset_in
end

-- gcra -------------------------------------------------------------------------------------------------------

local function gcra_tat(key, now)
  local stored = redis.call('GET', key)
  if stored then
    return tonumber(stored)
  end
  return now
end

local function gcra_remaining(tat, now, interval, burst)
  local backlog = math.max(0, tat - now)
  return math.max(0, burst - math.ceil(backlog / interval))
end

local function gcra_wait(tat, now, interval, burst, cost)
  if cost > burst then
    return NEVER
  end
  return math.max(0, math.max(0, tat - now) + (cost - burst) * interval)
end

-- operations -------------------------------------------------------------------------------------------------

local function spec(i)
  local base = 2 + (i - 1) * 4
  return ARGV[base + 1], tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
end

local function reserve()
  local cost = tonumber(ARGV[2])
  local now = now_us()
  local seen = {}
  for i = 1, #KEYS do
    local kind, a, b, c = spec(i)
    local key = KEYS[i]
    local wait
    if kind == 'rolling' then
      local used, live, stale = rolling_load(key, now, b, c)
      wait = rolling_wait(live, now, b, c, used + cost - a)
      seen[i] = {used, stale}
    elseif kind == 'calendar' then
      local count = tonumber(redis.call('GET', key) or '0')
      wait = calendar_wait(count, a, cost, b)
      seen[i] = {count}
    elseif kind == 'gcra' then
      local tat = gcra_tat(key, now)
      wait = gcra_wait(tat, now, b, a, cost)
      seen[i] = {tat}
    else
      return redis.error_reply('unknown limit kind ' .. tostring(kind))
    end
    if wait ~= 0 then
      return {0, i, wait}
    end
  end
  local out = {1, now}
  for i = 1, #KEYS do
    local kind, a, b, c = spec(i)
    local key = KEYS[i]
    if kind == 'rolling' then
      local used, stale = seen[i][1], seen[i][2]
      local index = math.floor(now / c)
      redis.call('HINCRBY', key, fmt(index), cost)
      for j = 1, #stale, 1000 do
        redis.call('HDEL', key, unpack(stale, j, math.min(j + 999, #stale)))
      end
      redis.call('PEXPIRE', key, fmt(ceil_ms(rolling_leaves_at(index, b, c) - now)))
      out[#out + 1] = a - (used + cost)
      out[#out + 1] = index
    elseif kind == 'calendar' then
      redis.call('INCRBY', key, cost)
      redis.call('PEXPIRE', key, fmt(c))
      out[#out + 1] = a - (seen[i][1] + cost)
      out[#out + 1] = 0
    else
      local tat = math.max(seen[i][1], now) + cost * b
      redis.call('SET', key, fmt(tat), 'PX', fmt(ceil_ms(tat - now)))
      out[#out + 1] = gcra_remaining(tat, now, b, a)
      out[#out + 1] = tat
    end
  end
  return out
end

local function release()
  local now = now_us()
  local holds = #KEYS - 1
  local latest = now
  for j = 1, holds do
    latest = math.max(latest, tonumber(ARGV[1 + (j - 1) * 4 + 4]))
  end
  if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', fmt(ceil_ms(latest - now) + RELEASED_GRACE_MS)) then
    return 0
  end
  for j = 1, holds do
    local base = 1 + (j - 1) * 4
    local kind, amount, where, until_us = ARGV[base + 1], tonumber(ARGV[base + 2]), ARGV[base + 3],
      tonumber(ARGV[base + 4])
    local key = KEYS[1 + j]
    if kind == 'rolling' then
      local stored = redis.call('HGET', key, where)
      if stored and now < until_us then
        local left = tonumber(stored) - amount
        if left > 0 then
          redis.call('HSET', key, where, fmt(left))
        else
          redis.call('HDEL', key, where)
        end
      end
    elseif kind == 'calendar' then
      local stored = redis.call('GET', key)
      if stored then
        redis.call('SET', key, fmt(math.max(0, tonumber(stored) - amount)), 'KEEPTTL')
      end
    elseif kind == 'gcra' then
      local stored = redis.call('GET', key)
      if stored and now < until_us then
        local tat = tonumber(stored) - amount
        if tat > now then
          redis.call('SET', key, fmt(tat), 'PX', fmt(ceil_ms(tat - now)))
        else
          redis.call('DEL', key)
        end
      end
    end
  end
  return 1
end

local function usage()
  local now = now_us()
  local out = {now}
  for i = 1, #KEYS do
    local kind, a, b, c = spec(i)
    local key = KEYS[i]
    local used, remaining, next_us, full_us
    if kind == 'rolling' then
      local live
      used, live = rolling_load(key, now, b, c)
      remaining = math.max(0, a - used)
      next_us = rolling_wait(live, now, b, c, used + 1 - a)
      full_us = rolling_full_reset(live, now, b, c)
    elseif kind == 'calendar' then
      used = tonumber(redis.call('GET', key) or '0')
      remaining = math.max(0, a - used)
      next_us = calendar_wait(used, a, 1, b)
      full_us = 0
      if used > 0 then
        full_us = b
      end
    else
      local tat = gcra_tat(key, now)
      remaining = gcra_remaining(tat, now, b, a)
      used = a - remaining
      next_us = gcra_wait(tat, now, b, a, 1)
      full_us = math.max(0, tat - now)
    end
    out[#out + 1] = used
    out[#out + 1] = remaining
    out[#out + 1] = next_us
    out[#out + 1] = full_us
  end
  return out
end

local op = ARGV[1]
if op == 'reserve' then
  return reserve()
elseif op == 'release' then
  return release()
elseif op == 'usage' then
  return usage()
end
return redis.error_reply('unknown operation ' .. tostring(op))
