-- Take the oldest live records of an inbox (removing them), or replay the batch already taken
-- under the same attempt token, so a retried receive gets the same records and no others.
-- KEYS[1]  the inbox's queue: sorted set, record id -> arrival time in microseconds
-- KEYS[2]  the inbox's records: hash, record id -> "<expires ms>:<ack flag>:<record JSON>"
-- KEYS[3]  the attempt key: list, where a taken batch is parked
-- KEYS[4]  the inbox's parked records: sorted set, "<token>#<n>" -> expiry of its batch (ms)
-- ARGV[1]  most records to take
-- ARGV[2]  milliseconds a taken batch stays parked, at most (never past its first expiry)
-- ARGV[3]  most bytes of record JSON to take (at least one record is taken regardless)
-- ARGV[4]  the attempt token
-- returns  {batch as a JSON array, records in it, records left, id of each message that wants an ack...}
local parked = redis.call('LRANGE', KEYS[3], 0, -1)
if #parked > 0 then
  table.insert(parked, 3, redis.call('ZCARD', KEYS[1]))
  return parked
end

local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local want, budget = tonumber(ARGV[1]), tonumber(ARGV[3])
local out, acks, size, full = {}, {}, 0, false
-- A parked batch never outlives the records in it: a replay never returns an expired record.
local parked_until = now_ms + tonumber(ARGV[2])

while #out < want and not full do
  local ids = redis.call('ZRANGE', KEYS[1], 0, want - #out - 1)
  if #ids == 0 then break end
  local values = redis.call('HMGET', KEYS[2], unpack(ids))
  local done = {}
  for i = 1, #ids do
    local expires, flag, json
    if values[i] then
      expires, flag, json = string.match(values[i], '^(%d+):(%d):(.*)$')
      expires = tonumber(expires)
    end
    -- An expired record is dropped here even if Redis has not evicted the inbox yet.
    if json and expires > now_ms then
      if #out > 0 and size + #json > budget then
        full = true
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
  if #done > 0 then
    redis.call('ZREM', KEYS[1], unpack(done))
    redis.call('HDEL', KEYS[2], unpack(done))
  end
end

local batch = '[' .. table.concat(out, ',') .. ']'
if #out > 0 then
  -- Parking adds data, which Redis refuses when out of memory: the batch is still returned
  -- (receiving frees memory and must keep working), only without its retry copy.
  local parked_ok = redis.pcall('RPUSH', KEYS[3], batch, #out, unpack(acks))
  if not (type(parked_ok) == 'table' and parked_ok.err) then
    local ms = parked_until - now_ms
    redis.call('PEXPIRE', KEYS[3], ms)
    -- Parked records count against the inbox's cap until their batch expires.
    local score = string.format('%.0f', parked_until)
    for first = 1, #out, 1000 do
      local members = {}
      for n = first, math.min(first + 999, #out) do
        members[#members + 1] = score
        members[#members + 1] = ARGV[4] .. '#' .. n
      end
      redis.pcall('ZADD', KEYS[4], unpack(members))
    end
    if redis.call('PTTL', KEYS[4]) < ms then
      redis.call('PEXPIRE', KEYS[4], ms)
    end
  end
end
return {batch, #out, redis.call('ZCARD', KEYS[1]), unpack(acks)}
