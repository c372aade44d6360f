-- wrk script for POST /v1/mitigations: every request creates a new mitigation on a
-- unique entity (user:w<run>_<thread>_<counter>), action block, ttl 30d. Counts the
-- replies that are 201 and those that are not. Env: QUELL_KEY, RUN (a tag unique per run).
local key = os.getenv("QUELL_KEY") or ""
local run = os.getenv("RUN") or "0"
local headers = { ["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json" }

local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  created = 0
  other = 0
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"entity":"user:w%s_%d_%d","action":"block","ttl":"30d","reason":"durable write bench"}',
    run, id, counter)
  return wrk.format("POST", "/v1/mitigations", headers, body)
end

function response(status, headers, body)
  if status == 201 then created = created + 1 else other = other + 1 end
end

function done(summary, latency, requests)
  local c, o = 0, 0
  for _, t in ipairs(threads) do
    c = c + t:get("created")
    o = o + t:get("other")
  end
  local secs = summary.duration / 1e6
  io.write(string.format("CREATED %d %.0f %d %.0f %.0f %d\n", c, c / secs, o,
    latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
