-- Take the oldest live records of an inbox (removing them), or replay the batch already taken
-- under the same attempt token, so a retried receive gets the same records and no others.
-- KEYS[1]  records: hash (put.lua)
-- KEYS[2]  index: sorted set (put.lua)
-- KEYS[3]  the attempt key: list, where a taken batch is parked (common.lua's unpark)
-- KEYS[4]  parked: hash (put.lua)
-- KEYS[5]  tombstones: sorted set, id -> minus when it was consumed (ms), for the dedup
--          window (common.lua's consumed_at)
-- ARGV[1]  most records to take (a whole number, at least 1)
-- ARGV[2]  milliseconds a taken batch stays parked, at most (never past its first expiry)
-- ARGV[3]  most bytes of records to take, as rendered (at least one record is taken)
-- ARGV[4]  "1" if parked records count against the inbox's cap (counted in KEYS[4]), else "0"
-- ARGV[5]  the dedup window in ms (0: no tombstones)
-- ARGV[6]  the request's deadline in ms of Redis's clock (0: none): later, nothing is taken
-- ARGV[7]  bytes a record gains when rendered, at most (records.py)
-- ARGV[8]  ms an ack lives: the take queues the acks its messages ask for in their origins'
--          inboxes (one Redis holds every inbox), or "0": it returns them, for echoes to
--          queue (a Cluster)
-- ARGV[9]  the acks' receivedAt (RFC 3339, echoes' clock)
-- ARGV[10] the caller's name as JSON (an ack's destination)
-- ARGV[11] the caller's inbox's channel with --wake=publish (its origins' are alike), or ""
-- KEYS[6], ARGV[12...]  optional: the caller's quota key and sender.lua's ARGV[1...]: the take
--          also counts the caller's request once it is done (quotas.lua; one script call
--          instead of two, as the caller's quota is in its inbox's slot), and returns {the
--          take's reply, sender.lua's reply, or 0 if Redis refused the count (out of
--          memory)}; an error reply (LATE) has no quota reply, and the request was not
--          counted
-- returns  {"2", records taken, records left, acks queued, acks that could not be (the
--          batch stands without them), each record as stored..., and with
--          ARGV[8] "0" the origin's encoded name, the id and the record of each ack to
--          queue}, "3" for the same of a replay (its acks queued again: the dedup window
--          keeps an ack its origin consumed from coming twice), or for a batch the first
--          design parked, {"1", batch as a JSON array, records in it, records left,
--          "m:<key>:<origin>" of each message that wants an ack...}
-- A big record is returned as its stub (common.lua), whose body then lives as long as the
-- parked batch, and at least a second past the deadline: echoes reads it next (MGET).
-- Safe to run twice: a rerun under the same token replays the parked batch; with KEYS[6] it
-- counts the request again (as a rerun of sender.lua does: more, never less).
--
-- Work is bounded by what the take returns: an empty inbox costs two commands (TYPE, EXISTS;
-- in an exchange TYPE, ZRANGE, HLEN);
-- sizes come from the inbox's byte count, or from the records it returns, read in order
-- while they fit (every value of the hash is small: common.lua), so at most one record it
-- leaves is read; the ids and scores of at most ARGV[1] records are (and the values of 64
-- expired ones, when there are some).

