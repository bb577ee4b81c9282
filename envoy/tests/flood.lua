-- wrk script for test_memory.py: every request carries a user id never sent before.
--   wrk -t T -c C -d MAX_SECONDS -s flood.lua http://127.0.0.1:PORT -- QUOTA PREFIX MARKER_DIR
-- Each thread sends QUOTA requests as x-flood-id: PREFIX-<thread>-<n>, then stops and touches
-- MARKER_DIR/done-<thread>; the test then interrupts wrk (wrk itself always runs for -d).
-- done() prints one line: FLOOD {"requests":N,"ids":N,"statuses":{"200":N,...}}

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  quota = tonumber(args[1])
  prefix = args[2]
  marker_dir = args[3]
  sent = 0
  received = 0
  statuses = {}
  stopped = false
end

function request()
  sent = sent + 1
  return wrk.format("GET", "/api/tasks", { ["x-flood-id"] = prefix .. "-" .. tid .. "-" .. sent })
end

function response(status, headers, body)
  received = received + 1
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if received >= quota and not stopped then
    stopped = true
    local f = io.open(marker_dir .. "/done-" .. tid, "w")
    if f then f:close() end
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local ids, total, parts = 0, 0, {}
  local merged = {}
  for _, thread in ipairs(threads) do
    ids = ids + thread:get("sent")
    total = total + thread:get("received")
    for k, v in pairs(thread:get("statuses")) do
      merged[k] = (merged[k] or 0) + v
    end
  end
  for k, v in pairs(merged) do
    table.insert(parts, string.format('"%s":%d', k, v))
  end
  io.write(string.format('FLOOD {"requests":%d,"ids":%d,"statuses":{%s}}\n',
    total, ids, table.concat(parts, ",")))
end
