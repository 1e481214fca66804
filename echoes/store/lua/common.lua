-- Shared by every script (scripts.py puts it before each): scores, parked records, batches.
--
-- A record is stored compact (records.py: "<kind><time><key>\n<name JSON>[\n<body JSON>]",
-- kind 'm', 'M' for a message that wants an ack, 'a' for an ack); the scripts never look
-- inside one but for its size, and echoes renders it into the JSON a receive returns.

local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- A late command (its request's deadline, in Redis's clock, has passed: echoes answered 503
-- and the client may have retried) changes nothing.
local function late(now, deadline)
  local d = tonumber(deadline)
  if d > 0 and now > d then
    return redis.error_reply('LATE the request this command belongs to has timed out')
  end
  return nil
end

-- Numbers go to Redis as text made with '%d': Redis turns a Lua number into text with
-- '%.17g', which costs more than most commands.
local function int(n)
  return string.format('%d', n)
end

-- The score of a record that expires at ``expires`` ms: expiry order is arrival order while
-- --message-ttl stays the same; ties (one millisecond) keep arrival order by the last score
-- (``last``, when the caller knows it, else read). A score decodes to an expiry no earlier
-- than the record's own (ttl shortened by a reload): the record's value, when read, is the
-- last word.
local function score_for(index, expires, last)
  local s = expires * 1000
  if last == nil then
    last = tonumber(redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')[2] or 0)
  end
  if last >= s then
    s = last + 1
  end
  return s
end

-- A record whose score is at or below this has expired (score = expiry ms * 1000 + tie).
local function expired_below(now)
  return int(now * 1000 + 999)
end

-- An inbox of one record is a hash of that record and nothing else, which expires with it
-- (no index: one key per small inbox); a second record turns it into an indexed inbox.
-- Returns the records indexed (0 or 1), their bytes, and the score of the last (0: none).
-- The byte count is written unless ``later`` (the caller writes it with what it adds).
local function promote(records, index, now, later)
  local first = redis.call('HKEYS', records)[1]
  if not first then
    return 0, 0, 0
  end
  local left = redis.call('PTTL', records)
  local score = (now + math.max(left, 0)) * 1000
  local bytes = redis.call('HSTRLEN', records, first)
  redis.call('ZADD', index, int(score), first)
  if not later then
    redis.call('HSET', records, '#b', int(bytes))
  end
  return 1, bytes, score
end

-- Parked records: how many count against the cap now, and the stretches that have ended.
local function parked_count(parked, now, exact)
  local count = tonumber(redis.call('HGET', parked, '#') or 0)
  if not exact or count == 0 then
    return count, nil
  end
  local ended = {}
  local stretches = redis.call('HGETALL', parked)
  for i = 1, #stretches, 2 do
    if stretches[i] ~= '#' and tonumber(stretches[i]) <= now then
      ended[#ended + 1] = stretches[i]
      count = count - tonumber(stretches[i + 1])
    end
  end
  return count, ended
end

local function forget_stretches(parked, ended, count)
  if ended and #ended > 0 then
    if count <= 0 then
      ended[#ended + 1] = '#'
    end
    redis.call('HDEL', parked, unpack(ended))
    if count > 0 then
      redis.call('HSET', parked, '#', int(count))
    end
  end
end

-- A parked batch is a list: "<count>\t<stretch ms>", then <id>, <score>, <record> of each
-- record, so it can be replayed or put back (untake.lua) without a copy made in Lua. Its
-- triples, as {id, score, record}.
local function unpark(key)
  local items = redis.call('LRANGE', key, 0, -1)
  local count, stretch = string.match(items[1], '^(%d+)\t(%d+)$')
  local recs = {}
  for i = 2, #items, 3 do
    recs[#recs + 1] = {items[i], items[i + 1], items[i + 2]}
  end
  return tonumber(count), stretch, recs
end
