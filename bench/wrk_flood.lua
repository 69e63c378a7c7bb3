-- wrk script for bench/flood_bench.py: one agent POSTs requests as fast as it can.
-- BENCH_TOKEN: its JWT-SVID; BENCH_BODY: the JSON body, whose __TASK__ becomes a unique task id
-- (BENCH_NONCE-thread-counter). Counts the answers by status and keeps the last Retry-After;
-- done() prints one line, FLOOD_RESULT {...}, with latencies in microseconds.

local token = os.getenv("BENCH_TOKEN")
local body = os.getenv("BENCH_BODY")
local nonce = os.getenv("BENCH_NONCE") or "run"

wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. token
wrk.headers["Content-Type"] = "application/json"

local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local counter = 0
function request()
  counter = counter + 1
  local task = nonce .. "-" .. tostring(tid) .. "-" .. tostring(counter)
  return wrk.format(nil, nil, nil, (body:gsub("__TASK__", task)))
end

statuses = {}
retry_after = ""
function response(status, headers, _body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if status == 429 then
    retry_after = headers["Retry-After"] or headers["retry-after"] or ""
  end
end

function done(summary, latency, _requests)
  local merged, last_retry = {}, ""
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses")) do
      merged[code] = (merged[code] or 0) + n
    end
    local seen = thread:get("retry_after")
    if seen ~= "" then last_retry = seen end
  end
  local parts = {}
  for code, n in pairs(merged) do
    table.insert(parts, string.format('"%s": %d', code, n))
  end
  local e = summary.errors
  io.write(string.format(
    'FLOOD_RESULT {"requests": %d, "duration_us": %d, "statuses": {%s}, "retry_after": "%s", ' ..
    '"errors": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, table.concat(parts, ", "), last_retry,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
  io.stdout:flush()
end
