-- Shared by every script (scripts.py puts it before each): the record and batch formats.
--
-- A record is stored compact, as "<kind><time><key>\n<name JSON>[\n<body JSON>]":
--   kind   'm' a message, 'M' a message that wants an ack, 'a' an ack
--   time   its sentAt or receivedAt, 20 characters (RFC 3339, to the second)
--   key    its idempotencyKey; the name is the message's origin or the ack's destination
-- and rendered here into the exact JSON a receive returns (records.py builds the same JSON
-- in Python; tests keep the two equal). Neither JSON nor keys hold a raw newline, tab or \1.
--
-- A parked batch is "\2<count>\t<stretch ms>\n" then its records joined by "\1", each
-- "<id>\t<score>\t<record>", so it can be replayed (rendered again) or put back (untake).
-- A batch parked by the first design starts with a digit instead (see replay).

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

local function render(v)
  local kind, at = string.sub(v, 1, 1), string.sub(v, 2, 21)
  local k = string.find(v, '\n', 22, true)
  local key = string.sub(v, 22, k - 1)
  if kind == 'a' then
    return '{"type":"ack","idempotencyKey":"' .. key .. '","destination":'
      .. string.sub(v, k + 1) .. ',"receivedAt":"' .. at .. '"}'
  end
  local n = string.find(v, '\n', k + 1, true)
  return '{"type":"msg","idempotencyKey":"' .. key .. '","origin":' .. string.sub(v, k + 1, n - 1)
    .. ',"body":' .. string.sub(v, n + 1) .. ',"expectsAck":'
    .. (kind == 'M' and 'true' or 'false') .. ',"sentAt":"' .. at .. '"}'
end

-- What echoes needs to queue the ack of a record that wants one: "<key>:<origin JSON>".
local function ack_entry(v)
  if string.sub(v, 1, 1) ~= 'M' then
    return nil
  end
  local k = string.find(v, '\n', 22, true)
  local n = string.find(v, '\n', k + 1, true)
  return string.sub(v, 22, k - 1) .. ':' .. string.sub(v, k + 1, n - 1)
end

-- What a consumed message frees of its sender's quota: "<sentAt>\t<bytes>\t<origin JSON>".
local function sender_share(v)
  local k = string.find(v, '\n', 22, true)
  local n = string.find(v, '\n', k + 1, true)
  return string.sub(v, 2, 21) .. '\t' .. #v .. '\t' .. string.sub(v, k + 1, n - 1)
end

-- Numbers go to Redis as text made with '%d': Redis turns a Lua number into text with
-- '%.17g', which costs more than most commands.
local function int(n)
  return string.format('%d', n)
end

-- The score of a record that expires at ``expires`` ms: expiry order is arrival order while
-- --message-ttl stays the same; ties (one millisecond) keep arrival order by the last score.
-- A score decodes to an expiry no earlier than the record's own (ttl shortened by a reload):
-- the record's value, when read, is the last word.
local function score_for(index, expires)
  local s = expires * 1000
  local last = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  if last[2] and tonumber(last[2]) >= s then
    s = tonumber(last[2]) + 1
  end
  return s
end

-- A record whose score is at or below this has expired (score = expiry ms * 1000 + tie).
local function expired_below(now)
  return int(now * 1000 + 999)
end

-- An inbox of one record is a hash of that record and nothing else, which expires with it
-- (no index: one key per small inbox); a second record turns it into an indexed inbox.
local function promote(records, index, now)
  local first = redis.call('HKEYS', records)[1]
  if not first then
    return
  end
  local left = redis.call('PTTL', records)
  redis.call('ZADD', index, int((now + math.max(left, 0)) * 1000), first)
  redis.call('HSET', records, '#b', int(redis.call('HSTRLEN', records, first)))
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

-- Split a parked batch of this design into {count, stretch, {id, score, record}...}.
local function unpark(value)
  local head = string.find(value, '\n', 1, true)
  local count, stretch = string.match(string.sub(value, 2, head - 1), '^(%d+)\t(%d+)$')
  local recs = {}
  for part in string.gmatch(string.sub(value, head + 1), '[^\1]+') do
    local a = string.find(part, '\t', 1, true)
    local b = string.find(part, '\t', a + 1, true)
    recs[#recs + 1] = {string.sub(part, 1, a - 1), string.sub(part, a + 1, b - 1), string.sub(part, b + 1)}
  end
  return tonumber(count), stretch, recs
end
