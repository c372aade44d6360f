#!/usr/bin/env bash
# POST /v1/events over HTTP: CONNECTIONS concurrent wrk clients (keep-alive) each sending
# batches of 1,000 events (bench/events.lua: play, login, login_failed, playlist_add — 5
# counters) to `quell serve` with the example policy set (examples/quell.yaml). Reports
# accepted events/s (bar: >= 200,000/s in process), 200 vs other replies and latency per
# batch. BACKEND=redis starts its own redis-server on a free port (stopped by PID) and
# runs `redis-benchmark -t incr -P <pipeline>` against it first as the reference
# (bar: >= 100,000 events/s).
#
# Usage: bench/events_http.sh [BUILD_DIR]       (default: build)
# Env:   DURATION (15s), CONNECTIONS (8), WRK_THREADS (2), THREADS (quell event loops, 2),
#        BATCH (1000), BACKEND (memory | redis), PIPELINE (redis-benchmark -P, 1000).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/lib.sh"

BUILD_DIR=${1:-build}
DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-8}
WRK_THREADS=${WRK_THREADS:-2}
THREADS=${THREADS:-2}
BACKEND=${BACKEND:-memory}
PIPELINE=${PIPELINE:-1000}
export BATCH=${BATCH:-1000}
QUELL_BIN=${QUELL_BIN:-$BUILD_DIR/quell}
need wrk curl "$QUELL_BIN"
bench_init

redis_args=()
if [ "$BACKEND" = redis ]; then
  need redis-server redis-benchmark
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$BENCH_TMP" >"$BENCH_TMP/redis.log" 2>&1 &
  REDIS_PID=$!
  BENCH_PIDS+=("$REDIS_PID")
  for _ in $(seq 200); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
  ref=$(redis-benchmark -p "$REDIS_PORT" -t incr -P "$PIPELINE" -n 2000000 -q 2>/dev/null | tr '\r' '\n' | grep -a 'INCR:' | tail -1)
  echo "reference: redis-benchmark -t incr -P $PIPELINE -n 2000000: $ref"
  redis_args=(--redis "redis://127.0.0.1:$REDIS_PORT")
fi

data="$BENCH_TMP/data"
QUELL_PORT=$(free_port)
"$QUELL_BIN" serve --config "$root/examples/quell.yaml" --data "$data" \
  --listen "127.0.0.1:$QUELL_PORT" --threads "$THREADS" --dev "${redis_args[@]}" \
  >"$BENCH_TMP/quell.out" 2>"$BENCH_TMP/quell.log" &
QUELL_PID=$!
BENCH_PIDS+=("$QUELL_PID")
for _ in $(seq 600); do
  kill -0 "$QUELL_PID" 2>/dev/null || { echo "quell exited:" >&2; tail -20 "$BENCH_TMP/quell.log" >&2; exit 1; }
  curl -fsS "http://127.0.0.1:$QUELL_PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.05
done
QUELL_KEY=$(sed -n 's/.*admin key (shown once): \([^ ]*\).*/\1/p' "$BENCH_TMP/quell.out")
[ -n "$QUELL_KEY" ] || { echo "no admin key printed" >&2; exit 1; }
export QUELL_KEY
probe=$(curl -s -H "Authorization: Bearer $QUELL_KEY" \
  -d "{\"type\":\"play\",\"entity\":\"user:probe\",\"at\":\"$(date -u +%FT%TZ)\",\"attrs\":{\"ip\":\"ip:10.0.0.1\",\"track\":\"track:t1\"}}" \
  "http://127.0.0.1:$QUELL_PORT/v1/events")
grep -q '"counted":2' <<<"$probe" || { echo "probe: $probe" >&2; exit 1; }
# CPU seconds (user + system) a process has used, from /proc (10 ms resolution).
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
quell_cpu0=$(cpu_s "$QUELL_PID")
redis_cpu0=0
[ "$BACKEND" = redis ] && redis_cpu0=$(cpu_s "$REDIS_PID")
machine_load
out=$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout 30s -s "$here/events.lua" \
  "http://127.0.0.1:$QUELL_PORT/v1/events")
machine_load
quell_cpu=$(awk -v a="$(cpu_s "$QUELL_PID")" -v b="$quell_cpu0" 'BEGIN{printf "%.2f", a - b}')
read -r accepted rate ok other p50 p99 sockerr < <(awk '/^EVENTS/{print $2, $3, $4, $5, $6, $7, $8}' <<<"$out")
metrics=$(curl -fsS -H "Authorization: Bearer $QUELL_KEY" "http://127.0.0.1:$QUELL_PORT/metrics" | grep -E '^quell_velocity_(keys|store_errors_total|fail_open_total)' | tr '\n' ' ')
if [ "$BACKEND" = redis ]; then
  echo "redis commandstats (calls, usec per call):"
  redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | grep -E 'cmdstat_(pfcount|pfadd|incrby|hincrby|hgetall|hkeys|hset|hsetnx|hdel|pttl|pexpire|mget|eval)' \
    | sed 's/cmdstat_\([a-z]*\):calls=\([0-9]*\),usec=[0-9]*,usec_per_call=\([0-9.]*\).*/  \1 \2 calls, \3 us each/'
  redis_cpu=$(awk -v a="$(cpu_s "$REDIS_PID")" -v b="$redis_cpu0" 'BEGIN{printf "%.2f", a - b}')
  echo "redis-server CPU during the run: ${redis_cpu}s ($(awk -v n="$accepted" -v c="$redis_cpu" 'BEGIN{printf "%.0f", (c > 0 ? n / c : 0)}') events per Redis CPU-second)"
fi
# On a shared machine the rate depends on what else runs; events per CPU-second of the
# server does much less.
echo "quell CPU during the run: ${quell_cpu}s ($(awk -v n="$accepted" -v c="$quell_cpu" 'BEGIN{printf "%.0f", (c > 0 ? n / c : 0)}') events per quell CPU-second)"
stop_quell
printf 'backend %s: %s events accepted in %s = %s/s (batches of %s, %s connections); 200 replies %s, other %s; socket errors %s; latency per batch p50 %s us p99 %s us; %s\n' \
  "$BACKEND" "$accepted" "$DURATION" "$rate" "$BATCH" "$CONNECTIONS" "$ok" "$other" "$sockerr" "$p50" "$p99" "$metrics"
