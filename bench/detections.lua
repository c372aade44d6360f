-- wrk script for POST /v1/detections: every request is a batch of BATCH (1000) new
-- detections with unique ids ("h<run>-<thread>-<request>-<k>") over a pool of users, from
-- the production bot model (artificial_streaming, bot-model-v3) with uniform scores, so
-- that about a quarter earn a decision from the example policy set (exclude_royalties,
-- some escalating to suspend) and the rest are only stored. Counts the items the replies
-- mark "accepted" (the bodies are read), the 200 replies and every other status.
-- Env: QUELL_KEY, RUN (a tag unique per run), BATCH (1000), USERS (200000).
local key = os.getenv("QUELL_KEY") or ""
local run = os.getenv("RUN") or "0"
local batch = tonumber(os.getenv("BATCH") or "1000")
local users = tonumber(os.getenv("USERS") or "200000")
local headers = { ["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json" }
local observed = os.date("!%Y-%m-%dT%H:%M:%SZ")

local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  accepted = 0
  ok = 0
  other = 0
  math.randomseed(id * 7919 + 17)
end

function request()
  counter = counter + 1
  local parts = {}
  local prefix = string.format('{"id":"h%s-%d-%d-', run, id, counter)
  for k = 1, batch do
    parts[k] = string.format(
      '%s%d","source":"bot-model-v3","type":"artificial_streaming","entity":"user:h%d","score":%.3f,"observed_at":"%s"}',
      prefix, k, math.random(users), math.random(), observed)
  end
  return wrk.format("POST", "/v1/detections", headers,
    '{"detections":[' .. table.concat(parts, ",") .. "]}")
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
    local n = 0
    for _ in string.gmatch(body, '"status":"accepted"') do n = n + 1 end
    accepted = accepted + n
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local a, k, o = 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("accepted")
    k = k + t:get("ok")
    o = o + t:get("other")
  end
  local secs = summary.duration / 1e6
  io.write(string.format("DETECTIONS %d %.0f %d %d %.0f %.0f %d\n", a, a / secs, k, o,
    latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
