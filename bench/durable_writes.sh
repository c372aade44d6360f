#!/usr/bin/env bash
# Durable writes: 32 concurrent HTTP clients each creating mitigations on unique entities
# (POST /v1/mitigations, keep-alive) against a fresh data directory with the default
# synchronous=FULL, for DURATION: acknowledged (201) mitigations/s (bar: >= 20,000/s).
# Every 201 is durable before it is sent (the ledger fsyncs the WAL on each group commit),
# so the figure is what group commit gets out of this disk.
#
# Reference, same run, same disk: the sqlite3 shell inserting the same number of rows, 32 per
# transaction, WAL + synchronous=FULL: what fsync costs here, and what a 32-row batch per
# commit could reach at most.
#
# Usage: bench/durable_writes.sh [BUILD_DIR]       (default: build)
# Env:   DURATION (12s), CONNECTIONS (32), THREADS (quell event loops, 2), ROUNDS (2),
#        BENCH_TMPDIR (/var/tmp: must be the real disk, not tmpfs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

BUILD_DIR=${1:-build}
DURATION=${DURATION:-12s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-2}
QUELL_BIN=${QUELL_BIN:-$BUILD_DIR/quell}
need wrk curl sqlite3 "$QUELL_BIN"
bench_init
echo "disk: $(df -T "$BENCH_TMP" | awk 'NR==2{print $1, $2}') ($BENCH_TMP)"

metric() {  # name -> value from /metrics (first sample)
  curl -fsS "http://127.0.0.1:$QUELL_PORT/metrics" | awk -v n="$1" '$1 == n && !seen { printf "%d", $2; seen = 1 }'
}

last_created=0
for round in $(seq "$ROUNDS"); do
  data="$BENCH_TMP/data$round"
  start_quell "$QUELL_BIN" "$data" "$THREADS"
  export QUELL_KEY=$QUELL_DEV_KEY RUN=$round
  [ -n "$QUELL_KEY" ] || { echo "no admin key printed" >&2; exit 1; }
  # One create by hand, so that a broken route fails loudly instead of measuring errors.
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $QUELL_KEY" \
    -d '{"entity":"user:probe","action":"block","ttl":"30d","reason":"probe"}' \
    "http://127.0.0.1:$QUELL_PORT/v1/mitigations")
  [ "$code" = 201 ] || { echo "probe create answered $code" >&2; exit 1; }
  machine_load
  out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$here/create.lua" "http://127.0.0.1:$QUELL_PORT/v1/mitigations")
  read -r created rate other p50 p99 sockerr < <(awk '/^CREATED/{print $2, $3, $4, $5, $6, $7}' <<<"$out")
  commits=$(metric quell_ledger_commits_total || true)
  changes=$(metric quell_ledger_changes_total || true)
  batch=$(awk -v c="${changes:-0}" -v k="${commits:-0}" 'BEGIN { if (k > 0) printf "%.1f", c / k; else print "?" }')
  stop_quell
  # Server-side count after a clean stop: mitigations in the store (201s + the probe).
  active=$(sqlite3 "$data/quell.db" 'SELECT count(*) FROM mitigations' 2>/dev/null || echo "?")
  printf 'round %d  quell: %s created (201) in %s = %s/s; non-201 %s; socket errors %s; latency p50 %s us p99 %s us; %s commits, %s changes/commit; mitigations in the store %s\n' \
    "$round" "$created" "$DURATION" "$rate" "$other" "$sockerr" "$p50" "$p99" "${commits:-?}" "$batch" "$active"
  last_created=$created
done
echo "(bar: >= 20000 acknowledged mitigations/s, synchronous=FULL)"

# Reference: plain sqlite3, same number of rows as the last round, 32 rows per transaction.
rows=$last_created
[ "$rows" -gt 0 ] || rows=64000
per_txn=$CONNECTIONS
ref="$BENCH_TMP/ref.db"
python3 - "$BENCH_TMP/ref.sql" "$rows" "$per_txn" <<'PY'
import sys
path, rows, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
body = '{"entity":"user:w%d","action":"block","state":"active","reason":"durable write bench","source":"manual","actor":"k_bench","expires_at":"2030-01-01T00:00:00Z"}'
with open(path, "w") as f:
    f.write("PRAGMA journal_mode=WAL;\nPRAGMA synchronous=FULL;\n")
    f.write("CREATE TABLE t(seq INTEGER PRIMARY KEY, entity TEXT NOT NULL, body TEXT NOT NULL, hash BLOB);\n")
    f.write("CREATE INDEX t_entity ON t(entity);\n")
    for i in range(0, rows, per):
        f.write("BEGIN;\n")
        for j in range(i, min(rows, i + per)):
            f.write("INSERT INTO t(entity, body, hash) VALUES('user:w%d', '%s', randomblob(32));\n" % (j, body % j))
        f.write("COMMIT;\n")
PY
machine_load
start=$(date +%s.%N)
sqlite3 "$ref" <"$BENCH_TMP/ref.sql" >/dev/null
end=$(date +%s.%N)
awk -v r="$rows" -v p="$per_txn" -v s="$start" -v e="$end" 'BEGIN {
  t = e - s; c = int((r + p - 1) / p);
  printf "reference sqlite3: %d rows, %d per transaction (WAL, synchronous=FULL): %.2f s = %.0f rows/s, %.0f commits/s (%.2f ms per commit)\n", r, p, t, r / t, c / t, 1000 * t / c }'
