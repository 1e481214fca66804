-- wrk script: POST /exchange as 100 users, each request sending a small JSON body to two
-- random users, half of them with expectsAck. Prints one JSON line of results when done.
local users = 100
local counter = 0

function setup(thread)
  thread:set("tag", tostring(math.random(100000, 999999)))
end

function init(args)
  math.randomseed(os.time() + tonumber(tag or "0"))
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"idempotencyKey":"k%s-%010d","destination":["user%d","user%d"],' ..
    '"body":{"n":%d,"text":"hello there"},"expectsAck":%s}',
    tag, counter, math.random(users), math.random(users), counter,
    counter % 2 == 0 and "true" or "false")
  local headers = {["From"] = "user" .. math.random(users), ["Content-Type"] = "application/json"}
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"errors":%d,"non2xx":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