-- The acks that the records out[6...] (as stored) ask for, received at ARGV[9]: queued in
-- their origins' inboxes (ARGV[8] above 0) and counted in out[4] (out[5]: those that failed,
-- a late replay or an origin's key of another type), or appended to ``out`` for echoes to
-- queue. An ack is a put.lua put of no cap, under the dedup window: a replay does not queue
-- one its origin consumed already. Out of memory, acks are written all the same (a take runs
-- with allow-oom, as it frees the records): about 100 bytes each, fewer than it frees.
local function queue_acks(KEYS, ARGV, now, us, out)
  local shape, args, head, tail
  for i = 6, #out do
    local record = out[i]
    if wants_ack(record) then
      if not shape then
        shape = ack_shape(KEYS)
        -- put.lua's ARGV: id, record, ttl, channel, how to announce, no caps, the window,
        -- the deadline.
        args = {'', '', ARGV[8], '', ARGV[11] ~= '' and 'p' or '', 0, 0, ARGV[5] + 0, ARGV[6], '0'}
        if ARGV[11] ~= '' then -- an origin's channel is the caller's, with its name
          head, tail = string.match(ARGV[11], '^(.*{)[^{}]*(}[^{}]*)$')
        end
      end
      local origin, id, ack = ack_of(record, shape, ARGV[9], ARGV[10])
      if not origin then -- no ack can be addressed: none is queued
      elseif ARGV[8] == '0' then
        out[#out + 1], out[#out + 2], out[#out + 3] = origin, id, ack
      else
        args[1], args[2] = id, ack
        if head then
          args[4] = head .. origin .. tail
        end
        local ok, reply = pcall(put, keys_of(shape, origin), args, now, us)
        if ok and not failed(reply) then
          out[4] = out[4] + 1
        else
          out[5] = out[5] + 1
        end
      end
    end
  end
  return out
end

local function take_records(KEYS, ARGV, now, us)
  local parked = redis_call('TYPE', KEYS[3])['ok']
  if parked == 'list' then -- taken before under this token: the same records again
    local count, _, recs = unpark(KEYS[3])
    local left = redis_call('ZCARD', KEYS[2])
    if left == 0 and redis_call('HLEN', KEYS[1]) == 1 then -- no index: one record, or none
      left = count_field(redis_call('HKEYS', KEYS[1])[1]) and 0 or 1
    end
    local out = list()
    out[1], out[2], out[3], out[4], out[5] = '3', count, left, 0, 0
    for i = 1, #recs do
      out[i + 5] = recs[i][3]
    end
    if not now then
      now, us = now_ms()
    end
    return queue_acks(KEYS, ARGV, now, us, out)
  elseif parked == 'string' then -- parked by the first design: "<count>\n<ids>\n<batch JSON>"
    local parts = {}
    for part in string.gmatch(redis_call('GET', KEYS[3]), '[^\n]+') do
      parts[#parts + 1] = part
    end
    local batch = table.remove(parts)
    return {'1', batch, parts[1] + 0, redis_call('ZCARD', KEYS[2]), unpack(parts, 2)}
  end
  -- Alone, a take of an empty inbox is two commands; in an exchange (``now`` given, after
  -- its puts), whose inbox is seldom empty, the index is read at once.
  if not now then
    if redis_call('EXISTS', KEYS[1]) == 0 then
      return {'2', 0, 0, 0, 0}
    end
    now, us = now_ms()
  end
  local refused = late(now, ARGV[6])
  if refused then
    return refused
  end
  -- At least one record, a whole number of them (echoes validates it: a guard for others).
  local want = max(floor(ARGV[1] + 0), 1)
  local budget, overhead = ARGV[3] + 0, ARGV[7] + 0
  local taken = list() -- id, score, record of each record taken, in score order (as parked)
  local remaining = 0

  -- The oldest records, by rank (none: no index).
  local head = redis_call('ZRANGE', KEYS[2], '0', int(want - 1), 'WITHSCORES')
  if #head == 0 then
    -- An inbox of one record: the hash lives exactly as long as it.
    local held = redis_call('HLEN', KEYS[1])
    if held == 1 then
      local fields = redis_call('HGETALL', KEYS[1])
      if not count_field(fields[1]) then -- not what an index that expired left
        local left = redis_call('PTTL', KEYS[1])
        taken = {fields[1], int((now + max(left, 0)) * 1000), fields[2]}
      end
    end
    if held > 0 then
      redis_call('DEL', KEYS[1]) -- taken, or what an index that expired left (expired too)
    end
  else
    -- When none of the oldest has expired (scores are expiries), they are the ones to take,
    -- and fewer than asked for are the whole inbox. Else records expired at the head go with
    -- this take, at most 64 (put.lua drops them when full), and the live ones are found by
    -- score.
    local below = now * 1000 + 999 -- expired_below(now), as a number
    local live, dead, whole = head, {}, #head / 2 < want
    if head[2] + 0 <= below then
      dead = redis_call('ZRANGEBYSCORE', KEYS[2], '-inf', int(below), 'LIMIT', '0', '64')
      live = redis_call('ZRANGEBYSCORE', KEYS[2], '(' .. int(below), '+inf', 'WITHSCORES',
        'LIMIT', '0', int(want))
      whole = false
    end
    local nlive = #live / 2
    local bytes = (redis_call('HGET', KEYS[1], '#b') or 0) + 0
    local fit, values = nlive, nil
    if bytes + nlive * overhead > budget then -- not all of them fit: read them while they do
      local size = 0
      fit, values = 0, list()
      for i = 1, nlive do
        local value = redis_call('HGET', KEYS[1], live[2 * i - 1])
        local s = (value and record_size(value) or 0) + overhead
        if fit > 0 and size + s > budget then
          break
        end
        size, fit = size + s, fit + 1
        values[fit] = value
      end
    end
    local ids = list()
    for i = 1, fit do
      ids[i] = live[2 * i - 1]
    end
    values = values or (fit > 0 and redis_call('HMGET', KEYS[1], unpack(ids)) or {})
    local freed = 0
    for i = 1, fit do
      if values[i] then
        local at = #taken
        taken[at + 1], taken[at + 2], taken[at + 3] = ids[i], live[2 * i], values[i]
        freed = freed + record_size(values[i])
      end
    end
    if whole and fit == nlive then -- everything in the inbox is taken or expired
      redis_call('DEL', KEYS[1], KEYS[2]) -- the byte count too
    else
      local gone = list()
      if #dead > 0 then
        local dead_values = redis_call('HMGET', KEYS[1], unpack(dead))
        for i = 1, #dead do
          gone[i] = dead[i]
          freed = freed + (dead_values[i] and record_size(dead_values[i]) or 0)
        end
        drop_bodies(KEYS[1], dead_values)
      end
      for i = 1, fit do
        gone[#gone + 1] = ids[i]
      end
      if #gone > 0 then
        redis_call('ZREM', KEYS[2], unpack(gone))
        redis_call('HDEL', KEYS[1], unpack(gone))
      end
      remaining = whole and nlive - fit or redis_call('ZCARD', KEYS[2])
      if remaining == 0 then
        redis_call('DEL', KEYS[1], KEYS[2]) -- the byte count, and a sorted set left empty
      elseif freed > 0 then
        redis_call('HSET', KEYS[1], '#b', int(max(bytes - freed, 0)))
      end
    end
  end

  -- A big record whose body is gone (Redis evicted it, or a resharding lost it) has left the
  -- inbox as an expired one does: it is neither returned, nor parked, nor acked. (EXISTS in
  -- a pcall: a key not declared; a refusal keeps the record, and echoes' MGET decides.)
  for i = #taken - 2, 1, -3 do
    local value = taken[i + 2]
    if is_stub(value) and redis_pcall('EXISTS', body_key(KEYS[1], value)) == 0 then
      table.remove(taken, i + 2)
      table.remove(taken, i + 1)
      table.remove(taken, i)
    end
  end
  local n = #taken / 3
  local out = list()
  out[1], out[2], out[3], out[4], out[5] = '2', n, remaining, 0, 0
  if n == 0 then
    return out
  end
  for i = 1, n do
    out[i + 5] = taken[3 * i]
  end
  -- A parked batch never outlives the records in it: a replay never returns an expired one.
  -- The first has the lowest score (scores are expiries), so it expires first.
  local attempt_ms = ARGV[2] + 0
  local parked_until = min(now + attempt_ms, floor(taken[2] / 1000))
  local hold
  for i = 1, n do
    -- A big record's body lives as long as the batch, and past the deadline (a pcall: a key
    -- not declared, which a Cluster node migrating the slot may not have any more).
    if is_stub(out[i + 5]) then
      hold = hold or int(max(parked_until, ARGV[6] + 0) - now + BODY_SLACK_MS)
      redis_pcall('PEXPIRE', body_key(KEYS[1], out[i + 5]), hold)
    end
  end

  -- Consumed: a resend of any of these within the dedup window is a duplicate (put.lua).
  -- Scored by minus the time (newest first): a set of up to 128 is a listpack, and ZADD
  -- inserts at the head instead of walking past every older tombstone. The window's old ones
  -- are at the tail: a take drops them once the oldest is an eighth of a window past it (most
  -- takes only look), at most 64 more than it adds, so that its work stays bounded by what it
  -- returns and the drops keep up; put.lua and status.lua read a tombstone's age. Each
  -- command is a pcall: a tombstone set that is not one (another program's key) loses the
  -- dedup window of this inbox, never the batch taken.
  local window = ARGV[5] + 0
  if window > 0 then
    local members = list()
    local at = int(-now)
    for i = 1, n do
      members[2 * i - 1] = at
      members[2 * i] = taken[3 * i - 2]
    end
    redis_pcall('ZADD', KEYS[5], unpack(members))
    -- The oldest if it is an eighth of a window past it (scored above minus that time), found
    -- at the tail by score: no score is made text for the reply (a '%.17g' each).
    local past = '(' .. int(window + floor(window / 8) - now)
    local oldest = redis_pcall('ZRANGE', KEYS[5], '(0', past, 'BYSCORE', 'REV', 'LIMIT', '0', '1')
    if oldest[1] then
      local most = int(-(64 + 2 * n))
      local bound = redis_pcall('ZRANGE', KEYS[5], most, most, 'WITHSCORES')[2]
      if bound and consumed_at(bound) <= now - window then -- the oldest of them all past it
        redis_pcall('ZREMRANGEBYRANK', KEYS[5], most, '-1')
      else -- fewer than that many past it
        redis_pcall('ZREMRANGEBYSCORE', KEYS[5], '(' .. int(window - now), '+inf')
      end
    end
    redis_pcall('PEXPIRE', KEYS[5], ARGV[5])
  end

  -- Parking adds data, which Redis refuses when out of memory: the batch is still returned
  -- (receiving frees memory and must keep working), only without its retry copy. Parked
  -- records count against the cap until the end of the stretch of time (a sixteenth of the
  -- attempt lifetime, at least a second) in which their batch expires.
  local stretch = max(1000, floor(attempt_ms / 16))
  local ends = math.ceil(parked_until / stretch) * stretch
  local count, ends_text = int(n), int(ends)
  local ok = redis_pcall('RPUSH', KEYS[3], count .. '\t' .. ends_text, unpack(taken))
  if not (type(ok) == 'table' and ok.err) then
    redis_call('PEXPIRE', KEYS[3], int(max(parked_until - now, 1)))
    if ARGV[4] == '1' then
      -- A stretch counted before (its field held more than this batch) was given a life
      -- past its end then, which no command shortens since: only a new stretch asks PTTL.
      local new = redis_pcall('HINCRBY', KEYS[4], ends_text, count) == n
      redis_pcall('HINCRBY', KEYS[4], '#', count)
      -- As for the inbox's keys (put.lua): an eighth more, so that few takes extend it.
      local lives = ends - now
      if new and redis_call('PTTL', KEYS[4]) < lives then
        redis_call('PEXPIRE', KEYS[4], int(lives + min(floor(lives / 8), 3600000)))
      end
    end
  end
  return queue_acks(KEYS, ARGV, now, us, out)
end

-- take(KEYS, ARGV[, now, us]): at ``now`` (ms of Redis's clock) and ``us`` (microseconds;
-- both asked when needed if not given).
local function take(KEYS, ARGV, now, us)
  if not KEYS[6] then
    return take_records(KEYS, ARGV, now, us)
  end
  -- The take first: the count's HSET adds data, which Redis refuses when out of memory as a
  -- script's first write (EVALSHA, Redis 6.2), and a take must work then. A count refused
  -- is a 0 in its place: the request went uncounted (echoes counts it when admitted next).
  if not now then
    now, us = now_ms()
  end
  local reply = take_records(KEYS, ARGV, now, us)
  if type(reply) == 'table' and reply.err then
    return reply
  end
  local ok, counted = pcall(count_request, KEYS[6], ARGV, 11, now)
  return {reply, ok and counted or 0}
end
