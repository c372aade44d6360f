#!/usr/bin/env bash
# Issue 9, item 5: the cost of observability on the check path. One binary, two servers
# started side by side on copies of the same data directory:
#   OFF: metrics: {enabled: false}, no tracing section (no tracer exists; the router does
#        not read trace headers, records no request metrics; the ledger no histograms);
#   ON:  metrics on, tracing on: a tracer sampling SAMPLE_RATIO of the requests (root
#        spans, 0.1 by default) and exporting them over OTLP/HTTP to a local sink
#        collector (a small Python server answering 200), /metrics scraped every second.
# The same closed-loop wrk run (bench/check.lua: GET /v1/check, 90% misses) goes against
# each in turn, ROUNDS times each, interleaved (ON OFF, OFF ON, ...), and the script prints
# every round's req/s and the median of the per-pair ratios ON/OFF (bar: >= 0.97).
# On a shared, noisy machine the req/s of a round depends on what else runs; so the script
# also reads each server's CPU time (utime + stime, /proc/PID/stat) around every run and
# prints the CPU microseconds per request of each side and their ratio OFF/ON, which
# other processes' load disturbs much less (the ON side's export thread is counted; the
# sink collector's own CPU is not).
#
# Usage: bench/observability_overhead.sh [BUILD_DIR]    (default: build)
# Env:   LOADED (100000 mitigations), THREADS (server threads, 2), DURATION (10s),
#        CONNECTIONS (32), ROUNDS (5 per side), HIT_PERCENT (10), SAMPLE_RATIO (0.1),
#        LOG_LEVEL (warn on both sides: the access log is the same cost on both and is
#        measured elsewhere), KEEP_TMP=1 keeps the temporary directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

BUILD_DIR=${1:-build}
LOADED=${LOADED:-100000}
THREADS=${THREADS:-2}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-5}
HIT_PERCENT=${HIT_PERCENT:-10}
SAMPLE_RATIO=${SAMPLE_RATIO:-0.1}
export QUELL_LOG_LEVEL=${LOG_LEVEL:-warn}
QUELL_BIN=${QUELL_BIN:-$BUILD_DIR/quell}
LOADER=$BUILD_DIR/bench/load_mitigations
need wrk curl python3 "$QUELL_BIN" "$LOADER"

bench_init
echo "== loading $LOADED mitigations"
machine_load
"$LOADER" --data "$BENCH_TMP/off" --count "$LOADED" >/dev/null
cp -r "$BENCH_TMP/off" "$BENCH_TMP/on"
QUELL_KEY=$("$QUELL_BIN" keys create --role admin --name bench --data "$BENCH_TMP/off" 2>/dev/null)
ON_KEY=$("$QUELL_BIN" keys create --role admin --name bench --data "$BENCH_TMP/on" 2>/dev/null)
export LOADED HIT_PERCENT

# The sink collector: accepts every OTLP/HTTP POST, counts spans' bytes, answers 200.
SINK_PORT=$(free_port)
python3 - "$SINK_PORT" >"$BENCH_TMP/sink.log" 2>&1 <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
BENCH_PIDS+=("$!")

printf 'metrics: {enabled: false}\n' >"$BENCH_TMP/off.yaml"
printf 'metrics: {enabled: true}\ntracing: {endpoint: "http://127.0.0.1:%s/v1/traces", sample_ratio: %s}\n' \
  "$SINK_PORT" "$SAMPLE_RATIO" >"$BENCH_TMP/on.yaml"

start_side() {  # name -> sets <NAME>_PORT
  local name=$1 port
  port=$(free_port)
  "$QUELL_BIN" serve --data "$BENCH_TMP/$name" --listen "127.0.0.1:$port" --threads "$THREADS" \
    --config "$BENCH_TMP/$name.yaml" >"$BENCH_TMP/$name.out" 2>"$BENCH_TMP/$name.log" &
  BENCH_PIDS+=("$!")
  local _
  for _ in $(seq 1200); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.05
  done
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null || { tail "$BENCH_TMP/$name.log" >&2; exit 1; }
  eval "${name^^}_PORT=$port"
  eval "${name^^}_PID=${BENCH_PIDS[-1]}"
}
start_side off
start_side on

# Sanity: both answer the same; ON exports metrics, OFF none.
for side in "off $OFF_PORT $QUELL_KEY" "on $ON_PORT $ON_KEY"; do
  read -r name port key <<<"$side"
  hit=$(curl -fsS -H "Authorization: Bearer $key" "http://127.0.0.1:$port/v1/check?entity=user%3Ab$((LOADED / 2))")
  grep -q '"verdict":"deny"' <<<"$hit" || { echo "$name: expected deny, got: $hit" >&2; exit 1; }
