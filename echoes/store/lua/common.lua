-- Shared by every script (scripts.py puts it before each for EVALSHA, and once at the top of
-- the function library): the clock, scores, parked records, batches.
--
-- A record is stored compact (records.py: "<kind><time><key>\n<name JSON>[\n<body JSON>]",
-- kind 'm', 'M' for a message that wants an ack, whose name JSON is followed by "\n" and the
-- name as key names encode it, 'a' for an ack); the scripts look inside one only for the key
-- and origin of a message that wants an ack (ack_of), and echoes renders it into the JSON a
-- receive returns.
--
-- A record of records.py's BIG_RECORD bytes or more is not in its inbox's hash: echoes stores
-- it whole in a string key of its own (its body key: the records key, ":" and a token; SET
-- at that name with ":new" for put.lua, which renames it),
-- and the hash holds its stub, the record's head ('n' for 'm', 'N' for 'M', then its time, key,
-- name JSON and for 'N' the encoded origin, as in the record) and "\n#<bytes>:<token>". Redis's
-- Lua hashes every byte of every string a script is handed (about a microsecond a kilobyte,
-- here): no script reads a big record, only its stub; echoes reads the bodies of the stubs a
-- take returns (MGET). Every value of a records hash is then small, and is read rather than
-- measured with HSTRLEN where its size counts (record_size).

-- Redis's API and the Lua functions the scripts use most, as upvalues. A function of a
-- library finds a global through its environment's __index (two table lookups and a
-- metamethod, each time), and a library loads without them (its ``redis`` then has
-- register_function, not call): bind() sets them as each script call starts (scripts.py
-- puts it first in every script).
local redis_call, redis_pcall, floor, max, min

local function bind()
  redis_call, redis_pcall = redis.call, redis.pcall
  floor, max, min = math.floor, math.max, math.min
end

-- An empty table with room for 16 elements in its array part. Lua 5.1 grows a table by
-- rehashing it at each power of two, which a list filled one element at a time pays four or
-- five times; a constructor of 16 nils makes the room at once (``#`` still counts the
-- elements set, as long as they are set in order from 1).
local function list()
  return {nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil}
end

-- Redis's clock: ms since the epoch, and the same in microseconds (record scores).
local function now_ms()
  local t = redis_call('TIME')
  local s, u = t[1] + 0, t[2] + 0
  return s * 1000 + floor(u / 1000), s * 1000000 + u
end

-- A late command (its request's deadline, in Redis's clock, has passed: echoes answered 503
-- and the client may have retried) changes nothing.
local function late(now, deadline)
  local d = deadline + 0
  if d > 0 and now > d then
    return redis.error_reply('LATE the request this command belongs to has timed out')
  end
  return nil
end

-- Numbers go to Redis as text made with '%d' (literals too: '0', not 0): Redis turns a Lua
-- number into text with '%.17g', which costs more than most commands. Text from Redis and
-- echoes becomes a number by arithmetic (``s + 0``): one strtod, where Lua 5.1's tonumber
-- makes two (it asks lua_isnumber, then lua_tonumber); tonumber only where the text may not
-- be a number.
local function int(n)
  return string.format('%d', n)
end

-- The score of a record put at ``us`` (Redis's clock, microseconds) that lives ``ttl`` ms:
-- its expiry in microseconds (no two script calls run in the same microsecond), or just past
-- ``last``, the highest score the inbox gave (its "#s"), so that a take returns records in
-- arrival order even after --message-ttl was shortened or the clock stepped back. A score
-- decodes to an expiry no earlier than the record's own: a record then lives as long as the
-- one before it.
local function score_at(us, ttl, last)
  local s = us + ttl * 1000
  if last and last >= s then
    s = last + 1
  end
  return s
end

-- When a tombstone's copy was consumed (ms), from its score: minus that time (take.lua), or
-- the time itself as an earlier version of this round wrote it.
local function consumed_at(score)
  return math.abs(score + 0)
end

-- Whether a tombstone's score (ZSCORE's reply: false for none) says its copy was consumed
-- within the dedup window (``window`` ms; a tombstone outlives it by up to an eighth, until
-- a take drops it).
local function consumed_within(score, now, window)
  return score and consumed_at(score) > now - window
