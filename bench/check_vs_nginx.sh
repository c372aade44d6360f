#!/usr/bin/env bash
# GET /v1/check over HTTP on 1M active mitigations (90% misses), Quell against nginx
# serving a static 200, same machine, same run, same wrk settings and script:
#   1. closed loop: wrk -t1 -c32 -d10s keep-alive, bench/check.lua -> req/s of each, ratio
#      (bar: quell >= 0.7x nginx);
#   2. open loop at HALF of quell's measured req/s: bench/loadgen (fixed rate, latency from
#      each request's scheduled send time), against quell and nginx -> p50/p90/p99/p99.9
#      (bar: quell p99 <= 1 ms).
# Each measurement is repeated ROUNDS times (the machine is shared and noisy); the order of
# the two servers alternates between rounds.
#
# Usage: bench/check_vs_nginx.sh [BUILD_DIR]        (default: build)
# Env:   LOADED (1000000 mitigations), THREADS (server threads = nginx workers, 2),
#        DURATION (10s), CONNECTIONS (32), ROUNDS (2), HIT_PERCENT (10),
#        LOG_LEVEL (quell's log level, warn: no JSON line per request, as nginx runs with
#        access_log off; "info" adds quell's per-request log line to stderr),
#        DATA_DIR (reuse a directory already filled by load_mitigations with LOADED users;
#        default: a fresh one, loaded now), KEEP_TMP=1 keeps the temporary directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

BUILD_DIR=${1:-build}
LOADED=${LOADED:-1000000}
THREADS=${THREADS:-2}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-2}
HIT_PERCENT=${HIT_PERCENT:-10}
export QUELL_LOG_LEVEL=${LOG_LEVEL:-warn}
QUELL_BIN=${QUELL_BIN:-$BUILD_DIR/quell}
LOADER=$BUILD_DIR/bench/load_mitigations
LOADGEN=$BUILD_DIR/bench/loadgen
need wrk curl python3 "$QUELL_BIN" "$LOADER" "$LOADGEN"

bench_init
data=${DATA_DIR:-$BENCH_TMP/data}
if [ ! -f "$data/quell.db" ]; then
  echo "== loading $LOADED mitigations into $data"
  machine_load
  "$LOADER" --data "$data" --count "$LOADED"
fi
# A fresh key each run (the --dev key is printed only on a directory's first start).
QUELL_KEY=$("$QUELL_BIN" keys create --role admin --name bench --data "$data" 2>/dev/null)
export QUELL_KEY LOADED HIT_PERCENT

start_quell "$QUELL_BIN" "$data" "$THREADS"
start_nginx "$THREADS"
active=$(curl -fsS "http://127.0.0.1:$QUELL_PORT/metrics" | awk '$1 == "quell_index_mitigations" {printf "%d", $2}')
echo "quell: $active active mitigations in the index, --threads $THREADS, log level $QUELL_LOG_LEVEL;" \
     "nginx: worker_processes $THREADS, access_log off"

# Sanity: a loaded entity is denied, an unknown one allowed (the benchmark measures real answers).
auth="Authorization: Bearer $QUELL_KEY"
hit=$(curl -fsS -H "$auth" "http://127.0.0.1:$QUELL_PORT/v1/check?entity=user%3Ab$((LOADED / 2))")
miss=$(curl -fsS -H "$auth" "http://127.0.0.1:$QUELL_PORT/v1/check?entity=user%3Am12345")
grep -q '"verdict":"deny"' <<<"$hit" || { echo "expected deny for a loaded entity, got: $hit" >&2; exit 1; }
grep -q '"verdict":"allow"' <<<"$miss" || { echo "expected allow for an unknown entity, got: $miss" >&2; exit 1; }
echo "hit reply  (${#hit} bytes): ${hit:0:160}"
echo "miss reply (${#miss} bytes): $miss"

run_wrk() {  # port -> "rps p99_us errors"
  wrk_result "$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$here/check.lua" "http://127.0.0.1:$1/v1/check")"
}

echo
echo "== closed loop: wrk -t1 -c$CONNECTIONS -d$DURATION, keep-alive, check.lua ($HIT_PERCENT% hits)"
q_sum=0
ratios=()
for round in $(seq "$ROUNDS"); do
  machine_load
  if [ $((round % 2)) -eq 1 ]; then
    read -r n_rps n_p99 n_err < <(run_wrk "$NGINX_PORT")
    read -r q_rps q_p99 q_err < <(run_wrk "$QUELL_PORT")
  else
    read -r q_rps q_p99 q_err < <(run_wrk "$QUELL_PORT")
    read -r n_rps n_p99 n_err < <(run_wrk "$NGINX_PORT")
  fi
  printf 'round %d  nginx %8s req/s (p99 %5s us, errors %s)  quell %8s req/s (p99 %5s us, errors %s)  ratio %s\n' \
    "$round" "$n_rps" "$n_p99" "$n_err" "$q_rps" "$q_p99" "$q_err" \
    "$(awk -v q="$q_rps" -v n="$n_rps" 'BEGIN { printf "%.2f", q / n }')"
  q_sum=$((q_sum + q_rps))
  ratios+=("$(awk -v q="$q_rps" -v n="$n_rps" 'BEGIN { printf "%.3f", q / n }')")
done
q_mean=$((q_sum / ROUNDS))
half=$((q_mean / 2))
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "quell mean $q_mean req/s; median ratio quell/nginx $(median "${ratios[@]}") over $ROUNDS rounds (bar: >= 0.70)"

# The same request mix for the open-loop generator (it reads paths, not Lua).
python3 - "$BENCH_TMP/paths" "$LOADED" "$HIT_PERCENT" <<'PY'
import random, sys
path, loaded, hit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(42)
with open(path, "w") as f:
    for _ in range(200000):
        if rnd.randrange(100) < hit:
            f.write("/v1/check?entity=user%%3Ab%d\n" % rnd.randrange(loaded))
        else:
            f.write("/v1/check?entity=user%%3Am%d\n" % rnd.randrange(10**9))
PY

secs=${DURATION%s}
run_open() {  # port -> LOADGEN line fields
  "$LOADGEN" --port "$1" --rate "$half" --connections "$CONNECTIONS" --duration "$secs" --warmup 1 \
    --paths "$BENCH_TMP/paths" --header "Authorization: Bearer $QUELL_KEY" | awk '/^LOADGEN/{$1=""; print}'
}
echo
echo "== open loop at half of quell's rate: $half req/s over $CONNECTIONS connections, ${secs}s (+1 s warm-up)"
q_p99s=()
n_p99s=()
echo "   fields: target achieved p50 p90 p99 p99.9 max (us) non2xx failed unfinished reconnects"
for round in $(seq "$ROUNDS"); do
  machine_load
  if [ $((round % 2)) -eq 1 ]; then
    n_line=$(run_open "$NGINX_PORT")
    q_line=$(run_open "$QUELL_PORT")
  else
    q_line=$(run_open "$QUELL_PORT")
    n_line=$(run_open "$NGINX_PORT")
  fi
  echo "round $round nginx: $n_line"
  echo "round $round quell: $q_line"
  q_p99s+=("$(awk '{print $5}' <<<"$q_line")")
  n_p99s+=("$(awk '{print $5}' <<<"$n_line")")
done
echo "median p99 over $ROUNDS rounds: quell $(median "${q_p99s[@]}" | cut -d. -f1) us, nginx $(median "${n_p99s[@]}" | cut -d. -f1) us (bar: quell p99 <= 1000 us)"
machine_load
