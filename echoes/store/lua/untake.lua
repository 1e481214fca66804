-- Put back the batch parked under an attempt token, as if it had never been taken: for a
-- waiter whose client left while its take was in Redis (nothing is taken on its behalf).
-- KEYS[1..5]  records, index, the attempt key, parked, tombstones (take.lua)
-- ARGV[1]     "1" if parked records are counted in KEYS[4] (take.lua's ARGV[4]), else "0"
-- ARGV[2]     "1" if the take queued the acks its messages asked for (take.lua's ARGV[8] above
--             0): they are taken back out of their origins' inboxes where still waiting (an
--             origin that consumed one meanwhile saw it early), else "0" or absent
-- returns     how many records went back (0: nothing parked there, or expired meanwhile,
--             or sent again since)
-- A big record's stub goes back with its body's life made its record's again (the take made
-- it the batch's).
-- Safe to run twice: the first run deletes the attempt key. Records go back whatever the
-- inbox's caps say (they were in it before; refusing them would lose them): past a cap by
-- at most that batch, until it is consumed.
if redis_call('TYPE', KEYS[3])['ok'] ~= 'list' then
  return 0 -- nothing parked there, or a batch of the first design
end
local now = now_ms()
local count, stretch, recs = unpark(KEYS[3])
local live, ids = {}, {}
for i = 1, #recs do
  ids[i] = recs[i][1]
  if floor(recs[i][2] / 1000) > now then
    live[#live + 1] = recs[i]
  end
end
redis_call('DEL', KEYS[3])
redis_call('ZREM', KEYS[5], unpack(ids))
if ARGV[2] == '1' then
  -- Each in a pcall: an origin's key of another type loses that ack's take-back, never the
  -- batch.
  local shape
  for i = 1, #recs do
    if wants_ack(recs[i][3]) then -- its ack was queued
      shape = shape or ack_shape(KEYS)
      local origin, id = ack_of(recs[i][3], shape, '', '')
      if origin then
        pcall(unput, keys_of(shape, origin), id)
      end
    end
  end
end
if ARGV[1] == '1' then
  if redis_call('HINCRBY', KEYS[4], stretch, -count) <= 0 then
    redis_call('HDEL', KEYS[4], stretch)
  end
  if redis_call('HINCRBY', KEYS[4], '#', -count) <= 0 then
    redis_call('HDEL', KEYS[4], '#')
  end
end
if #live == 0 then
  return 0
end
-- Back at their old places (their scores), in the inbox's layout for its new size.
local indexed = redis_call('EXISTS', KEYS[2]) == 1
-- A big record's body lives as long as its record again (put.lua; a pcall, as take.lua's).
local function restore_body(value, score)
  if is_stub(value) then
    local life = floor(score / 1000) - now + BODY_SLACK_MS
    redis_pcall('PEXPIRE', body_key(KEYS[1], value), int(life))
  end
end
if not indexed and #live == 1 and redis_call('HLEN', KEYS[1]) == 0 then
  redis_call('HSET', KEYS[1], live[1][1], live[1][3])
  redis_call('PEXPIRE', KEYS[1], int(floor(live[1][2] / 1000) - now))
  restore_body(live[1][3], live[1][2])
  return 1
end
local bytes, latest, back, highest = 0, 0, 0, 0
if not indexed then -- the inbox's one record joins the index
  local first, score, size = first_record(KEYS[1], now)
  if first and not count_field(first) then
    redis_call('ZADD', KEYS[2], int(score), first)
    bytes, latest, highest = size, floor(score / 1000) - now, score
  end
end
for i = 1, #live do
  -- A copy sent again meanwhile (the dedup window off) is newer than this one: it stays.
  if redis_call('HEXISTS', KEYS[1], live[i][1]) == 0 then
    redis_call('HSET', KEYS[1], live[i][1], live[i][3])
    redis_call('ZADD', KEYS[2], live[i][2], live[i][1])
    restore_body(live[i][3], live[i][2])
    bytes = bytes + record_size(live[i][3])
    latest = max(latest, floor(live[i][2] / 1000) - now)
    highest = max(highest, live[i][2] + 0)
    back = back + 1
  end
end
redis_call('HINCRBY', KEYS[1], '#b', int(bytes))
if highest > (redis_call('HGET', KEYS[1], '#s') or 0) + 0 then -- put.lua's last score
  redis_call('HSET', KEYS[1], '#s', int(highest))
end
if redis_call('PTTL', KEYS[2]) < latest then
  redis_call('PEXPIRE', KEYS[2], int(latest))
  redis_call('PEXPIRE', KEYS[1], int(latest))
  redis_call('HSET', KEYS[1], '#x', int(now + latest))
end
return back
