#!/usr/bin/env bash
# GET /v1/decisions?ip= with 100,000 active ip ban decisions: CrowdSec's own Local API
# (Debian 12's crowdsec, offline on loopback, via /work/shared/peers/crowdsec-lapi) against
# Quell's CrowdSec-compatible endpoint, same run, same wrk settings, same request mix:
#   wrk -t1 -c32 -d10s, keep-alive, X-Api-Key of a bouncer (CrowdSec) / enforcer (Quell) key,
#   ip = a random address of the /8 the decisions live in: HIT_PERCENT% loaded, the rest not.
# CrowdSec holds 20.0.0.0 + i (the peers script's `load`), Quell ip:10.0.0.0 + i
# (bench/load_mitigations --ips, action block = verdict deny = "ban").
# Prints both req/s and p99, the ratio and the bars (Quell >= 500x CrowdSec, p99 < 2 ms).
# Each server runs alone while it is measured.
#
# Usage: bench/crowdsec_vs_quell.sh [BUILD_DIR]        (default: build). Needs root for the
# CrowdSec peer (it edits /etc/crowdsec and deletes every decision of that local LAPI first).
# Env:   LOADED (100000), THREADS (quell server threads, 2), DURATION (10s), CONNECTIONS (32),
#        HIT_PERCENT (50), CS_PORT (free port), PEER (/work/shared/peers/crowdsec-lapi),
#        KEEP_TMP=1 keeps the temporary directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

BUILD_DIR=${1:-build}
LOADED=${LOADED:-100000}
THREADS=${THREADS:-2}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
HIT_PERCENT=${HIT_PERCENT:-50}
PEER=${PEER:-/work/shared/peers/crowdsec-lapi}
QUELL_BIN=${QUELL_BIN:-$BUILD_DIR/quell}
LOADER=$BUILD_DIR/bench/load_mitigations
need wrk curl python3 crowdsec cscli "$QUELL_BIN" "$LOADER" "$PEER"
[ "$LOADED" -lt $((1 << 24)) ] || { echo "LOADED must be < 2^24" >&2; exit 2; }

bench_init
CS_PID=
stop_crowdsec() { [ -n "$CS_PID" ] && "$PEER" stop "$CS_PID"; CS_PID=; }
trap 'stop_crowdsec; bench_cleanup' EXIT

# The wrk script: both servers get the same mix; only the first octet differs.
cat >"$BENCH_TMP/decisions.lua" <<'LUA'
local key = os.getenv("CS_KEY") or ""
local first = os.getenv("FIRST_OCTET") or "10"
local loaded = tonumber(os.getenv("LOADED") or "100000")
local hit_percent = tonumber(os.getenv("HIT_PERCENT") or "50")
local headers = { ["X-Api-Key"] = key }
function init(args) math.randomseed(os.time()) end
function request()
  local i
  if math.random(100) <= hit_percent then
    i = math.random(0, loaded - 1)
  else
    i = math.random(loaded, 16777215)  -- same /8, never loaded
  end
  -- LuaJIT (wrk) has no bit operators: split with integer division
  local ip = string.format("%s.%d.%d.%d", first, math.floor(i / 65536), math.floor(i / 256) % 256, i % 256)
  return wrk.format("GET", "/v1/decisions?ip=" .. ip, headers)
end
function done(summary, latency, requests)
  io.write(string.format("RESULT %.0f %.0f %d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(99),
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout))
end
LUA

run_wrk() {  # port key first_octet -> "rps p99_us errors"
  wrk_result "$(CS_KEY=$2 FIRST_OCTET=$3 LOADED=$LOADED HIT_PERCENT=$HIT_PERCENT \
    wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --timeout 10s -s "$BENCH_TMP/decisions.lua" \
    "http://127.0.0.1:$1")"
}

sanity() {  # port key hit_ip miss_ip
  local hit miss
  hit=$(curl -fsS -H "X-Api-Key: $2" "http://127.0.0.1:$1/v1/decisions?ip=$3")
  miss=$(curl -fsS -H "X-Api-Key: $2" "http://127.0.0.1:$1/v1/decisions?ip=$4")
  grep -q '"type":"ban"' <<<"$hit" || { echo "expected a ban for $3, got: $hit" >&2; exit 1; }
  [ "$miss" = null ] || { echo "expected null for $4, got: $miss" >&2; exit 1; }
  echo "  hit  $3: ${hit:0:170}"
  echo "  miss $4: $miss"
}

machine_load
echo "== loading $LOADED ip: block mitigations into quell"
"$LOADER" --data "$BENCH_TMP/data" --count 0 --ips "$LOADED" | tail -1

echo "== crowdsec: $LOADED ban decisions (cscli decisions import)"
# Installed by scripts/setup but not yet prepared for offline use (daemonize, online API off,
# no journal source): the peers script's install step does that, idempotently.
grep -qE '^\s*daemonize: true' /etc/crowdsec/config.yaml && "$PEER" install >/dev/null
cs_port=${CS_PORT:-$(free_port)}
CS_PID=$("$PEER" start "$cs_port" | tail -1)
cs_key=$("$PEER" key "quell-bench-$$-$RANDOM")
# Reuse the decisions of an earlier run while they last (CrowdSec's deletes are soft: the rows
# stay in its database and every reload would make its queries slower).
last=$((LOADED - 1))
last_ip="20.$((last >> 16)).$(((last >> 8) & 255)).$((last & 255))"
if curl -fsS -H "X-Api-Key: $cs_key" "http://127.0.0.1:$cs_port/v1/decisions?ip=20.0.0.0" | grep -q '"type":"ban"' &&
   curl -fsS -H "X-Api-Key: $cs_key" "http://127.0.0.1:$cs_port/v1/decisions?ip=$last_ip" | grep -q '"type":"ban"'; then
  echo "  reusing the $LOADED decisions already loaded (20.0.0.0 .. $last_ip)"
else
  cscli decisions delete --all >/dev/null 2>&1 || true
  "$PEER" load "$LOADED"
fi
sanity "$cs_port" "$cs_key" "20.0.0.7" "20.255.255.254"
machine_load
read -r c_rps c_p99 c_err < <(run_wrk "$cs_port" "$cs_key" 20)
printf 'crowdsec %10s req/s  p99 %9s us  errors %s\n' "$c_rps" "$c_p99" "$c_err"
stop_crowdsec

echo "== quell: $LOADED ip: decisions"
start_quell "$QUELL_BIN" "$BENCH_TMP/data" "$THREADS"
q_key=$("$QUELL_BIN" keys create --role enforcer --name bench --data "$BENCH_TMP/data" 2>/dev/null)
sanity "$QUELL_PORT" "$q_key" "10.0.0.7" "10.255.255.254"
machine_load
read -r q_rps q_p99 q_err < <(run_wrk "$QUELL_PORT" "$q_key" 10)
printf 'quell    %10s req/s  p99 %9s us  errors %s\n' "$q_rps" "$q_p99" "$q_err"
stop_quell
machine_load

awk -v q="$q_rps" -v c="$c_rps" -v qp="$q_p99" -v cp="$c_p99" 'BEGIN {
  r = c > 0 ? q / c : 0
  printf "ratio quell/crowdsec: %.0fx req/s, p99 %.0f us vs %.0f us\n", r, qp, cp
  printf "bars: req/s ratio >= 500x: %s; quell p99 < 2000 us: %s\n", (r >= 500 ? "PASS" : "FAIL"), (qp < 2000 ? "PASS" : "FAIL")
}'
