#!/usr/bin/env bash
# Peak RSS of `quell import` with 10M rows (streamed from the generator through stdin,
# so no 2 GB file is needed), into the embedded store with the example policy set.
# Bar: < 256 MiB (/usr/bin/time -v "Maximum resident set size").
#
#   bench/import_memory.sh [ROWS]      QUELL_BIN=build/quell by default; FSYNC=1 for durable
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
need python3 /usr/bin/time
BIN=${QUELL_BIN:-$here/../build/quell}
ROWS=${1:-10000000}
bench_init
machine_load
QUELL_PORT=$(free_port)
"$BIN" serve --data "$BENCH_TMP/var" --listen "127.0.0.1:$QUELL_PORT" \
  --config "$here/../examples/quell.yaml" >"$BENCH_TMP/serve.out" 2>"$BENCH_TMP/serve.log" &
pid=$!
BENCH_PIDS+=("$pid")
for _ in $(seq 600); do curl -fsS "http://127.0.0.1:$QUELL_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
kill "$pid" 2>/dev/null || true; wait "$pid" || true
flags=(--no-fsync)
[ -n "${FSYNC:-}" ] && flags=()
python3 "$here/import_gen.py" "$ROWS" ndjson 1000000 |
  /usr/bin/time -v "$BIN" import - --format ndjson --data "$BENCH_TMP/var" --progress lines --json \
    --rejects "$BENCH_TMP/rejects.ndjson" "${flags[@]}" >"$BENCH_TMP/quell.json" 2>"$BENCH_TMP/time.txt" || true
cat "$BENCH_TMP/quell.json"; echo
grep -E "Maximum resident set size|Elapsed" "$BENCH_TMP/time.txt"
rss_kb=$(awk '/Maximum resident set size/{print $6}' "$BENCH_TMP/time.txt")
printf 'peak RSS: %.1f MiB for %d rows (bar < 256 MiB)\n' "$(echo "$rss_kb / 1024" | bc -l)" "$ROWS"
machine_load
