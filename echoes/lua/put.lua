-- Store one record in an inbox, replacing the waiting record with the same id if there is one.
-- KEYS[1]  the inbox's queue: sorted set, record id -> arrival time in microseconds
-- KEYS[2]  the inbox's records: hash, record id -> "<expires ms>:<ack flag>:<record JSON>"
-- ARGV[1]  record id
-- ARGV[2]  record JSON
-- ARGV[3]  ack flag: "1" if consuming this record queues an ack for its origin, else "0"
-- ARGV[4]  time to live, in milliseconds
-- ARGV[5]  channel to announce the arrival on (--wake=publish), or "" (keyspace events do it)
-- ARGV[6]  most records the inbox may hold (0: no limit); a replacement always fits
-- returns  1 if stored, 0 if the inbox is full; Redis's error (e.g. OOM) if it could not
--          store, in which case nothing changed but the waiting copy's place in the queue
-- Safe to run twice (redis-py retries after a connection error): the rerun rewrites the record.
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[4])
local limit = tonumber(ARGV[6])

if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit
    and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
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
return 1