done
[ -z "$(curl -fsS "http://127.0.0.1:$OFF_PORT/metrics")" ] || { echo "OFF side exports metrics" >&2; exit 1; }
on_metrics=$(curl -fsS "http://127.0.0.1:$ON_PORT/metrics")
grep -q '^quell_index_mitigations ' <<<"$on_metrics" || { echo "ON side has no metrics" >&2; exit 1; }

# Prometheus' side of "on": a scrape every second while the ON side is measured.
( while sleep 1; do curl -fsS "http://127.0.0.1:$ON_PORT/metrics" >/dev/null 2>&1 || true; done ) &
BENCH_PIDS+=("$!")

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
secs=${DURATION%s}
run_wrk() {  # port key pid -> "rps p99_us errors cpu_us_per_request"
  local before after out
  before=$(cpu_ticks "$3")
  out=$(QUELL_KEY=$2 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$here/check.lua" "http://127.0.0.1:$1/v1/check")
  after=$(cpu_ticks "$3")
  read -r rps p99 err <<<"$(wrk_result "$out")"
  echo "$rps $p99 $err $(awk -v t=$((after - before)) -v hz="$TICK" -v r="$rps" -v s="$secs" 'BEGIN { printf "%.2f", t / hz * 1e6 / (r * s) }')"
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%.3f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "== $ROUNDS rounds x (ON, OFF), interleaved; wrk -t1 -c$CONNECTIONS -d$DURATION, check.lua ($HIT_PERCENT% hits)," \
     "$LOADED mitigations, --threads $THREADS, log level $QUELL_LOG_LEVEL, ON samples $SAMPLE_RATIO of traces"
ratios=()
on_all=()
off_all=()
cpu_ratios=()
on_cpu_all=()
off_cpu_all=()
for round in $(seq "$ROUNDS"); do
  machine_load
  if [ $((round % 2)) -eq 1 ]; then
    read -r on_rps on_p99 on_err on_cpu < <(run_wrk "$ON_PORT" "$ON_KEY" "$ON_PID")
    read -r off_rps off_p99 off_err off_cpu < <(run_wrk "$OFF_PORT" "$QUELL_KEY" "$OFF_PID")
  else
    read -r off_rps off_p99 off_err off_cpu < <(run_wrk "$OFF_PORT" "$QUELL_KEY" "$OFF_PID")
    read -r on_rps on_p99 on_err on_cpu < <(run_wrk "$ON_PORT" "$ON_KEY" "$ON_PID")
  fi
  r=$(awk -v a="$on_rps" -v b="$off_rps" 'BEGIN { printf "%.3f", a / b }')
  cr=$(awk -v a="$on_cpu" -v b="$off_cpu" 'BEGIN { printf "%.3f", b / a }')
  printf 'round %d  ON %8s req/s (p99 %5s us, errors %s, %s cpu-us/req)  OFF %8s req/s (p99 %5s us, errors %s, %s cpu-us/req)  req/s ON/OFF %s  cpu OFF/ON %s\n' \
    "$round" "$on_rps" "$on_p99" "$on_err" "$on_cpu" "$off_rps" "$off_p99" "$off_err" "$off_cpu" "$r" "$cr"
  ratios+=("$r")
  cpu_ratios+=("$cr")
  on_cpu_all+=("$on_cpu")
  off_cpu_all+=("$off_cpu")
  on_all+=("$on_rps")
  off_all+=("$off_rps")
done
exported=$(curl -fsS "http://127.0.0.1:$ON_PORT/metrics" | awk '$1 == "quell_trace_spans_exported_total" {printf "%d", $2}')
dropped=$(curl -fsS "http://127.0.0.1:$ON_PORT/metrics" | awk '$1 ~ /^quell_trace_spans_dropped_total/ {s += $2} END {printf "%d", s}')
echo "ON side exported $exported spans (dropped $dropped)"
echo "median req/s: ON $(median "${on_all[@]}") OFF $(median "${off_all[@]}")"
echo "median ratio ON/OFF over $ROUNDS rounds: $(median "${ratios[@]}") (bar: >= 0.970)"
echo "median CPU per request: ON $(median "${on_cpu_all[@]}") us, OFF $(median "${off_cpu_all[@]}") us;" \
     "median per-round OFF/ON $(median "${cpu_ratios[@]}") (bar: >= 0.970, i.e. ON costs at most ~3% more CPU per check)"
machine_load
