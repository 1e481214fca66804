-- Store one record in an inbox, replacing the waiting record with the same id if there is one.
-- KEYS[1]  the inbox's queue: sorted set, record id -> its arrival number
-- KEYS[2]  the inbox's records: hash, record id -> "<expires ms>:<ack flag>:<record JSON>",
--          and "#n" -> the last arrival number given
-- KEYS[3]  the inbox's parked records: hash, "<ms>" -> records parked in batches that expire
--          before that time, "#" -> the sum of those (take.lua)
-- ARGV[1]  record id
-- ARGV[2]  record JSON
-- ARGV[3]  ack flag: "1" if consuming this record queues an ack for its origin, else "0"
-- ARGV[4]  time to live, in milliseconds
-- ARGV[5]  channel to announce the arrival on (--wake=publish), or "" (keyspace events do it)
-- ARGV[6]  most records the inbox may hold, queued and parked (0: no limit); a replacement
--          always fits
-- ARGV[7]  with a channel: "s" to announce on it as a shard channel (SPUBLISH: Cluster),
--          else "p" (PUBLISH)
-- returns  1 if stored, 0 if the inbox is full; Redis's error (e.g. OOM) if it could not
--          store, in which case nothing changed but the waiting copy's place in the queue
-- Safe to run twice (echoes reruns a pipeline after a dropped connection): the rerun rewrites
-- the record.
--
-- Every call here costs Redis CPU on every send, so the common case is seven cheap calls:
-- TIME, two counts, the arrival number, the two writes, one PTTL. The exact count of
-- live records is only made when the quick one says the inbox may be full. Numbers go to
-- Redis as strings made with '%d': Redis turns a Lua number into text with '%.17g', which
-- costs more than the command itself.
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[4])
local limit = tonumber(ARGV[6])

-- The quick count (records queued and parked) includes records that expired and parked
-- batches that ended; only when it reaches the cap are those found and left out. Every record
-- lives ttl from its arrival, so the expired ones are at the head of the queue, checked
-- against their own expiry (a record stored under a longer --message-ttl is not dropped
-- early). They are dropped last, because with maxmemory reached Redis 6.2 refuses a script's
-- first write only if it has written nothing before.
local expired, ended = {}, nil
local queued = limit > 0 and redis.call('ZCARD', KEYS[1]) or 0
local parked = limit > 0 and tonumber(redis.call('HGET', KEYS[3], '#') or 0) or 0
if limit > 0 and queued + parked >= limit then
  local old = redis.call('ZRANGE', KEYS[1], 0, 63)
  if #old > 0 then
    local values = redis.call('HMGET', KEYS[2], unpack(old))
    for i = 1, #old do
      local expires = values[i] and tonumber(string.match(values[i], '^(%d+):'))
      if old[i] ~= ARGV[1] and (not expires or expires <= now_ms) then
        expired[#expired + 1] = old[i]
      end
    end
  end
  -- Parked batches that have all expired: their stretches of time are over.
  ended = {}
  local stretches = redis.call('HGETALL', KEYS[3])
  for i = 1, #stretches, 2 do
    if stretches[i] ~= '#' and tonumber(stretches[i]) <= now_ms then
      ended[#ended + 1] = stretches[i]
      parked = parked - tonumber(stretches[i + 1])
    end
  end
  if queued - #expired + parked >= limit and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
    return 0
  end
end

-- Arrival order is the score: a number that only grows while the inbox holds records (take.lua
-- forgets it when it empties the queue), whatever the clock does. Out of memory (maxmemory
-- with noeviction) refuses writes that add data: if the number cannot be kept, nothing
-- changed. Queue next: if the record then cannot be written, a new queue entry is taken back,
-- and a replaced record keeps its old body, so a refused send never loses what was stored.
local arrival = redis.pcall('HINCRBY', KEYS[2], '#n', '1')
if type(arrival) == 'table' and arrival.err then
  return arrival
end
local added = redis.pcall('ZADD', KEYS[1], string.format('%d', arrival), ARGV[1])
if type(added) == 'table' and added.err then
  return added
end
local value = string.format('%d:%s:', now_ms + ttl, ARGV[3]) .. ARGV[2]
local stored = redis.pcall('HSET', KEYS[2], ARGV[1], value)
if type(stored) == 'table' and stored.err then
  if added == 1 then
    redis.call('ZREM', KEYS[1], ARGV[1])
  end
  if arrival == 1 then
    redis.call('HDEL', KEYS[2], '#n')
  end
  return stored
end

-- The inbox's keys outlive their newest record, so an abandoned inbox leaves nothing behind.
-- They are given an eighth more (at most an hour), so that only one put in that stretch of
-- time pays for extending them. A first arrival made the keys: they have no lifetime yet.
if arrival == 1 or redis.call('PTTL', KEYS[1]) < ttl then
  local lifetime = string.format('%d', ttl + math.min(math.floor(ttl / 8), 3600000))
  redis.call('PEXPIRE', KEYS[1], lifetime)
  redis.call('PEXPIRE', KEYS[2], lifetime)
end
if ARGV[5] ~= '' then
  if ARGV[7] == 's' then
    redis.call('SPUBLISH', ARGV[5], '1')
  else
    redis.call('PUBLISH', ARGV[5], '1')
  end
end
if #expired > 0 then
  redis.call('ZREM', KEYS[1], unpack(expired))
  redis.call('HDEL', KEYS[2], unpack(expired))
end
if ended and #ended > 0 then
  if parked == 0 then
    ended[#ended + 1] = '#'
  end
  redis.call('HDEL', KEYS[3], unpack(ended))
  if parked > 0 then
    redis.call('HSET', KEYS[3], '#', string.format('%d', parked))
  end
end
return 1
