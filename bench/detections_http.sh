#!/usr/bin/env bash
# End-to-end durable detections over HTTP: 8 concurrent clients (wrk, keep-alive) each
# sending batches of 1,000 new detections (POST /v1/detections, bench/detections.lua) to
# `quell serve` on a fresh data directory with the embedded store at synchronous=FULL and
# the example music-streaming policy set published (examples/quell.yaml). Reports the
# detections the replies mark "accepted" per second (bar: >= 100,000/s), 200 vs other
# replies, latency per batch, and the store's count afterwards. Every accepted detection
# is durable (stored with its decisions) before its reply is sent.
#
# Usage: bench/detections_http.sh [BUILD_DIR]       (default: build)
# Env:   DURATION (15s), CONNECTIONS (8), WRK_THREADS (2), THREADS (quell event loops, 2),
#        BATCH (1000), ROUNDS (1), PERF=1 (perf record the server; report printed and in $BENCH_TMP/perf.txt, kept with KEEP_TMP=1),
#        RATES=1 (print the ledger changes, i.e. decisions, committed in each second of the run:
#        how the rate moves as the store fills),
#        BENCH_TMPDIR (/var/tmp: the real disk, not tmpfs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/lib.sh"

BUILD_DIR=${1:-build}
DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-8}
WRK_THREADS=${WRK_THREADS:-2}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-1}
export BATCH=${BATCH:-1000}
QUELL_BIN=${QUELL_BIN:-$BUILD_DIR/quell}
need wrk curl sqlite3 "$QUELL_BIN"
bench_init
echo "disk: $(df -T "$BENCH_TMP" | awk 'NR==2{print $1, $2}') ($BENCH_TMP)"

for round in $(seq "$ROUNDS"); do
  sync  # each round starts with nothing left to write back (an earlier round's, or run's)
  data="$BENCH_TMP/data$round"
  QUELL_PORT=$(free_port)
  # synchronous: full comes from examples/quell.yaml; flags override its data and listen.
  "$QUELL_BIN" serve --config "$root/examples/quell.yaml" --data "$data" \
    --listen "127.0.0.1:$QUELL_PORT" --threads "$THREADS" --dev \
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
  export QUELL_KEY RUN=$round
  sync_mode=$(sqlite3 "$data/quell.db" 'PRAGMA journal_mode' 2>/dev/null || echo "?")
  version=$(curl -fsS -D - -o /dev/null -H "Authorization: Bearer $QUELL_KEY" \
    "http://127.0.0.1:$QUELL_PORT/v1/policies" | awk -F': ' 'tolower($1)=="x-quell-policy-version"{print $2}' | tr -d '\r')
  [ -n "$version" ] || { echo "no policy set published" >&2; exit 1; }
  # One detection by hand, so that a broken route fails loudly instead of measuring errors.
  probe=$(curl -s -H "Authorization: Bearer $QUELL_KEY" -d "{\"id\":\"probe\",\"source\":\"bot-model-v3\",\"type\":\"artificial_streaming\",\"entity\":\"user:probe\",\"score\":0.95,\"observed_at\":\"$(date -u +%FT%TZ)\"}" \
    "http://127.0.0.1:$QUELL_PORT/v1/detections")
  grep -q '"status":"accepted"' <<<"$probe" || { echo "probe: $probe" >&2; exit 1; }
  if [ -n "${PERF:-}" ]; then
    perf record -e cpu-clock -F 199 --call-graph dwarf,16384 -p "$QUELL_PID" -o "$BENCH_TMP/perf.data" 2>/dev/null &
    perf_pid=$!
  fi
  machine_load
  if [ -n "${RATES:-}" ]; then
    (
      prev=""
      while kill -0 "$QUELL_PID" 2>/dev/null; do
        n=$(curl -fsS -H "Authorization: Bearer $QUELL_KEY" "http://127.0.0.1:$QUELL_PORT/metrics" 2>/dev/null |
          awk '/^quell_ledger_changes_total /{printf "%d", $2}')
        [ -n "$n" ] && [ -n "$prev" ] && printf '%s ' "$((n - prev))" >>"$BENCH_TMP/rates$round"
        prev=$n
        sleep 1
      done
    ) &
    rates_pid=$!
  fi
  out=$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout 30s -s "$here/detections.lua" \
    "http://127.0.0.1:$QUELL_PORT/v1/detections")
  machine_load
  if [ -n "${RATES:-}" ]; then
    kill "$rates_pid" 2>/dev/null || true
    wait "$rates_pid" 2>/dev/null || true
    echo "round $round ledger changes per second: $(cat "$BENCH_TMP/rates$round" 2>/dev/null)"
  fi
  if [ -n "${PERF:-}" ]; then
    kill -INT "$perf_pid"; wait "$perf_pid" || true
    perf script -i "$BENCH_TMP/perf.data" -F tid,ip,sym 2>/dev/null >"$BENCH_TMP/perf.script" || true
    python3 "$here/perf_classify.py" "$BENCH_TMP/perf.script" | tee "$BENCH_TMP/perf.txt"
  fi
  read -r accepted rate ok other p50 p99 sockerr < <(awk '/^DETECTIONS/{print $2, $3, $4, $5, $6, $7, $8}' <<<"$out")
  # Memory at the end: anonymous (heap: caches, queues) apart from the mapped file pages.
  mem=$(awk '/^(VmHWM|RssAnon|RssFile):/{printf "%s %d MiB  ", $1, $2/1024}' "/proc/$QUELL_PID/status" 2>/dev/null || echo "?")
  stop_quell
  stored=$(sqlite3 "$data/quell.db" 'SELECT count(*) FROM detections' 2>/dev/null || echo "?")
  mitigations=$(sqlite3 "$data/quell.db" 'SELECT count(*) FROM mitigations' 2>/dev/null || echo "?")
  printf 'round %d  policy set v%s, journal %s, synchronous=FULL: %s detections accepted in %s = %s/s (batches of %s, %s connections); 200 replies %s, other %s; socket errors %s; latency per batch p50 %s us p99 %s us; detections stored %s; mitigations %s; server memory %s\n' \
    "$round" "$version" "$sync_mode" "$accepted" "$DURATION" "$rate" "$BATCH" "$CONNECTIONS" "$ok" "$other" "$sockerr" "$p50" "$p99" "$stored" "$mitigations" "$mem"
  # A round writes ~600 MB, which the kernel is still writing back (CPU and disk) when the
  # next one starts unless it is gone first.
  if [ "$round" -lt "$ROUNDS" ] && [ -z "${KEEP_TMP:-}" ]; then rm -rf "$data"; fi
done
echo "(bar: >= 100000 durable detections/s)"
