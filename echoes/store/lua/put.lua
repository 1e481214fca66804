-- Store one record in an inbox, replacing the waiting record with the same id if there is one,
-- unless the inbox's destination already consumed it within the dedup window.
-- KEYS[1]  records: hash, id -> record (common.lua's format), and "#b" -> bytes of the
--          records (only while indexed)
-- KEYS[2]  index: sorted set, id -> score (expiry order); absent while the inbox holds at most
--          one record, whose hash then lives exactly as long as that record
-- KEYS[3]  parked: hash, "<ms>" -> records parked in batches that expire before then, "#" ->
--          their sum: parked records count against the cap (take.lua)
-- KEYS[4]  tombstones: sorted set, id -> when its destination consumed it (take.lua)
-- ARGV[1]  record id
-- ARGV[2]  record
-- ARGV[3]  time to live, in milliseconds
-- ARGV[4]  channel to announce the arrival on (--wake=publish), or "" (keyspace events)
-- ARGV[5]  with a channel: "s" to announce on it as a shard channel (SPUBLISH), else "p"
-- ARGV[6]  most records the inbox may hold, queued and parked (0: no cap); a replacement fits
-- ARGV[7]  most bytes of records the inbox may hold (0: no cap)
-- ARGV[8]  "1" to refuse a copy its destination consumed within the dedup window, else "0"
-- ARGV[9]  the request's deadline in ms of Redis's clock (0: none): later, nothing is done
-- ARGV[10] "1" to answer 4 instead of 1 when the record replaced a waiting copy (its sender's
--          quota counts that copy already: senders.py), else "0" or absent
-- returns  1 stored, 2 a duplicate (consumed before: not stored again), 0 the inbox holds
--          too many records, 3 too many bytes, 4 stored in place of a waiting copy (with
--          ARGV[10]); an error reply (OOM, LATE) changed nothing
-- Safe to run twice: a rerun rewrites the same record, or finds it consumed (2). With
-- ARGV[10], a rerun of a put that stored its copy answers 4, as a client's resend of the same
-- copy does: the sender's quota then counts that copy once too few (README, "One sender, one
-- share").
--
-- Work is bounded by this record, never by what the inbox holds: sizes are read with
-- HSTRLEN, expiries from the index's scores, and at most 64 expired records are dropped.
local now = now_ms()
local refused = late(now, ARGV[9])
if refused then
  return refused
end
local id, record = ARGV[1], ARGV[2]
if ARGV[8] == '1' and redis.call('ZSCORE', KEYS[4], id) then
  return 2
end
local ttl, limit, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[6]), tonumber(ARGV[7])
-- old: the size of a waiting copy with this id (0: none; records are never empty).
local indexed, old, held = redis.call('EXISTS', KEYS[2]) == 1, 0, 0
if not indexed then
  held = redis.call('HLEN', KEYS[1])
end
if indexed or held > 0 then
  old = redis.call('HSTRLEN', KEYS[1], id)
end

local function announce()
  if ARGV[4] == '' then
    return
  elseif ARGV[5] == 's' then
    redis.call('SPUBLISH', ARGV[4], '1')
  else
    redis.call('PUBLISH', ARGV[4], '1')
  end
end

local function stored(reply)
  return not (type(reply) == 'table' and reply.err)
end

local function done()
  announce()
  return (old > 0 and ARGV[10] == '1') and 4 or 1
end

local count, bytes, last -- known after a promotion, else read below
if not indexed then
  if held > 1 or (held == 1 and old == 0 and redis.call('HEXISTS', KEYS[1], '#b') == 1) then
    redis.call('DEL', KEYS[1]) -- what an index that expired left: its records expired too
    held, old = 0, 0
  end
  if old > 0 or held == 0 then
    -- An inbox of at most this one record: one key.
    if max_bytes > 0 and #record > max_bytes then
      return 3
    end
    if limit > 0 and old == 0 then
      local parked, ended = parked_count(KEYS[3], now, false)
      if parked + 1 > limit then
        parked, ended = parked_count(KEYS[3], now, true)
        if parked + 1 > limit then
          return 0
        end
        forget_stretches(KEYS[3], ended, parked)
      end
    end
    local reply = redis.pcall('HSET', KEYS[1], id, record)
    if not stored(reply) then
      return reply
    end
    redis.call('PEXPIRE', KEYS[1], int(ttl))
    return done()
  end
  count, bytes, last = promote(KEYS[1], KEYS[2], now, true) -- '#b' written below
end

-- A put refused after a promotion leaves the new index to expire with the record it holds,
-- and the inbox's byte count written.
local function refuse(reply)
  if last then
    redis.call('PEXPIRE', KEYS[2], int(math.max(math.floor(last / 1000) - now, 1)))
    redis.call('HSET', KEYS[1], '#b', int(bytes))
  end
  return reply
end

-- An indexed inbox. The quick counts include expired records; only when one says the inbox
-- is full are those found (by score, without reading them) and left out.
if not count then
  count, bytes = redis.call('ZCARD', KEYS[2]), tonumber(redis.call('HGET', KEYS[1], '#b') or 0)
end
local parked = limit > 0 and parked_count(KEYS[3], now, false) or 0
local added = #record - old
local dead, dead_bytes, ended = {}, 0, nil
local function over_records()
  return limit > 0 and old == 0 and count - #dead + parked >= limit
end
local function over_bytes()
  return max_bytes > 0 and bytes - dead_bytes + added > max_bytes
end
if over_records() or over_bytes() then
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', expired_below(now), 'LIMIT', 0, 64)
  for i = 1, #expired do
    if expired[i] ~= id then
      dead[#dead + 1] = expired[i]
      dead_bytes = dead_bytes + redis.call('HSTRLEN', KEYS[1], expired[i])
    end
  end
  if limit > 0 then
    parked, ended = parked_count(KEYS[3], now, true)
  end
  if over_records() then
    return refuse(0)
  end
  if over_bytes() then
    return refuse(3)
  end
end

-- The record first, with the inbox's new byte count (one HSET: one arrival event): out of
-- memory (maxmemory, noeviction) Redis refuses the first write of a script that adds data,
-- and then nothing changed.
local total = int(bytes - dead_bytes + added)
local reply = redis.pcall('HSET', KEYS[1], id, record, '#b', total)
if not stored(reply) then
  return refuse(reply)
end
redis.call('ZADD', KEYS[2], int(score_for(KEYS[2], now + ttl, last)), id)
-- The keys outlive their newest record by an eighth (at most an hour), so that only one put in
-- that stretch pays for extending them; an abandoned inbox leaves nothing behind. A promoted
-- index has no lifetime yet, and its first record may outlive this one (a shorter ttl since).
if last or redis.call('PTTL', KEYS[2]) < ttl then
  local life = last and math.max(ttl, math.floor(last / 1000) - now) or ttl
  local lifetime = int(life + math.min(math.floor(life / 8), 3600000))
  redis.call('PEXPIRE', KEYS[2], lifetime)
  redis.call('PEXPIRE', KEYS[1], lifetime)
end
if #dead > 0 then
  redis.call('ZREM', KEYS[2], unpack(dead))
  redis.call('HDEL', KEYS[1], unpack(dead))
end
forget_stretches(KEYS[3], ended, parked)
return done()
