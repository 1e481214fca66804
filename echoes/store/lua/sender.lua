-- Count one request of a sender against its quotas (--sender-rate, --max-sender-bytes), after
-- taking off what its records freed since (consumed, or not stored after all: echoes says).
-- KEYS[1]  the sender's quota: hash in the sender's own slot, "g" -> when the next request is
--          due at the sustained rate (GCRA's theoretical arrival time, ms of Redis's clock),
--          "#" -> bytes of the sender's live records, as stored, "o" -> the earliest second
--          one of the fields below frees at, and "<s>" -> bytes of records that expire by <s>
--          (seconds since the epoch): one field per stretch of sending time (senders.py)
-- ARGV[1]  ms between requests at the sustained rate (0: no rate limit; "-": count no
--          request, only take off what ARGV[7...] freed)
-- ARGV[2]  requests in a burst
-- ARGV[3]  bytes this request stores (0: none)
-- ARGV[4]  the field they count in: the second they are all expired by
-- ARGV[5]  most bytes the sender may hold (0: no cap)
-- ARGV[6]  "1": the request is under way (its puts are in the same pipeline), so count it
--          whatever the verdict; "0": count it only if admitted
-- ARGV[7...]  pairs: a field and bytes of it that no longer live
-- returns  {verdict, requests left in the burst (may be negative), bytes held (this request's
--          included if counted), the second the oldest of them free by (0: none), ms until
--          a request is admitted again}; verdict 0 admitted, 1 too many requests, 2 too many
--          bytes (with ARGV[6] = "1": counted all the same)
-- Not safe to run twice (a rerun counts the request and its bytes again): echoes counts
-- more, never less, than the sender holds, and fields it counted expire by themselves.
--
-- Work is bounded: a few commands, and once per stretch (when the oldest field frees) one
-- HGETALL of at most ttl / stretch + 1 fields.
local now = now_ms()
local key = KEYS[1]
local f = redis.call('HMGET', key, '#', 'o', 'g')
local held, oldest, due = tonumber(f[1] or 0), tonumber(f[2] or 0), tonumber(f[3] or 0)

for i = 7, #ARGV, 2 do
  local left = tonumber(redis.call('HGET', key, ARGV[i]) or 0)
  local freed = math.min(left, tonumber(ARGV[i + 1]))
  if freed > 0 then
    if freed == left then
      redis.call('HDEL', key, ARGV[i])
    else
      redis.call('HINCRBY', key, ARGV[i], int(-freed))
    end
    held = held - freed
  end
end

if oldest > 0 and oldest * 1000 <= now then -- a field expired: sum those still live
  held, oldest = 0, 0
  local fields, dead = redis.call('HGETALL', key), {}
  for i = 1, #fields, 2 do
    local at = tonumber(fields[i]) -- nil for "#", "o", "g"
    if at and at * 1000 <= now then
      dead[#dead + 1] = fields[i]
    elseif at then
      held = held + tonumber(fields[i + 1])
      if oldest == 0 or at < oldest then
        oldest = at
      end
    end
  end
  if #dead > 0 then
    redis.call('HDEL', key, unpack(dead))
  end
end

local function save(keep)
  if held <= 0 and due <= now then
    redis.call('DEL', key)
    return
  end
  redis.call('HSET', key, '#', int(math.max(held, 0)), 'o', int(oldest), 'g', int(due))
  -- The hash outlives what it counts: its newest field, and the rate's due time.
  if keep > 0 and redis.call('PTTL', key) < keep then
    redis.call('PEXPIRE', key, int(keep + math.min(math.floor(keep / 8), 3600000)))
  end
end

local keep = due - now
if ARGV[1] == '-' then
  save(keep)
  return {0, 0, int(held), int(oldest), 0}
end

local forced = ARGV[6] == '1'
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local verdict, left, wait = 0, 0, 0
if interval > 0 then
  local next_due = math.max(due, now) + interval
  local over = next_due - now - interval * burst
  if over > 0 then
    verdict, wait = 1, math.ceil(over)
  end
  if verdict == 0 or forced then
    due = next_due
    keep = due - now
  end
  left = math.floor((interval * burst - (due - now)) / interval)
end

local charge, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[5])
if charge > 0 and verdict == 0 and max_bytes > 0 and held + charge > max_bytes then
  verdict = 2
end
if charge > 0 and (verdict == 0 or forced) then
  local at = tonumber(ARGV[4])
  redis.call('HINCRBY', key, ARGV[4], int(charge))
  held = held + charge
  if oldest == 0 or at < oldest then
    oldest = at
  end
  keep = math.max(keep, at * 1000 - now)
end
save(keep)
return {verdict, int(left), int(held), int(oldest), int(wait)}
