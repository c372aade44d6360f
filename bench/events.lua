-- wrk script for POST /v1/events: every request is a batch of BATCH (1000) events timed
-- now, a mix over pools of users, IPs, tracks and playlists: 60% play (counters plays and
-- tracks_per_ip), 20% login (accounts_per_ip), 10% login_failed (failed_logins), 10%
-- playlist_add (adders_per_playlist) — 5 counters — evaluated against the example
-- policy set. Counts the events the replies mark accepted, 200 replies and other statuses.
-- Env: QUELL_KEY, BATCH (1000), USERS (200000).
local key = os.getenv("QUELL_KEY") or ""
local batch = tonumber(os.getenv("BATCH") or "1000")
local users = tonumber(os.getenv("USERS") or "200000")
local headers = { ["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json" }

local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  accepted = 0
  ok = 0
  other = 0
  math.randomseed(id * 7919 + 17)
end

function request()
  local at = os.date("!%Y-%m-%dT%H:%M:%SZ")
  local parts = {}
  for k = 1, batch do
    local r = k % 10
    local user = math.random(users)
    local ip = string.format("ip:10.%d.%d.%d", math.random(0, 255), math.random(0, 255), math.random(1, 254))
    if r < 6 then
      parts[k] = string.format('{"type":"play","at":"%s","entity":"user:e%d","attrs":{"ip":"%s","track":"track:t%d","ms_played":%d}}',
        at, user, ip, math.random(50000), math.random(10000, 240000))
    elseif r < 8 then
      parts[k] = string.format('{"type":"login","at":"%s","entity":"user:e%d","attrs":{"ip":"%s"}}', at, user, ip)
    elseif r < 9 then
      parts[k] = string.format('{"type":"login_failed","at":"%s","entity":"user:e%d"}', at, user)
    else
      parts[k] = string.format('{"type":"playlist_add","at":"%s","entity":"user:e%d","attrs":{"playlist":"playlist:p%d"}}',
        at, user, math.random(20000))
    end
  end
  return wrk.format("POST", "/v1/events", headers, '{"events":[' .. table.concat(parts, ",") .. "]}")
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
    local n = 0
    for _ in string.gmatch(body, '"status":"accepted","outcomes"') do n = n + 1 end
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
  io.write(string.format("EVENTS %d %.0f %d %d %.0f %.0f %d\n", a, a / secs, k, o,
    latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
