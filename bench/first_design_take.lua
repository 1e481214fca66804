-- Take the oldest live records of an inbox (removing them), or replay the batch already taken
-- under the same attempt token, so a retried receive gets the same records and no others.
-- KEYS[1]  the inbox's queue: sorted set, record id -> its arrival number (put.lua)
-- KEYS[2]  the inbox's records: hash, record id -> "<expires ms>:<ack flag>:<record JSON>",
--          and "#n" -> the last arrival number, forgotten here once the queue is empty
-- KEYS[3]  the attempt key: string, where a taken batch is parked:
--          "<count>\n<id of each message that wants an ack>\n...<batch as a JSON array>"
--          (neither ids nor the batch hold a newline: names may not, JSON is compact)
-- KEYS[4]  the inbox's parked records: hash, "<ms>" -> records parked in batches that expire
--          before that time (and after the previous field's), "#" -> the sum of those
-- ARGV[1]  most records to take
-- ARGV[2]  milliseconds a taken batch stays parked, at most (never past its first expiry)
-- ARGV[3]  most bytes of record JSON to take (at least one record is taken regardless)
-- ARGV[4]  the attempt token
-- ARGV[5]  "1" if parked records count against the inbox's cap (put.lua), so are counted in
--          KEYS[4]; else "0"
-- returns  {batch as a JSON array, records in it, records left,
--           id of each message that wants an ack...}
--
-- An empty inbox costs two calls (GET, ZPOPMIN); a batch about eight.
local parked = redis.call('GET', KEYS[3])
if parked then
  local parts = {}
  for part in string.gmatch(parked, '[^\n]+') do
    parts[#parts + 1] = part
  end
  local batch = table.remove(parts)
  return {batch, tonumber(parts[1]), redis.call('ZCARD', KEYS[1]), unpack(parts, 2)}
end

local want, budget = tonumber(ARGV[1]), tonumber(ARGV[3])
local out, acks, size = {}, {}, 0
local now_ms, parked_until
local exhausted, full = false, false

while #out < want and not (exhausted or full) do
  local asked = want - #out
  local count = #out == 0 and ARGV[1] or string.format('%d', asked) -- text: see put.lua
  local popped = redis.call('ZPOPMIN', KEYS[1], count) -- {id, score, id, score, ...}
  local n = #popped / 2
  exhausted = n < asked
  if n == 0 then
    if now_ms then -- an earlier round emptied the queue exactly
      redis.call('HDEL', KEYS[2], '#n')
    end
    break
  end
  if not now_ms then
    local t = redis.call('TIME')
    now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
    -- A parked batch never outlives the records in it: a replay never returns an expired record.
    parked_until = now_ms + tonumber(ARGV[2])
  end
  local ids = {}
  for i = 1, n do
    ids[i] = popped[2 * i - 1]
  end
  local values = redis.call('HMGET', KEYS[2], unpack(ids))
  local done = {}
  for i = 1, n do
    local expires, flag, json
    if values[i] then
      expires, flag, json = string.match(values[i], '^(%d+):(%d):(.*)$')
      expires = tonumber(expires)
    end
    -- An expired record is dropped here even if Redis has not evicted the inbox yet.
    if json and expires > now_ms then
      if #out > 0 and size + #json > budget then
        -- Over the byte budget: this record and the ones after it go back where they were.
        full = true
        local back = {}
        for j = i, n do
          back[#back + 1] = popped[2 * j]
          back[#back + 1] = ids[j]
        end
        redis.call('ZADD', KEYS[1], unpack(back))
        break
      end
      out[#out + 1] = json
      size = size + #json + 1
      if flag == '1' then
        acks[#acks + 1] = ids[i]
      end
      parked_until = math.min(parked_until, expires)
    end
    done[#done + 1] = ids[i]
  end
  if exhausted and not full then
    done[#done + 1] = '#n'
  end
  redis.call('HDEL', KEYS[2], unpack(done))
end

-- Whatever is still queued: nothing when the last pop came back short, unless records went back.
local remaining = 0
if full or not exhausted then
  remaining = redis.call('ZCARD', KEYS[1])
end
local batch = '[' .. table.concat(out, ',') .. ']'
if #out > 0 then
  -- Parking adds data, which Redis refuses when out of memory: the batch is still returned
  -- (receiving frees memory and must keep working), only without its retry copy.
  local ms = parked_until - now_ms
  local listed = #acks > 0 and (table.concat(acks, '\n') .. '\n') or ''
  local value = string.format('%d\n', #out) .. listed .. batch
  local parked_ok = redis.pcall('SET', KEYS[3], value, 'PX', string.format('%d', ms))
  if ARGV[5] == '1' and not (type(parked_ok) == 'table' and parked_ok.err) then
    -- Parked records count against the inbox's cap until the end of the stretch of time (a
    -- sixteenth of the attempt lifetime, at least a second) in which their batch expires.
    local stretch = math.max(1000, math.floor(tonumber(ARGV[2]) / 16))
    local ends = math.ceil(parked_until / stretch) * stretch
    local count = string.format('%d', #out)
    redis.pcall('HINCRBY', KEYS[4], string.format('%d', ends), count)
    redis.pcall('HINCRBY', KEYS[4], '#', count)
    -- As for the inbox's keys (put.lua): an eighth more, so that few takes extend it.
    local lives = ends - now_ms
    if redis.call('PTTL', KEYS[4]) < lives then
      local lifetime = lives + math.min(math.floor(lives / 8), 3600000)
      redis.call('PEXPIRE', KEYS[4], string.format('%d', lifetime))
    end
  end
end
return {batch, #out, remaining, unpack(acks)}
