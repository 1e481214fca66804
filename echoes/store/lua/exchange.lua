-- One request's puts (one record, to one or more inboxes) and its take, in one call: on a
-- Redis that holds every inbox (one server, or a Sentinel's master; never a Cluster, where
-- the inboxes are in several slots). One call instead of one per inbox: one TIME, one set
-- of KEYS and ARGV, the record's shared arguments once.
-- KEYS     put.lua's four keys of each destination, in order, then take.lua's keys (none:
--          no take)
-- ARGV[1]  destinations (n)
-- ARGV[2..9]  put.lua's ARGV[1..3] and ARGV[6..10], which every copy shares: record id,
--          record, time to live, the caps, the dedup window, the deadline, "replaced"
-- ARGV[10] how every put announces its arrival (put.lua's ARGV[5]): "" (keyspace events: no
--          channel follows), "p" or "s"
-- ARGV[11..10+n]  with ARGV[10] not "": each destination's channel (put.lua's ARGV[4])
-- ARGV[...]  then take.lua's ARGV, when KEYS holds take.lua's keys
-- returns  {each put's reply..., and take.lua's reply when there is a take}; an error of one
--          of them is its element (the others ran)
-- Safe to run twice: each of its puts and its take is.
--
-- No allow-oom flag: out of memory, Redis refuses it whole, and echoes sends the take alone
-- (which may run then) beside the puts (refused, each a 507).
local now, us = now_ms()
local n = ARGV[1] + 0
-- The caps, the window and the deadline as numbers, made once for every put (each reads them
-- with ``+ 0``); the time to live stays text, which a put may hand to PEXPIRE.
local args = {ARGV[2], ARGV[3], ARGV[4], '', '', ARGV[5] + 0, ARGV[6] + 0, ARGV[7] + 0,
  ARGV[8] + 0, ARGV[9]}
local out = list()

local function answer(ok, reply)
  if ok then
    return reply
  elseif type(reply) == 'table' and reply.err then
    return reply
  end
  return redis.error_reply(tostring(reply))
end

local kind = ARGV[10]
args[5] = kind
local taken_from = kind == '' and 11 or 11 + n -- where take.lua's ARGV start
for i = 1, n do
  local k = 4 * i - 4
  if kind ~= '' then
    args[4] = ARGV[10 + i]
  end
  local keys = {KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]}
  out[i] = answer(pcall(put, keys, args, now, us))
end
if #KEYS > 4 * n then
  local keys, rest = {unpack(KEYS, 4 * n + 1)}, {unpack(ARGV, taken_from)}
  out[n + 1] = answer(pcall(take, keys, rest, now, us))
end
return out
