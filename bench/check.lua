-- wrk script for GET /v1/check: 90% misses, 10% hits over the loaded entities
-- (user:b0 .. user:b<LOADED-1>, see load_mitigations). nginx gets the same requests and
-- ignores the query. Env: QUELL_KEY (Bearer key), LOADED (entity count), HIT_PERCENT (10).
local key = os.getenv("QUELL_KEY") or ""
local loaded = tonumber(os.getenv("LOADED") or "1000000")
local hit_percent = tonumber(os.getenv("HIT_PERCENT") or "10")
local headers = { ["Authorization"] = "Bearer " .. key }

local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + (id or 0))
end

function request()
  local entity
  if math.random(100) <= hit_percent then
    entity = "user%3Ab" .. math.random(0, loaded - 1)
  else
    -- never loaded: user:m<n>
    entity = "user%3Am" .. math.random(0, 999999999)
  end
  return wrk.format("GET", "/v1/check?entity=" .. entity, headers)
end

function done(summary, latency, requests)
  io.write(string.format("RESULT %.0f %.0f %d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(99),
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout))
end
