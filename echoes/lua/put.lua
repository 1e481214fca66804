-- Store one record in an inbox, replacing the waiting record with the same id if there is one.
-- KEYS[1]  the inbox's queue: sorted set, record id -> arrival time in microseconds
-- KEYS[2]  the inbox's records: hash, record id -> "<expires ms>:<ack flag>:<record JSON>"
-- KEYS[3]  the inbox's parked records: sorted set, "<token>#<n>" -> expiry of its batch (ms)
-- ARGV[1]  record id
-- ARGV[2]  record JSON
-- ARGV[3]  ack flag: "1" if consuming this record queues an ack for its origin, else "0"
-- ARGV[4]  time to live, in milliseconds
-- ARGV[5]  channel to announce the arrival on (--wake=publish), or "" (keyspace events do it)
-- ARGV[6]  most records the inbox may hold, queued and parked (0: no limit); a replacement
--          always fits
-- returns  1 if stored, 0 if the inbox is full; Redis's error (e.g. OOM) if it could not
--          store, in which case nothing changed but the waiting copy's place in the queue
-- Safe to run twice (echoes reruns a pipeline after a dropped connection): the rerun rewrites
-- the record.
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[4])
local limit = tonumber(ARGV[6])

-- Every record lives ttl from its arrival, so the expired ones are at the head of the queue:
-- those that arrived ttl ago are candidates, checked against their own expiry (a record
-- stored under a longer --message-ttl is not dropped early). A bounded number per put keeps
-- each call short and still drops them faster than sends add records. They are only found
-- here: dropping them is the last thing the script does, because with maxmemory reached
-- Redis refuses a script's first write only if it has written nothing before (see below).
local expired = {}
local arrived_before = string.format('%.0f', (now_ms - ttl) * 1000)
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', arrived_before, 'LIMIT', 0, 64)
if #old > 0 then
  local values = redis.call('HMGET', KEYS[2], unpack(old))
  for i = 1, #old do
    local expires = values[i] and tonumber(string.match(values[i], '^(%d+):'))
    if old[i] ~= ARGV[1] and (not expires or expires <= now_ms) then
      expired[#expired + 1] = old[i]
    end
  end
end

-- The cap counts live records: queued ones, and those parked for a retry (take.lua).
if limit > 0 then
  local live = redis.call('ZCARD', KEYS[1]) - #expired
      + redis.call('ZCOUNT', KEYS[3], '(' .. now_ms, '+inf')
  if live >= limit and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
    return 0
  end
end

-- Arrival order is the score; keep it strictly increasing even within one microsecond.
local arrival = t[1] * 1000000 + t[2]
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] and tonumber(last[2]) >= arrival then
  arrival = tonumber(last[2]) + 1
end

-- Out of memory (maxmemory with noeviction) refuses writes that add data. Queue first: if the
-- record then cannot be written, a new queue entry is taken back, and a replaced record
-- keeps its old body, so a refused send never loses what was already stored.
local added = redis.pcall('ZADD', KEYS[1], string.format('%.0f', arrival), ARGV[1])
if type(added) == 'table' and added.err then
  return added
end
local value = string.format('%.0f', now_ms + ttl) .. ':' .. ARGV[3] .. ':' .. ARGV[2]
local stored = redis.pcall('HSET', KEYS[2], ARGV[1], value)
if type(stored) == 'table' and stored.err then
  if added == 1 then
    redis.call('ZREM', KEYS[1], ARGV[1])
  end
  return stored
end

-- The inbox's keys outlive their newest record, so an abandoned inbox leaves nothing behind.
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
if ARGV[5] ~= '' then
  redis.call('PUBLISH', ARGV[5], '1')
end
if #expired > 0 then
  redis.call('ZREM', KEYS[1], unpack(expired))
  redis.call('HDEL', KEYS[2], unpack(expired))
end
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms)
end
return 1
