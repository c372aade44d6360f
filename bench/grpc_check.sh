#!/usr/bin/env bash
# gRPC Enforcement.CheckStream throughput (issue 6 bar: >= 100,000 checks/s with 32
# concurrent streams): starts `quell serve --dev` on a fresh data directory with a gRPC
# listener, then runs grpc_check_bench against it and stops the server.
#
# Usage: bench/grpc_check.sh [BUILD_DIR] [extra grpc_check_bench args]   (default: build)
# Env:   SECONDS_PER_ROUND (10), ROUNDS (3), CONCURRENCY (32), PERF=1 adds the server's
#        context switches and task clock (perf stat).
set -euo pipefail
BUILD=${1:-build}
shift || true
BIN=$BUILD/quell
BENCH=$BUILD/src/grpc/grpc_check_bench
SECS=${SECONDS_PER_ROUND:-10}
ROUNDS=${ROUNDS:-3}
CONCURRENCY=${CONCURRENCY:-32}
[ -x "$BENCH" ] || BENCH=$(find "$BUILD" -name grpc_check_bench -type f -perm -u+x | head -1)
for round in $(seq "$ROUNDS"); do
  D=$(mktemp -d /tmp/quell-grpc-bench.XXXX)
  HP=$((20000 + RANDOM % 20000))
  GP=$((HP + 1))
  "$BIN" serve --data "$D" --listen "127.0.0.1:$HP" --grpc-listen "127.0.0.1:$GP" --threads 2 --dev \
    >"$D/out" 2>"$D/log" &
  PID=$!
  trap 'kill $PID 2>/dev/null || true; rm -rf "$D"' EXIT
  for _ in $(seq 100); do
    grep -q "admin key" "$D/out" 2>/dev/null && curl -sf "http://127.0.0.1:$HP/healthz" >/dev/null && break
    sleep 0.1
  done
  KEY=$(sed -n 's/.*admin key (shown once): \(\S*\).*/\1/p' "$D/out")
  echo "round $round  uptime: $(uptime)"
  PP=""
  if [ -n "${PERF:-}" ]; then
    (sleep 1; perf stat -e context-switches,task-clock -p "$PID" -- sleep $((SECS - 2)) 2>&1 |
      grep -E "context|task-clock") &
    PP=$!
  fi
  "$BENCH" --target "127.0.0.1:$GP" --key "$KEY" --concurrency "$CONCURRENCY" --seconds "$SECS" \
    --mode stream --server-pid "$PID" "$@"
  [ -n "$PP" ] && wait "$PP"
  kill "$PID"
  wait "$PID" 2>/dev/null || true
  rm -rf "$D"
  trap - EXIT
done
