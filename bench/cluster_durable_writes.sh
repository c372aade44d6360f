#!/usr/bin/env bash
# Durable writes through three Quell nodes on one PostgreSQL 15 (issue 8): a throwaway
# cluster with PostgreSQL's durable defaults (fsync, synchronous_commit and
# full_page_writes on; data on the real disk), three `quell serve --postgres` processes,
# and one wrk per node creating mitigations on unique entities (POST /v1/mitigations,
# keep-alive) for DURATION. Reports acknowledged (201) mitigations/s in total (bar:
# >= 10,000/s), each node's rate, and the mitigations the database holds afterwards.
#
# Reference, same run, same cluster: pgbench with a comparable insert, one transaction per
# mitigation (a change row and a mitigation row, in copies of Quell's tables with the
# same indexes), 3 x CONNECTIONS clients (at most 150): what this PostgreSQL commits durably when every
# client commits on its own (its group commit, no chain-head lock).
#
# Usage: bench/cluster_durable_writes.sh [BUILD_DIR]     (default: build)
# Env:   DURATION (10s), CONNECTIONS (per node, 64), THREADS (quell event loops per node, 1)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

BUILD_DIR=${1:-build}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
QUELL_BIN=${QUELL_BIN:-$BUILD_DIR/quell}
CLUSTER_BIN=${CLUSTER_BIN:-$BUILD_DIR/src/ledger/postgres/quell_pg_test_cluster}
need wrk curl psql pgbench "$QUELL_BIN" "$CLUSTER_BIN"
bench_init

# The cluster helper prints "url ..." and stops the cluster (removing its files) when its
# stdin closes: it is kept open on fd 7 until this script exits.
mkfifo "$BENCH_TMP/cluster.in"
"$CLUSTER_BIN" --durable <"$BENCH_TMP/cluster.in" >"$BENCH_TMP/cluster.out" 2>&1 &
CLUSTER_PID=$!
exec 7>"$BENCH_TMP/cluster.in"
for _ in $(seq 600); do
  grep -q '^url \|^error' "$BENCH_TMP/cluster.out" && break
  sleep 0.05
done
URL=$(sed -n 's/^url //p' "$BENCH_TMP/cluster.out")
[ -n "$URL" ] || { echo "cluster: $(cat "$BENCH_TMP/cluster.out")" >&2; exit 1; }
finish() {
  bench_cleanup
  exec 7>&-
  wait "$CLUSTER_PID" 2>/dev/null || true
}
trap finish EXIT
sql() { psql -X -A -t -q -v ON_ERROR_STOP=1 -d "$URL" -c "$1"; }
echo "postgres: $(sql 'SELECT version()' | cut -d' ' -f1-2); fsync=$(sql 'SHOW fsync')" \
  "synchronous_commit=$(sql 'SHOW synchronous_commit')" \
  "full_page_writes=$(sql 'SHOW full_page_writes'); data on" \
  "$(df -T "${TMPDIR:-/tmp}" | awk 'NR==2{print $1, $2}')"

"$QUELL_BIN" migrate --postgres "$URL" >/dev/null
KEY=$("$QUELL_BIN" keys create --role admin --postgres "$URL" | awk 'NF{k=$1} END{print k}')

ports=()
for n in 1 2 3; do
  port=$(free_port)
  "$QUELL_BIN" serve --postgres "$URL" --data "$BENCH_TMP/node$n" --listen "127.0.0.1:$port" \
    --threads "$THREADS" >"$BENCH_TMP/node$n.out" 2>"$BENCH_TMP/node$n.log" &
  BENCH_PIDS+=("$!")
  for _ in $(seq 600); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.05
  done
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" \
    -d "{\"entity\":\"user:probe$n\",\"action\":\"block\",\"ttl\":\"30d\",\"reason\":\"probe\"}" \
    "http://127.0.0.1:$port/v1/mitigations")
  [ "$code" = 201 ] || { echo "node $n: probe create answered $code" >&2; tail -5 "$BENCH_TMP/node$n.log" >&2; exit 1; }
  ports+=("$port")
done

machine_load
echo "quell: 3 nodes x $CONNECTIONS connections, $DURATION, $THREADS event loop(s) per node"
seq_before=$(sql 'SELECT seq FROM chain_head')
for n in 1 2 3; do
  QUELL_KEY=$KEY RUN="n$n" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$here/create.lua" \
    "http://127.0.0.1:${ports[$((n - 1))]}/v1/mitigations" >"$BENCH_TMP/wrk$n.out" 2>&1 &
  WRK_PIDS[$n]=$!