end

-- Whether a reply of redis.pcall is an error (OOM: nothing was written).
local function failed(reply)
  return type(reply) == 'table' and reply.err ~= nil
end

-- Announce an arrival on ``channel`` ("": keyspace events do), as a shard channel if
-- ``kind`` is "s".
local function announce(channel, kind)
  if channel == '' then
    return
  elseif kind == 's' then
    redis_call('SPUBLISH', channel, '1')
  else
    redis_call('PUBLISH', channel, '1')
  end
end

-- A record whose score is at or below this has expired (score = expiry in microseconds).
local function expired_below(now)
  return int(now * 1000 + 999)
end

-- Whether a value of a records hash is a big record's stub ('n', 'N').
local function is_stub(value)
  local kind = string.byte(value)
  return kind == 110 or kind == 78
end

-- A stub's record size and token.
local function stub_parts(value)
  local size, token = string.match(value, '\n#(%d+):([%w_%-]+)$')
  return size + 0, token
end

-- The bytes of the record a value of a records hash stands for: itself, or its stub's count.
local function record_size(value)
  if is_stub(value) then
    return (stub_parts(value))
  end
  return #value
end

-- The body key of the stub ``value`` in the inbox whose records hash is ``records`` (keys.py).
local function body_key(records, value)
  local _, token = stub_parts(value)
  return records .. ':' .. token
end

-- How long a body outlives its record (ms), so that a take that returns the stub at the last
-- moment still finds the body when echoes reads it.
local BODY_SLACK_MS = 1000

-- Drop the bodies of the stubs among ``values`` (records that expired or were replaced).
local function drop_bodies(records, values)
  for i = 1, #values do
    if values[i] and is_stub(values[i]) then
      redis_pcall('DEL', body_key(records, values[i]))
    end
  end
end

-- An inbox of one record is a hash of that record and nothing else, which expires with it
-- (no index: one key per small inbox); a second record turns it into an indexed inbox, whose
-- hash also holds "#b" (bytes of its records), "#x" (when its keys expire, ms) and "#s" (the
-- highest score it gave). Names of these fields start with '#', which no record id does
-- (records.py). The one record, as the index's first member: its score (from its hash's
-- lifetime) and size, by its id (``first``, else read); nil if none.
local function first_record(records, now, first)
  first = first or redis_call('HKEYS', records)[1]
  if not first then
    return nil
  end
  local left = redis_call('PTTL', records)
  return first, (now + max(left, 0)) * 1000, record_size(redis_call('HGET', records, first))
end

-- Whether a field of an inbox's hash is one of its counts ("#b", "#x"), not a record.
local function count_field(field)
  return string.byte(field) == 35 -- '#'
end

