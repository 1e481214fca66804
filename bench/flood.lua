-- wrk script: POST /send as one sender ("mallory"), small bodies to one of 100 users, as fast
-- as echoes answers. Prints one JSON line when done: answers 2xx, and the others (refused).
local counter = 0

function setup(thread)
  thread:set("tag", tostring(math.random(100000, 999999)))
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"idempotencyKey":"f%s-%010d","destination":["user%d"],"body":"flood"}',
    tag, counter, counter % 100)
  return wrk.format("POST", nil, {["From"] = "mallory"}, body)
end

function done(summary, latency, requests)
  local refused = summary.errors.status
  io.write(string.format('{"2xx":%d,"non2xx":%d}\n', summary.requests - refused, refused))
end