done
sleep 3
# Where the CPU goes (2 cores shared by the nodes, PostgreSQL and wrk): one top sample.
top -b -n 1 -w 200 | awk 'NR > 7 && $9 + 0 >= 3 {print "  cpu% " $9, $12}' | head -12
for n in 1 2 3; do wait "${WRK_PIDS[$n]}"; done
seq_after=$(sql 'SELECT seq FROM chain_head')
total=0
total_rate=0
for n in 1 2 3; do
  read -r created rate other p50 p99 sockerr < <(awk '/^CREATED/{print $2, $3, $4, $5, $6, $7}' "$BENCH_TMP/wrk$n.out")
  printf 'node %d: %s created (201) = %s/s; non-201 %s; socket errors %s; latency p50 %s us p99 %s us\n' \
    "$n" "$created" "$rate" "$other" "$sockerr" "$p50" "$p99"
  total=$((total + created))
  total_rate=$((total_rate + rate))
done
stored=$(sql 'SELECT count(*) FROM mitigations')
for n in 1 2 3; do
  c=$(curl -fsS "http://127.0.0.1:${ports[$((n - 1))]}/metrics" |
    awk '$1 == "quell_ledger_commits_total" {print $2}')
  m=$(curl -fsS "http://127.0.0.1:${ports[$((n - 1))]}/metrics" |
    awk '$1 == "quell_ledger_changes_total" {print $2}')
  echo "node $n: ledger commits ${c:-?}, changes ${m:-?} ($(awk -v c="${c:-0}" -v m="${m:-0}" 'BEGIN{if (c > 0) printf "%.1f", m / c; else print "?"}') per commit)"
done
echo "quell total: $total created in $DURATION = $total_rate/s (bar: >= 10000/s);" \
  "changes appended $((seq_after - seq_before)); mitigations in the database $stored (3 probes)"
# Which tables PostgreSQL scanned how (a sequential scan under the chain head lock shows here).
sql "SELECT '  table ' || relname || ': seq_scan ' || seq_scan || ' (' || seq_tup_read ||
            ' rows), idx_scan ' || COALESCE(idx_scan, 0) || ', dead rows ' || n_dead_tup
     FROM pg_stat_user_tables WHERE seq_scan + COALESCE(idx_scan, 0) > 0
     ORDER BY seq_tup_read DESC LIMIT 6"
machine_load

# Reference: pgbench, the same two rows per mitigation, one transaction each.
sql "CREATE TABLE pgb_changes (LIKE changes INCLUDING ALL);
     CREATE TABLE pgb_mitigations (LIKE mitigations INCLUDING ALL);
     CREATE SEQUENCE pgb_seq;"
cat >"$BENCH_TMP/insert.sql" <<'EOF'
\set r random(1, 1000000000)
BEGIN;
INSERT INTO pgb_changes (seq, at, kind, actor, subject, entity, payload, prev_hash, hash)
  VALUES (nextval('pgb_seq'), 1764380000000000, 0, 'k_admin', 'm_pgbench_' || CAST(:client_id AS text) || '_' || CAST(:r AS text),
          'user' || chr(58) || 'pgb' || CAST(:client_id AS text) || '_' || CAST(:r AS text),
          '{"id":"m_pgbench","entity":"user-pgb","action":"block","state":"active","created_at":"2026-11-29T02h00m00Z","updated_at":"2026-11-29T02h00m00Z","starts_at":"2026-11-29T02h00m00Z","expires_at":"2026-12-29T02h00m00Z","reason":"durable write bench","source":"","policy":"","policy_version":0,"actor":"k_admin","detections":[],"seq":1}',
          '4f1c2a7d9e0b3c5a6f8e1d2c3b4a59687f6e5d4c3b2a19087f6e5d4c3b2a1908',
          '9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d');
INSERT INTO pgb_mitigations (id, entity, action, state, created_at, due_at, source, policy, seq)
  VALUES ('m_pgbench_' || CAST(:client_id AS text) || '_' || CAST(:r AS text), 'user' || chr(58) || 'pgb' || CAST(:client_id AS text) || '_' || CAST(:r AS text), 'block',
          'active', 1764380000000000, 1766980000000000, '', '', currval('pgb_seq'))
  ON CONFLICT (id) DO NOTHING;
END;
EOF
clients=$((3 * CONNECTIONS))
[ "$clients" -le 150 ] || clients=150  # the cluster's max_connections is 200; the nodes hold ~25
machine_load
pgbench -n -M prepared -c "$clients" -j 2 -T "${DURATION%s}" -f "$BENCH_TMP/insert.sql" "$URL" \
  >"$BENCH_TMP/pgbench.out" 2>&1 || true
grep -q "^tps" "$BENCH_TMP/pgbench.out" || { grep -m3 error "$BENCH_TMP/pgbench.out" >&2; exit 1; }
tps=$(awk '/^tps/{printf "%d", $3}' "$BENCH_TMP/pgbench.out")
lat=$(awk '/^latency average/{print $4}' "$BENCH_TMP/pgbench.out")
echo "pgbench: $clients clients, one mitigation (2 rows) per transaction, $DURATION: $tps tps" \
  "(latency average $lat ms)"
machine_load