-- Parked records: how many count against the cap now, and the stretches that have ended.
-- Quick (``exact`` false): the sum kept in "#", which includes batches expired meanwhile;
-- exact: the hash read whole (one field per stretch, at most --attempt-ttl / its sixteenth
-- + 1 live ones), without the stretches that have ended.
local function parked_count(parked, now, exact)
  local count = (redis_call('HGET', parked, '#') or 0) + 0
  if not exact or count == 0 then
    return count, nil
  end
  local ended = {}
  local stretches = redis_call('HGETALL', parked)
  for i = 1, #stretches, 2 do
    if stretches[i] ~= '#' and stretches[i] + 0 <= now then
      ended[#ended + 1] = stretches[i]
      count = count - (stretches[i + 1] + 0)
    end
  end
  return count, ended
end

local function forget_stretches(parked, ended, count)
  if ended and #ended > 0 then
    if count <= 0 then
      ended[#ended + 1] = '#'
    end
    redis_call('HDEL', parked, unpack(ended))
    if count > 0 then
      redis_call('HSET', parked, '#', int(count))
    end
  end
end

-- A parked batch is a list: "<count>\t<stretch ms>", then <id>, <score>, <record> of each
-- record, so it can be replayed or put back (untake.lua) without a copy made in Lua. Its
-- triples, as {id, score, record}.
local function unpark(key)
  local items = redis_call('LRANGE', key, '0', '-1')
  local count, stretch = string.match(items[1], '^(%d+)\t(%d+)$')
  local recs = {}
  for i = 2, #items, 3 do
    recs[#recs + 1] = {items[i], items[i + 1], items[i + 2]}
  end
  return count + 0, stretch, recs
end

-- Acks (records.py's ack and ack_id make the same). A message that wants one ('M') holds its
-- key and its origin's name as key names encode it, and its ack goes to the origin's inbox,
-- whose keys are those of the consumer's inbox with the origin's name in their hash tag
-- (keys.py makes every key of an inbox "<prefix>{<name>}<suffix>"). The shape of the
-- consumer's keys (take.lua's KEYS: records, index, _, parked, tombstones), found once per
-- call: the head ("<prefix>{"), the consumer's name, the four suffixes, and string's
-- functions (each a global lookup through the environment's __index otherwise).
local function ack_shape(keys)
  local sub = string.sub
  local head, own = string.match(keys[1], '^(.*{)([^{}]*)}')
  local at = #head + #own + 1 -- where each key's suffix starts
  return {head, own, sub(keys[1], at), sub(keys[2], at), sub(keys[4], at), sub(keys[5], at),
    find = string.find, sub = sub}
end

-- Whether a record (or a stub) is a message that wants an ack ('M', 'N').
local function wants_ack(record)
  local kind = string.byte(record)
  return kind == 77 or kind == 78
end

-- The ack that ``record``, a message that wants one ('M'), asks for: the origin's name
-- (encoded), the ack's id, and the ack as stored (``received``: its receivedAt, RFC 3339;
-- ``consumer``: the consumer's name JSON). nil for a record without the encoded name (as
-- this round stored them before a take queued acks itself: never released), whose ack no
-- script can address.
local function ack_of(record, shape, received, consumer)
  local find, sub = shape.find, shape.sub
  local k = find(record, '\n', 22, true) -- after the kind and the 20 characters of time
  local n = k and find(record, '\n', k + 1, true) -- after the origin's name JSON
  local e = n and find(record, '\n', n + 1, true) -- after its encoded name
  if not e then -- none: the body follows the name JSON (a JSON body holds no newline)
    return nil
  end
  local key = sub(record, 22, k - 1)
  return sub(record, n + 1, e - 1), sub(redis.sha1hex(shape[2] .. '\0' .. key), 1, 16),
    'a' .. received .. key .. '\n' .. consumer
end

-- The keys of the inbox of ``name`` (encoded), in put.lua's order, by a consumer's shape.
local function keys_of(shape, name)
  local head = shape[1]
  return {head .. name .. shape[3], head .. name .. shape[4], head .. name .. shape[5],
    head .. name .. shape[6]}
end

-- Take a waiting record out of an inbox (``keys`` in put.lua's order) by its id, if it is
-- there: 1 if it was.
local function unput(keys, id)
  local size = redis_call('HSTRLEN', keys[1], id)
  if size == 0 then
    return 0
  end
  if redis_call('ZREM', keys[2], id) == 1 then
    redis_call('HDEL', keys[1], id)
    redis_call('HINCRBY', keys[1], '#b', int(-size))
  elseif redis_call('HLEN', keys[1]) == 1 then
    redis_call('DEL', keys[1]) -- an inbox of this one record
  else
    redis_call('HDEL', keys[1], id)
  end
  return 1
end
