-- wrk script for the Custody benchmark: POST a JSON body with a bearer token.
-- BENCH_TOKEN: the bearer token; BENCH_BODY: the body (JSON unless BENCH_CONTENT_TYPE says
-- otherwise); BENCH_NONCE: a per-run prefix.
-- If the body holds __TASK__, each request gets a unique task id there (nonce-thread-counter).
-- done() prints one machine-readable line, BENCH_RESULT {...}, with latencies in microseconds,
-- and writes the latency quantiles at 0.05%, 0.15%, ... 99.95% (1000 lines, microseconds) to
-- BENCH_QUANTILES, so that several runs can be merged into one distribution.

local token = os.getenv("BENCH_TOKEN")
local body = os.getenv("BENCH_BODY")
local nonce = os.getenv("BENCH_NONCE") or "run"
local quantiles_path = os.getenv("BENCH_QUANTILES")

wrk.method = "POST"
wrk.body = body
wrk.headers["Authorization"] = "Bearer " .. token
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/json"

local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

if body:find("__TASK__", 1, true) then
  local counter = 0
  function request()
    counter = counter + 1
    local task = nonce .. "-" .. tostring(tid) .. "-" .. tostring(counter)
    return wrk.format(nil, nil, nil, (body:gsub("__TASK__", task)))
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
  io.stdout:flush()  -- the bench stops its CPU clocks at this line, before the grid below
  if quantiles_path then
    local out = assert(io.open(quantiles_path, "w"))
    for k = 0, 999 do
      out:write(string.format("%d\n", latency:percentile((k + 0.5) / 10)))
    end
    out:close()
  end
end
