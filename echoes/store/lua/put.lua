-- Store one record in an inbox, replacing the waiting record with the same id if there is one,
-- unless the inbox's destination already consumed it within the dedup window.
-- KEYS[1]  records: hash, id -> record (common.lua's format), and while indexed "#b" ->
--          bytes of the records, "#x" -> when the inbox's keys expire (ms) and "#s" -> the
--          highest score given (common.lua's score_at)
-- KEYS[2]  index: sorted set, id -> score (expiry order); absent while the inbox holds at most
--          one record, whose hash then lives exactly as long as that record
-- KEYS[3]  parked: hash, "<ms>" -> records parked in batches that expire before then, "#" ->
--          their sum: parked records count against the cap (take.lua)
-- KEYS[4]  tombstones: sorted set, id -> minus when its destination consumed it (take.lua)
-- KEYS[5]  optional: where echoes SET a big record just before (its body key, common.lua,
--          with ":new"; a life of seconds): ARGV[2] is then its stub. A stored put renames it
--          to the body key (a rerun's overwrites the same bytes), which then lives as long as
--          the record; a refused one deletes it. A rerun's SET after the first run's rename
--          makes a new key: renamed onto the waiting copy's body (the same bytes), or, where
--          the copy was consumed and its body is still there, deleted (answered 2).
-- KEYS[6]  with KEYS[5]: the body key (declared, so that a Cluster node importing the slot
--          refuses the put before it runs rather than the rename once the stub is written)
-- ARGV[1]  record id
-- ARGV[2]  record, or a big record's stub (with KEYS[5])
-- ARGV[3]  time to live, in milliseconds
-- ARGV[4]  channel to announce the arrival on (--wake=publish), or "" (keyspace events)
-- ARGV[5]  with a channel: "s" to announce on it as a shard channel (SPUBLISH), else "p"
-- ARGV[6]  most records the inbox may hold, queued and parked (0: no cap); a replacement fits
-- ARGV[7]  most bytes of records the inbox may hold (0: no cap)
-- ARGV[8]  the dedup window in ms: a copy its destination consumed within it is refused (0:
--          none is)
-- ARGV[9]  the request's deadline in ms of Redis's clock (0: none): later, nothing is done
-- ARGV[10] "1" to answer 4 instead of 1 when the record replaced a waiting copy (its sender's
--          quota counts that copy already: senders.py), else "0" or absent
-- returns  1 stored, 2 a duplicate (consumed before: not stored again), 0 the inbox holds
--          too many records, 3 too many bytes, 4 stored in place of a waiting copy (with
--          ARGV[10]); an error reply (OOM, LATE, NOBODY: KEYS[5] does not exist) changed
--          nothing but KEYS[5] (deleted)
-- Safe to run twice: a rerun rewrites the same record, or finds it consumed (2). With
-- ARGV[10], a rerun of a put that stored its copy answers 4, as a client's resend of the same
-- copy does: the sender's quota then counts that copy once too few (README, "One sender, one
-- share").
--
-- Work is bounded by this record, never by what the inbox holds: sizes come from the values
-- of the hash (each small: common.lua), expiries from the index's scores, and at most 64
-- expired records are dropped. A put to an indexed inbox is at most eight commands (TIME,
-- ZSCORE with the dedup window, ZCARD, HGET of a waiting copy, HMGET, HGET of the parked
-- count with a cap, HSET, ZADD), and two PEXPIREs when its keys need a longer life; a big
-- record's put four more (EXISTS of its SET and of its body, RENAME, PEXPIRE).
--
-- put(KEYS, ARGV[, now, us]): at ``now`` (ms) and ``us`` (microseconds) of Redis's clock
-- (common.lua's now_ms; asked if not given): exchange.lua runs several puts at one time.
-- A put refused (``reply``): the body echoes SET for it goes at once.
local function refuse(arriving, reply)
  if arriving then
    redis_call('DEL', arriving)
  end
  return reply
end

-- A big record about to be stored: its body becomes its body key (before its stub is
-- written: nothing is written if Redis refuses this). False, and the body SET for it
-- deleted, when that body key is there for another than the waiting copy: this very put
-- (its token) stored its copy before, which was consumed since; a rerun's is a duplicate, as
-- the dedup window would say, and never shares the consumed copy's body.
local function keep_body(KEYS, old_value)
  if not KEYS[5] then
    return true
  end
  local waiting = old_value and is_stub(old_value) and body_key(KEYS[1], old_value)
  if waiting ~= KEYS[6] and redis_call('EXISTS', KEYS[6]) == 1 then
    redis_call('DEL', KEYS[5])
    return false
  end
  redis_call('RENAME', KEYS[5], KEYS[6])
  return true
end

-- A record stored (its hash field set, or refused: ``reply``): its body, if it is big, lives
-- as long as it (``life`` ms, and BODY_SLACK_MS), or goes with the refusal; the body of the
-- waiting copy it replaced goes, if another (a pcall: a key not declared, which a Cluster
-- node migrating the slot may not have any more; it then expires with its record).
local function stored_body(KEYS, old_value, life, reply)
  if failed(reply) then
    return refuse(KEYS[6], reply)
  end
  if KEYS[6] then
    redis_call('PEXPIRE', KEYS[6], int(life + BODY_SLACK_MS))
  end
  if old_value and is_stub(old_value) then
    local old_body = body_key(KEYS[1], old_value)
    if old_body ~= KEYS[6] then
      redis_pcall('DEL', old_body)
    end
  end
  return nil
end

local function put(KEYS, ARGV, now, us)
  if not now then
    now, us = now_ms()
  end
  local refused = late(now, ARGV[9])
  if refused then
    return refuse(KEYS[5], refused)
  end
  local id, record, body = ARGV[1], ARGV[2], KEYS[5]
  local window = ARGV[8] + 0
  if window > 0 and consumed_within(redis_call('ZSCORE', KEYS[4], id), now, window) then
    return refuse(body, 2)
  end
  if body and redis_call('EXISTS', body) == 0 then
    return redis.error_reply('NOBODY the body of this big record was not stored')
  end
  local ttl, limit, max_bytes = ARGV[3] + 0, ARGV[6] + 0, ARGV[7] + 0
  local size = record_size(record)

  -- old: the size of a waiting copy with this id (0: none; records are never empty), and the
  -- copy itself (its body goes if it is a big record's stub of another body).
  local old, old_value = 0, nil

  -- count: records indexed (0: no index). first: the one record of an inbox without an index,
  -- which this put turns into an indexed inbox of two.
  local count, first = redis_call('ZCARD', KEYS[2]), nil
  if count > 0 then
    old_value = redis_call('HGET', KEYS[1], id)
    old = old_value and record_size(old_value) or 0
  else
    local held = redis_call('HLEN', KEYS[1])
    if held == 1 then
      first = redis_call('HKEYS', KEYS[1])[1]
      if first == id then
        old_value, first = redis_call('HGET', KEYS[1], id), nil
      elseif count_field(first) then
        redis_call('DEL', KEYS[1]) -- what an index that expired left: its records expired too
        first = nil
      end
    elseif held > 1 then
      redis_call('DEL', KEYS[1]) -- likewise
    end
    old = old_value and record_size(old_value) or 0
    if not first then
      -- An inbox of at most this one record: one key.
      if max_bytes > 0 and size > max_bytes then
        return refuse(body, 3)
      end
      if limit > 0 and old == 0 then
        local parked, ended = parked_count(KEYS[3], now, false)
        if parked + 1 > limit then
          parked, ended = parked_count(KEYS[3], now, true)
          if parked + 1 > limit then
            return refuse(body, 0)
          end
          forget_stretches(KEYS[3], ended, parked)
        end
      end
      if not keep_body(KEYS, old_value) then
        return 2
      end
      local reply = redis_pcall('HSET', KEYS[1], id, record)
      if failed(reply) then
        return stored_body(KEYS, old_value, ttl, reply)
      end
      redis_call('PEXPIRE', KEYS[1], ARGV[3])
      stored_body(KEYS, old_value, ttl)
      announce(ARGV[4], ARGV[5])
      return (old > 0 and ARGV[10] == '1') and 4 or 1
    end
  end

  -- An indexed inbox (or one becoming indexed: ``first`` joins the index with this record, and
  -- a refused put leaves the inbox as it was). The quick counts include expired records; only
  -- when one says the inbox is full are those found (by score, without reading them) and left
  -- out.
  -- last: the highest score given in this inbox (the first record's, when it joins the index).
  local bytes, expires, last, first_score, _
  if first then
    _, first_score, bytes = first_record(KEYS[1], now, first)
    count, expires, last = 1, 0, first_score -- the index has no lifetime yet
  else
    local counts = redis_call('HMGET', KEYS[1], '#b', '#x', '#s')
    bytes, last = (counts[1] or 0) + 0, counts[3] and counts[3] + 0
    if counts[2] then
      expires = counts[2] + 0
    else -- keys extended by a version without "#x": ask them
      local left = redis_call('PTTL', KEYS[2])
      expires = left >= 0 and now + left or (left == -1 and math.huge or 0)
    end
  end
  local parked = limit > 0 and parked_count(KEYS[3], now, false) or 0
  local added = size - old
  local dead, dead_values, dead_bytes, ended = {}, {}, 0, nil
  local capped = limit > 0 and old == 0 -- a replacement fits
  local over_records = capped and count + parked >= limit
  local over_bytes = max_bytes > 0 and bytes + added > max_bytes
  if not first and (over_records or over_bytes) then
    local expired = redis_call('ZRANGEBYSCORE', KEYS[2], '-inf', expired_below(now),
      'LIMIT', '0', '64')
    for i = 1, #expired do
      if expired[i] ~= id then
        dead[#dead + 1] = expired[i]
      end
    end
    if #dead > 0 then
      dead_values = redis_call('HMGET', KEYS[1], unpack(dead))
      for i = 1, #dead do
        dead_bytes = dead_bytes + (dead_values[i] and record_size(dead_values[i]) or 0)
      end
    end
    over_records = capped and count - #dead + parked >= limit
    over_bytes = max_bytes > 0 and bytes - dead_bytes + added > max_bytes
  end
  if over_records then
    parked, ended = parked_count(KEYS[3], now, true)
    over_records = count - #dead + parked >= limit
  end
  if over_records then
    return refuse(body, 0)
  end
  if over_bytes then
    return refuse(body, 3)
  end

  -- The record first, with the inbox's new counts (one HSET: one arrival event): out of
  -- memory (maxmemory, noeviction) Redis refuses the first write of a script that adds data,
  -- and then nothing changed. The keys outlive their newest record by an eighth (at most an
  -- hour), so that only one put in that stretch pays for extending them; an abandoned inbox
  -- leaves nothing behind. A record before this one may outlive it (a shorter ttl since), and
  -- this one's score then says so.
  local score = score_at(us, ttl, last)
  local fields = {id, record, '#b', int(bytes - dead_bytes + added), '#s', int(score)}
  local life = max(ttl, floor(score / 1000) - now + 1)
  local lifetime
  if expires < now + life then
    local ms = life + min(floor(life / 8), 3600000)
    lifetime, fields[7], fields[8] = int(ms), '#x', int(now + ms)
  end
  if not keep_body(KEYS, old_value) then
    return 2
  end
  local reply = redis_pcall('HSET', KEYS[1], unpack(fields))
  if failed(reply) then
    return stored_body(KEYS, old_value, life, reply)
  end
  if first then
    redis_call('ZADD', KEYS[2], int(first_score), first, fields[6], id)
  else
    redis_call('ZADD', KEYS[2], fields[6], id)
  end
  if lifetime then
    redis_call('PEXPIRE', KEYS[2], lifetime)
    redis_call('PEXPIRE', KEYS[1], lifetime)
  end
  if #dead > 0 then
    redis_call('ZREM', KEYS[2], unpack(dead))
    redis_call('HDEL', KEYS[1], unpack(dead))
    drop_bodies(KEYS[1], dead_values)
  end
  stored_body(KEYS, old_value, life)
  forget_stretches(KEYS[3], ended, parked)
  announce(ARGV[4], ARGV[5])
  return (old > 0 and ARGV[10] == '1') and 4 or 1
end
