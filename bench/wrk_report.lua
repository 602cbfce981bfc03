-- wrk script for bench/run.py. It builds one static request from BENCH_* environment
-- variables, counts the responses that complete inside the measurement window, and when wrk
-- ends prints one machine-readable line: "BENCH_JSON {...}".
--
--   BENCH_METHOD        HTTP method (default GET)
--   BENCH_BODY          request body (optional)
--   BENCH_CONTENT_TYPE  Content-Type header (optional)
--   BENCH_TOKEN         bearer token for the Authorization header (optional)
--   BENCH_MEASURE_FROM  seconds from the start that are warm-up: responses before it are
--                       not counted (default 0). One wrk process covers warm-up and
--                       measurement, so the server is in steady state when counting starts.
--   BENCH_DELAY_MS      pause before each request on a connection (optional; a light probe)
--   BENCH_REFRESH_TOKENS  comma-separated refresh tokens, one per connection and one more
--                       (optional): each request then spends one, and the token its answer
--                       carries replaces it, as a client rotating its refresh token does. wrk
--                       calls the first thread's request() once before the run to check it:
--                       the extra token is for that call.
--   BENCH_THREADS       wrk's thread count, to share the refresh tokens among the threads
--
-- Every status is counted here, so any non-2xx response (3xx included) is visible; wrk's
-- own counter only sees statuses >= 400. Latency percentiles are wrk's and cover the whole
-- run, warm-up included: wrk does not let a script see per-request latency.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("bench_timespec")

local function now()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) + tonumber(timespec.tv_nsec) * 1e-9
end

local body = os.getenv("BENCH_BODY") or ""
local content_type = os.getenv("BENCH_CONTENT_TYPE") or ""
local token = os.getenv("BENCH_TOKEN") or ""
local measure_from = tonumber(os.getenv("BENCH_MEASURE_FROM") or "") or 0
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "")

-- A static request: wrk formats it once per thread and reuses the buffer.
wrk.method = os.getenv("BENCH_METHOD") or "GET"
if body ~= "" then
  wrk.body = body
end
if content_type ~= "" then
  wrk.headers["Content-Type"] = content_type
end
if token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

if delay_ms and delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

local threads = {}
local refresh_tokens = {}
for t in string.gmatch(os.getenv("BENCH_REFRESH_TOKENS") or "", "[^,]+") do
  table.insert(refresh_tokens, t)
end
local thread_count = tonumber(os.getenv("BENCH_THREADS") or "") or 1

function setup(thread)
  table.insert(threads, thread)
  -- Each token goes to one thread only: two requests spending one token would be reuse.
  local mine, index = {}, #threads
  for i, t in ipairs(refresh_tokens) do
    if (i == 1 and index == 1) or (i > 1 and (i - 2) % thread_count == index - 1) then
      table.insert(mine, t)
    end
  end
  thread:set("tokens", table.concat(mine, ","))
end

-- Per-thread state (each wrk thread runs its own copy of this script).
local counting_from

local pool

function init(args)
  counting_from = now() + measure_from
  counted = 0
  statuses = {}
  pool = {}
  for t in string.gmatch(tokens or "", "[^,]+") do
    table.insert(pool, t)
  end
end

function response(status, headers, response_body)
  if now() >= counting_from then
    counted = counted + 1
    statuses[status] = (statuses[status] or 0) + 1
  end
  if #refresh_tokens > 0 and status == 200 then
    local next_token = string.match(response_body, '"refresh_token":"([^"]+)"')
    if next_token then
      table.insert(pool, next_token)
    end
  end
end

if #refresh_tokens > 0 then
  function request()
    -- A failed answer loses its token: later requests then send none and count as errors.
    local t = table.remove(pool) or "none-left"
    return wrk.format(nil, nil, nil, '{"refresh_token":"' .. t .. '"}')
  end
end

-- JSON has no NaN or infinity; wrk's statistics are NaN when nothing completed.
local function finite(x)
  if x ~= x or x == math.huge or x == -math.huge then
    return 0
  end
  return x
end

function done(summary, latency, requests)
  local total, merged = 0, {}
  for _, thread in ipairs(threads) do
    total = total + (thread:get("counted") or 0)
    for code, n in pairs(thread:get("statuses") or {}) do
      merged[code] = (merged[code] or 0) + n
    end
  end
  local status_parts = {}
  for code, n in pairs(merged) do
    table.insert(status_parts, string.format('"%d": %d', code, n))
  end
  local e = summary.errors
  io.write("BENCH_JSON " .. string.format(
    '{"duration_us": %d, "requests": %d, "measure_from_s": %.3f, "measured_requests": %d, '
      .. '"statuses": {%s}, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"mean": %.1f, "max": %.1f, "p50": %.1f, "p90": %.1f, "p99": %.1f}}\n',
    summary.duration, summary.requests, measure_from, total,
    table.concat(status_parts, ", "),
    e.connect, e.read, e.write, e.status, e.timeout,
    finite(latency.mean), finite(latency.max), finite(latency:percentile(50)),
    finite(latency:percentile(90)), finite(latency:percentile(99))
  ))
end
