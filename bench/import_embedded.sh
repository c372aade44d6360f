#!/usr/bin/env bash
# 1M-row NDJSON file into the embedded store (durable: SQLite synchronous FULL, the
# example policy set published), compared in the same run with sqlite3's own `.import` of
# the same rows as CSV into a table with the same columns and indexes as Quell's
# detections table (WAL, synchronous FULL). Bar: Quell >= 0.5x sqlite3's rows/s.
#
#   bench/import_embedded.sh [ROWS]      QUELL_BIN=build/quell by default
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
need sqlite3 python3
BIN=${QUELL_BIN:-$here/../build/quell}
ROWS=${1:-1000000}
bench_init
machine_load

python3 "$here/import_gen.py" "$ROWS" ndjson >"$BENCH_TMP/rows.ndjson"
python3 "$here/import_gen.py" "$ROWS" csv >"$BENCH_TMP/rows.csv"
echo "rows: $ROWS  ndjson: $(du -h "$BENCH_TMP/rows.ndjson" | cut -f1)  csv: $(du -h "$BENCH_TMP/rows.csv" | cut -f1)"

# Publish the example policy set (a server's first start does), then stop it.
QUELL_PORT=$(free_port)
"$BIN" serve --data "$BENCH_TMP/var" --listen "127.0.0.1:$QUELL_PORT" \
  --config "$here/../examples/quell.yaml" >"$BENCH_TMP/serve.out" 2>"$BENCH_TMP/serve.log" &
pid=$!
BENCH_PIDS+=("$pid")
for _ in $(seq 600); do curl -fsS "http://127.0.0.1:$QUELL_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
kill "$pid" 2>/dev/null || true; wait "$pid" || true

sync
start=$(date +%s.%N)
"$BIN" import "$BENCH_TMP/rows.ndjson" --data "$BENCH_TMP/var" --progress off --json >"$BENCH_TMP/quell.json"
end=$(date +%s.%N)
quell_s=$(echo "$end - $start" | bc -l)
cat "$BENCH_TMP/quell.json"; echo

sqlite_import_reference "$BENCH_TMP/rows.csv"
sqlite_s=$SQLITE_S

quell_rps=$(echo "$ROWS / $quell_s" | bc -l)
sqlite_rps=$(echo "$ROWS / $sqlite_s" | bc -l)
printf 'quell import (embedded, durable, example policies): %.2fs  %.0f rows/s\n' "$quell_s" "$quell_rps"
printf 'sqlite3 .import (CSV, same indexes, WAL, FULL):      %.2fs  %.0f rows/s\n' "$sqlite_s" "$sqlite_rps"
printf 'ratio quell/sqlite3: %.2f (bar >= 0.5)\n' "$(echo "$quell_rps / $sqlite_rps" | bc -l)"
machine_load
