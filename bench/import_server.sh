#!/usr/bin/env bash
# The same 1M-row NDJSON file through a running server (durable store, example policy
# set, a detector key): `quell import --server`. Bar: >= 200,000 rows/s.
#
#   bench/import_server.sh [ROWS] [IN_FLIGHT]      QUELL_BIN=build/quell by default; IN_FLIGHT:
#   the importer's default (8) unless given
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
need python3 curl
BIN=${QUELL_BIN:-$here/../build/quell}
ROWS=${1:-1000000}
IN_FLIGHT=${2:-}
bench_init
machine_load
python3 "$here/import_gen.py" "$ROWS" ndjson >"$BENCH_TMP/rows.ndjson"
QUELL_PORT=$(free_port)
"$BIN" serve --data "$BENCH_TMP/var" --listen "127.0.0.1:$QUELL_PORT" --config "$here/../examples/quell.yaml" \
  --dev >"$BENCH_TMP/serve.out" 2>"$BENCH_TMP/serve.log" &
pid=$!
BENCH_PIDS+=("$pid")
for _ in $(seq 600); do curl -fsS "http://127.0.0.1:$QUELL_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
key=$("$BIN" keys create --role detector --source bot-model-v3 --data "$BENCH_TMP/var" 2>/dev/null)
# The previous run's gigabyte or so may still be in writeback: let it finish first.
sync
start=$(date +%s.%N)
"$BIN" import "$BENCH_TMP/rows.ndjson" --server "http://127.0.0.1:$QUELL_PORT" --key "$key" \
  ${IN_FLIGHT:+--in-flight "$IN_FLIGHT"} --progress off --json >"$BENCH_TMP/quell.json"
end=$(date +%s.%N)
cat "$BENCH_TMP/quell.json"; echo
s=$(echo "$end - $start" | bc -l)
printf 'quell import --server (%s in flight): %.2fs  %.0f rows/s (bar >= 200000)\n' "${IN_FLIGHT:-default}" "$s" "$(echo "$ROWS / $s" | bc -l)"
machine_load
