#!/usr/bin/env bash
# Backtest of 1M stored detections against the example policy set (25 policies, >= 20 on
# detections): loads COUNT detections into a fresh data directory (bench/load_detections,
# straight through the store, with the replies the set gives them), then times
#   quell policy backtest examples/policies/music.yaml --from .. --to .. --data DIR
# and the same with a candidate whose thresholds are lowered (so that the "newly" bucket
# fills). Bar: <= 10 s for 1M detections.
#
# Usage: bench/backtest.sh [BUILD_DIR]     (default: build)
# Env:   COUNT (1000000), BENCH_TMPDIR (/var/tmp).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/lib.sh"

BUILD_DIR=${1:-build}
COUNT=${COUNT:-1000000}
QUELL_BIN=${QUELL_BIN:-$BUILD_DIR/quell}
LOADER=${LOADER:-$BUILD_DIR/bench/load_detections}
need "$QUELL_BIN" "$LOADER"
bench_init
set_file="$root/examples/policies/music.yaml"
data="$BENCH_TMP/data"

load=$("$LOADER" --data "$data" --policies "$set_file" --count "$COUNT")
echo "$load"
read -r from to < <(awk '/^window:/{print $3, $5}' <<<"$load")
echo "store: $(du -sh "$data" | cut -f1)"

sed -e 's/detection.score >= 0.75 \&\& detection.score < 0.9/detection.score >= 0.6 \&\& detection.score < 0.9/' \
    -e 's/detection.score >= 0.85/detection.score >= 0.7/' "$set_file" >"$BENCH_TMP/candidate.yaml"

run() {  # name file
  machine_load
  local start end
  start=$(date +%s.%N)
  /usr/bin/time -f "max RSS %M KiB, user %U s, sys %S s" -o "$BENCH_TMP/time.txt" \
    "$QUELL_BIN" policy backtest "$2" --from "$from" --to "$to" --data "$data" >"$BENCH_TMP/$1.txt" 2>"$BENCH_TMP/$1.err"
  end=$(date +%s.%N)
  awk -v s="$start" -v e="$end" -v n="$1" 'BEGIN { printf "%s: wall %.2f s", n, e - s }'
  echo " ($(cat "$BENCH_TMP/time.txt"); $(tail -1 "$BENCH_TMP/$1.err"))"
  grep -E "^(backtest of|TOTAL)" "$BENCH_TMP/$1.txt"
}
run "same set" "$set_file"
run "lowered thresholds" "$BENCH_TMP/candidate.yaml"
echo "(bar: <= 10 s for 1M stored detections against a >= 20-policy set)"
