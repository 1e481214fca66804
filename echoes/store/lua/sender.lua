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
-- Work is bounded: a few commands (one HMGET reads every field it needs, one HSET and one
-- HDEL write what changed), and once per stretch (when the oldest field frees) one HGETALL
-- of at most ttl / stretch + 1 fields.
local now = now_ms()
local key = KEYS[1]
local charge = tonumber(ARGV[3])
-- Every field this call reads, in one HMGET: the counts, the fields it frees (ARGV[7...]) and
-- the field it charges; what it changes is written back in one HSET (and one HDEL).
local names = {'#', 'o', 'g'}
for i = 7, #ARGV, 2 do
  names[#names + 1] = ARGV[i]
end
if charge > 0 then
  names[#names + 1] = ARGV[4]
end
local f = redis.call('HMGET', key, unpack(names))
local held, oldest, due = tonumber(f[1] or 0), tonumber(f[2] or 0), tonumber(f[3] or 0)
local value, changed = {}, {} -- field -> bytes it counts; fields this call changes
for j = 4, #names do
  value[names[j]] = tonumber(f[j] or 0)
end

for i = 7, #ARGV, 2 do
  local field = ARGV[i]
  local freed = math.min(value[field], tonumber(ARGV[i + 1]))
  if freed > 0 then
    value[field], changed[field] = value[field] - freed, true
    held = held - freed
  end
end

if oldest > 0 and oldest * 1000 <= now then -- a field expired: sum those still live
  held, oldest = 0, 0
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    local name = fields[i]
    local at = tonumber(name) -- nil for "#", "o", "g"
    if at and at * 1000 <= now then
      value[name], changed[name] = 0, true
    elseif at then
      local bytes = value[name] or tonumber(fields[i + 1])
      if bytes > 0 then -- not one this call freed whole (deleted below)
        held = held + bytes
        if oldest == 0 or at < oldest then
          oldest = at
        end
      end
    end
  end
end

local function save(keep)
  if held <= 0 and due <= now then
    redis.call('DEL', key)
    return
  end
  local set, gone = {'#', int(math.max(held, 0)), 'o', int(oldest), 'g', int(due)}, {}
  for name in pairs(changed) do
    if value[name] > 0 then
      set[#set + 1], set[#set + 2] = name, int(value[name])
    else
      gone[#gone + 1] = name
    end
  end
  redis.call('HSET', key, unpack(set))
  if #gone > 0 then
    redis.call('HDEL', key, unpack(gone))
  end
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

local max_bytes = tonumber(ARGV[5])
if charge > 0 and verdict == 0 and max_bytes > 0 and held + charge > max_bytes then
  verdict = 2
end
if charge > 0 and (verdict == 0 or forced) then
  local at = tonumber(ARGV[4])
  value[ARGV[4]], changed[ARGV[4]] = value[ARGV[4]] + charge, true
  held = held + charge
  if oldest == 0 or at < oldest then
    oldest = at
  end
  keep = math.max(keep, at * 1000 - now)
end
save(keep)
return {verdict, int(left), int(held), int(oldest), int(wait)}
