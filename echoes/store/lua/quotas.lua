-- A sender's quotas (sender.lua, and a take that counts its caller's request: take.lua).
--
-- count_request(key, A, base, now): count one request of a sender against its quotas
-- (--sender-rate, --max-sender-bytes) at ``now`` (ms of Redis's clock), after taking off
-- what its records freed since (consumed, or not stored after all: echoes says). Its
-- arguments are A[b+1...] (b: base):
-- key      the sender's quota: hash in the sender's own slot, "g" -> when the next request is
--          due at the sustained rate (GCRA's theoretical arrival time, ms of Redis's clock),
--          "#" -> bytes of the sender's live records, as stored, "o" -> the earliest second
--          one of the fields below frees at, "x" -> when the hash expires (ms), and "<s>" ->
--          bytes of records that expire by <s> (seconds since the epoch): one field per
--          stretch of sending time (senders.py)
-- A[b+1]   ms between requests at the sustained rate (0: no rate limit)
-- A[b+2]   requests in a burst
-- A[b+3]   bytes this request stores (0: none)
-- A[b+4]   the field they count in: the second they are all expired by
-- A[b+5]   most bytes the sender may hold (0: no cap)
-- A[b+6]   "1": the request is under way (its puts are in the same pipeline), so count it
--          whatever the verdict; "0": count it only if admitted; "-": no request of its own
--          (the process only reports what follows)
-- A[b+7]   requests of the sender the process admitted by itself since its last report
--          (senders.py): counted whatever the verdict (absent: 0)
-- A[b+8...] pairs: a field and bytes: more than 0, bytes of records those requests stored in
--          it; less than 0, bytes of its records that no longer live (taken off, at most
--          what the field counts)
-- returns  {verdict, requests left in the burst (may be negative), bytes held (this request's
--          included if counted), the second the oldest of them free by (0: none), ms until
--          a request is admitted again}; verdict 0 admitted, 1 too many requests, 2 too many
--          bytes (with A[b+6] = "1": counted all the same)
-- Not safe to run twice (a rerun counts the request and its bytes again): echoes counts
-- more, never less, than the sender holds, and fields it counted expire by themselves.
--
-- Work is bounded: a few commands (one HMGET reads every field it needs, one HSET and one
-- HDEL write what changed; a PEXPIRE when the hash needs a longer life), and once per
-- stretch (when the oldest field frees) one HGETALL of at most ttl / stretch + 1 fields.
-- Numbers in the reply are integer replies (Lua numbers: no text made of them).
local function count_request(key, A, base, now)
  local own = A[base + 6]
  local charge = own ~= '-' and A[base + 3] + 0 or 0
  -- Every field this call reads, in one HMGET: the counts, the fields A[b+8...] change and
  -- the field it charges; what it changes is written back in one HSET (and one HDEL).
  local names
  if #A < base + 8 then -- nothing reported (most calls): the table made at once
    names = charge > 0 and {'#', 'o', 'g', 'x', A[base + 4]} or {'#', 'o', 'g', 'x'}
  else
    names = {'#', 'o', 'g', 'x'}
    for i = base + 8, #A, 2 do
      names[#names + 1] = A[i]
    end
    if charge > 0 then
      names[#names + 1] = A[base + 4]
    end
  end
  local f = redis_call('HMGET', key, unpack(names))
  local held, oldest, due = (f[1] or 0) + 0, (f[2] or 0) + 0, (f[3] or 0) + 0
  local expires = (f[4] or 0) + 0
  if not f[4] and (f[1] or f[2] or f[3]) then -- extended by a version without "x": ask
    local left = redis_call('PTTL', key)
    expires = left >= 0 and now + left or (left == -1 and math.huge or 0)
  end
  local read_oldest, read_due = oldest, due
  local value, changed = {}, {} -- field -> bytes it counts; fields this call changes
  for j = 5, #names do
    value[names[j]] = (f[j] or 0) + 0
  end

  -- What no longer lives first; what was stored (A[b+8...]'s bytes above 0, and this
  -- request's own charge) once the held bytes are summed again below, which reads only the
  -- fields Redis holds already.
  for i = base + 8, #A, 2 do
    local field, bytes = A[i], A[i + 1] + 0
    local freed = bytes < 0 and min(value[field], -bytes) or 0
    if freed > 0 then
      value[field], changed[field] = value[field] - freed, true
      held = held - freed
    end
  end

  if oldest > 0 and oldest * 1000 <= now then -- a field expired: sum those still live
    held, oldest = 0, 0
    local fields = redis_call('HGETALL', key)
    for i = 1, #fields, 2 do
      local name = fields[i]
      local at = tonumber(name) -- nil for "#", "o", "g", "x"
      if at and at * 1000 <= now then
        value[name], changed[name] = 0, true
      elseif at then
        local bytes = value[name] or (fields[i + 1] + 0)
        if bytes > 0 then -- not one this call freed whole (deleted below)
          held = held + bytes
          if oldest == 0 or at < oldest then
            oldest = at
          end
        end
      end
    end
  end

  -- The second the newest bytes counted by this call expire by (they keep the hash). Bytes
  -- of a field whose second has passed expired before they were reported: not counted.
  local newest = 0
  local function count(field, bytes)
    local at = field + 0
    if at * 1000 <= now then
      return
    end
    value[field], changed[field] = value[field] + bytes, true
    held = held + bytes
    if oldest == 0 or at < oldest then
      oldest = at
    end
    newest = max(newest, at)
  end
  for i = base + 8, #A, 2 do
    local bytes = A[i + 1] + 0
    if bytes > 0 then
      count(A[i], bytes)
    end
  end

  local interval, burst = A[base + 1] + 0, A[base + 2] + 0
  local admitted = (A[base + 7] or 0) + 0
  if interval > 0 and admitted > 0 then -- let in already: counted whatever they come to
    due = max(due, now) + interval * admitted
  end
  local verdict, wait = 0, 0
  if own ~= '-' and interval > 0 then
    local next_due = max(due, now) + interval
    local over = next_due - now - interval * burst
    if over > 0 then
      verdict, wait = 1, math.ceil(over)
    end
    if verdict == 0 or own == '1' then
      due = next_due
    end
  end
  local left = interval > 0 and floor((interval * burst - (due - now)) / interval) or 0

  local max_bytes = A[base + 5] + 0
  if charge > 0 and verdict == 0 and max_bytes > 0 and held + charge > max_bytes then
    verdict = 2
  end
  if charge > 0 and (verdict == 0 or own == '1') then
    count(A[base + 4], charge)
  end

  -- Saved: fields unchanged are written back as read (no number turned into text for them).
  -- The hash outlives what it counts (its newest field, and the rate's due time) by an eighth
  -- (at most an hour), so that few calls pay for extending it.
  if held <= 0 and due <= now then
    redis_call('DEL', key)
  else
    local o = oldest == read_oldest and f[2] or int(oldest)
    local g = due == read_due and f[3] or int(due)
    local set, gone = {'#', int(max(held, 0)), 'o', o, 'g', g}, {}
    local keep = max(due - now, newest * 1000 - now)
    local lifetime
    if keep > 0 and expires < now + keep then
      lifetime = keep + min(floor(keep / 8), 3600000)
      set[7], set[8] = 'x', int(now + lifetime)
    end
    for name in pairs(changed) do
      if value[name] > 0 then
        set[#set + 1], set[#set + 2] = name, int(value[name])
      else
        gone[#gone + 1] = name
      end
    end
    redis_call('HSET', key, unpack(set))
    if #gone > 0 then
      redis_call('HDEL', key, unpack(gone))
    end
    if lifetime then
      redis_call('PEXPIRE', key, int(lifetime))
    end
  end
  return {verdict, left, held, oldest, wait}
end
