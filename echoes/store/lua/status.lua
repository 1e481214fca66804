-- What became of one copy of a message: still waiting in its destination's inbox, consumed
-- (within the dedup window), or unknown (never sent, expired, or consumed longer ago).
-- KEYS[1]  the destination's records: hash (put.lua)
-- KEYS[2]  the destination's tombstones: sorted set (take.lua)
-- ARGV[1]  the copy's record id
-- ARGV[2]  the dedup window in ms: a copy consumed longer ago is unknown
-- returns  {"waiting"}, {"consumed", ms since the epoch}, or {"unknown"}
if redis_call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return {'waiting'}
end
local consumed = redis_call('ZSCORE', KEYS[2], ARGV[1])
if consumed_within(consumed, now_ms(), ARGV[2] + 0) then
  return {'consumed', consumed_at(consumed)}
end
return {'unknown'}
