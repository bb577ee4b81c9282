-- wrk script for benches/envoy-load: rotates through N distinct x-user-id values (round-robin,
-- so every user sends at the same rate) and prints machine-readable results in done().
--
--   BENCH_USERS  number of distinct users (default 10000)
--   BENCH_PATH   request path (default /api/v1/tasks)
--   BENCH_LLM    if set: POST a small OpenAI chat completion request (model gpt-4o-mini,
--                max_tokens 256, 189 bytes) instead of a GET
--   BENCH_STREAM if set with BENCH_LLM: the same request with "stream": true (SSE answer)
--   BENCH_UNIQUE if set: every request gets a never-seen-before id (key churn)

local users = tonumber(os.getenv("BENCH_USERS") or "10000")
local path = os.getenv("BENCH_PATH") or "/api/v1/tasks"
local llm = os.getenv("BENCH_LLM") ~= nil
local unique = os.getenv("BENCH_UNIQUE") ~= nil
local stream = os.getenv("BENCH_STREAM") ~= nil
local body = nil
if llm then
  body = '{"model":"gpt-4o-mini",' .. (stream and '"stream":true,' or '') ..
    '"max_tokens":256,"messages":[' ..
    '{"role":"system","content":"You are a helpful assistant."},' ..
    '{"role":"user","content":"Summarise the plot of Hamlet in three sentences."}]}'
end

local requests = {}
local i = 0
local serial = 0

local function build(id)
  local headers = { ["x-user-id"] = id }
  if llm then headers["content-type"] = "application/json" end
  return wrk.format(llm and "POST" or "GET", path, headers, body)
end

function init(args)
  if not unique then
    for u = 1, users do
      requests[u] = build(string.format("user-%06d", u))
    end
  end
end

function request()
  if unique then
    serial = serial + 1
    return build(string.format("churn-%d-%d", math.random(1, 1000000000), serial))
  end
  i = i + 1
  if i > users then i = 1 end
  return requests[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d bytes=%d connect_errors=%d read_errors=%d " ..
    "write_errors=%d status_errors=%d timeouts=%d lat_mean_us=%.2f lat_stdev_us=%.2f " ..
    "lat_p50_us=%d lat_p90_us=%d lat_p99_us=%d lat_p999_us=%d lat_max_us=%d\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency.stdev, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
