#!/usr/bin/env bash
# The same 1M-row NDJSON file through a running server (durable store, example policy
# set, a detector key): `quell import --server`. Bar: >= 200,000 rows/s. The same run also
# times sqlite3's own `.import` of the same rows as CSV (lib.sh, sqlite_import_reference)
# and prints the ratio: the bar is absolute, but this machine's speed drifts from run to run.
#
#   bench/import_server.sh [ROWS] [IN_FLIGHT]      QUELL_BIN=build/quell by default; IN_FLIGHT:
#   the importer's default (8) unless given. SCHEDSTAT=1 also prints, for each server thread
#   that ran over 0.1 s, its CPU time and its time waiting runnable during the import
#   (/proc/PID/task/TID/schedstat), by name (docs/operations.md, Threads). HIGH_EVERY=K
#   (4 unless given; 0: none) makes one row in K earn a decision: the bar's file has 4.
#   CLIENT_TIME=1 also prints the importer's own CPU time and peak RSS (/usr/bin/time, package
#   `time`): the client shares the machine's two cores with the server.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
need python3 curl sqlite3 bc
client_time=()
if [ -n "${CLIENT_TIME:-}" ]; then
  need /usr/bin/time
  client_time=(/usr/bin/time -f "client: user %U s, sys %S s, wall %e s, max RSS %M KiB")
fi
BIN=${QUELL_BIN:-$here/../build/quell}
ROWS=${1:-1000000}
IN_FLIGHT=${2:-}
bench_init
machine_load
python3 "$here/import_gen.py" "$ROWS" ndjson 250000 "${HIGH_EVERY:-4}" >"$BENCH_TMP/rows.ndjson"
python3 "$here/import_gen.py" "$ROWS" csv 250000 "${HIGH_EVERY:-4}" >"$BENCH_TMP/rows.csv"
QUELL_PORT=$(free_port)
"$BIN" serve --data "$BENCH_TMP/var" --listen "127.0.0.1:$QUELL_PORT" --config "$here/../examples/quell.yaml" \
  --dev >"$BENCH_TMP/serve.out" 2>"$BENCH_TMP/serve.log" &
pid=$!
BENCH_PIDS+=("$pid")
for _ in $(seq 600); do curl -fsS "http://127.0.0.1:$QUELL_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
key=$("$BIN" keys create --role detector --source bot-model-v3 --data "$BENCH_TMP/var" 2>/dev/null)
# The previous run's gigabyte or so may still be in writeback: let it finish first.
sync
schedstat() { for t in /proc/"$pid"/task/*; do echo "${t##*/} $(cat "$t/schedstat") $(cat "$t/comm")"; done | sort; }
[ -n "${SCHEDSTAT:-}" ] && schedstat >"$BENCH_TMP/sched.before"
start=$(date +%s.%N)
"${client_time[@]}" "$BIN" import "$BENCH_TMP/rows.ndjson" --server "http://127.0.0.1:$QUELL_PORT" --key "$key" \
  ${IN_FLIGHT:+--in-flight "$IN_FLIGHT"} --progress off --json >"$BENCH_TMP/quell.json"
end=$(date +%s.%N)
[ -n "${SCHEDSTAT:-}" ] && schedstat >"$BENCH_TMP/sched.after"
cat "$BENCH_TMP/quell.json"; echo
s=$(echo "$end - $start" | bc -l)
kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
sqlite_import_reference "$BENCH_TMP/rows.csv"
printf 'quell import --server (%s in flight): %.2fs  %.0f rows/s (bar >= 200000)\n' "${IN_FLIGHT:-default}" "$s" "$(echo "$ROWS / $s" | bc -l)"
printf 'sqlite3 .import (CSV, same indexes, WAL, FULL): %.2fs  %.0f rows/s\n' "$SQLITE_S" "$(echo "$ROWS / $SQLITE_S" | bc -l)"
printf 'ratio quell --server/sqlite3: %.2f\n' "$(echo "$SQLITE_S / $s" | bc -l)"
if [ -n "${SCHEDSTAT:-}" ]; then
  join "$BENCH_TMP/sched.before" "$BENCH_TMP/sched.after" | sort -k6 -n -r |
    awk -v wall="$s" '{run = ($6 - $2) / 1e9; wait = ($7 - $3) / 1e9;
      if (run > 0.1) printf "server thread %s (%s): ran %.2f s (%.0f%% of the import), waited runnable %.2f s\n", $1, $NF, run, 100 * run / wall, wait}'
fi
machine_load
