# Shared helpers for the load benchmarks under bench/. Source it:
#   . "$(dirname "$0")/lib.sh"
# Every server started here is recorded in BENCH_PIDS and stopped by PID on exit
# (bench_cleanup is installed as the EXIT trap by bench_init).

BENCH_PIDS=()

bench_cleanup() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${BENCH_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "${BENCH_TMP:-}" ] && [ -z "${KEEP_TMP:-}" ] && rm -rf "$BENCH_TMP"
  return 0
}

# bench_init: makes BENCH_TMP (on the real disk, not tmpfs: fsync must cost what it costs).
bench_init() {
  BENCH_TMP=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/quell-bench.XXXXXX")
  trap bench_cleanup EXIT
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The 1-minute load average and the whole uptime line, for the record.
machine_load() { echo "uptime: $(uptime | sed 's/^ *//')"; }

# sqlite_import_reference CSV -> sets SQLITE_S: the seconds sqlite3's own `.import` takes to
# load CSV (import_gen.py's rows) into a table with the columns and indexes of Quell's
# detections table, WAL and synchronous FULL: the reference of the import benchmarks.
sqlite_import_reference() {
  local csv=$1 db="$BENCH_TMP/peer.db" start end
  rm -f "$db" "$db-wal" "$db-shm"
  sqlite3 "$db" <<'SQL' >/dev/null
PRAGMA journal_mode=WAL;
CREATE TABLE detections (id TEXT NOT NULL, source TEXT NOT NULL, type TEXT NOT NULL,
  entity TEXT NOT NULL, score REAL NOT NULL, observed_at TEXT NOT NULL, evidence TEXT, related TEXT);
CREATE UNIQUE INDEX detections_key ON detections (source, id);
CREATE INDEX detections_observed ON detections (observed_at);
SQL
  sync
  start=$(date +%s.%N)
  sqlite3 "$db" <<SQL
PRAGMA synchronous=FULL;
.import --csv --skip 1 $csv detections
SQL
  end=$(date +%s.%N)
  SQLITE_S=$(echo "$end - $start" | bc -l)
  echo "sqlite3 rows: $(sqlite3 "$db" 'SELECT count(*) FROM detections')"
}

need() {
  local tool
  for tool in "$@"; do command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }; done
}

# start_nginx WORKERS -> sets NGINX_PORT; nginx answers every path with a static 200 JSON body
# of the size of a check miss.
start_nginx() {
  local workers=$1 bin=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
  NGINX_PORT=$(free_port)
  mkdir -p "$BENCH_TMP/nginx"
  cat >"$BENCH_TMP/nginx/nginx.conf" <<CONF
worker_processes $workers;
daemon off;
pid $BENCH_TMP/nginx/nginx.pid;
error_log $BENCH_TMP/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / { default_type application/json; return 200 '{"verdict":"allow","mitigations":[],"seq":1000000}'; }
  }
}
CONF
  "$bin" -c "$BENCH_TMP/nginx/nginx.conf" -p "$BENCH_TMP/nginx" &
  NGINX_PID=$!
  BENCH_PIDS+=("$NGINX_PID")
  local _
  for _ in $(seq 200); do
    curl -fsS "http://127.0.0.1:$NGINX_PORT/" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "nginx did not start" >&2
  exit 1
}

stop_nginx() { kill "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; }

# start_quell BIN DATA_DIR THREADS -> sets QUELL_PORT, QUELL_PID and QUELL_DEV_KEY (the admin key
# that --dev prints on the first start of a data directory; empty on later starts).
start_quell() {
  local bin=$1 data=$2 threads=$3
  QUELL_PORT=$(free_port)
  "$bin" serve --data "$data" --listen "127.0.0.1:$QUELL_PORT" --threads "$threads" --dev \
    >"$BENCH_TMP/quell.out" 2>>"$BENCH_TMP/quell.log" &
  QUELL_PID=$!
  BENCH_PIDS+=("$QUELL_PID")
  local _
  for _ in $(seq 1200); do  # rebuilding the index of 1M mitigations takes a few seconds
    kill -0 "$QUELL_PID" 2>/dev/null || { echo "quell exited:" >&2; tail -20 "$BENCH_TMP/quell.log" >&2; exit 1; }
    curl -fsS "http://127.0.0.1:$QUELL_PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.05
  done
  QUELL_DEV_KEY=$(sed -n 's/.*admin key (shown once): \([^ ]*\).*/\1/p' "$BENCH_TMP/quell.out")
}

stop_quell() { kill "$QUELL_PID" 2>/dev/null || true; wait "$QUELL_PID" 2>/dev/null || true; }

# wrk_result OUTPUT -> "rps p99_us non2xx" from the RESULT line printed by the Lua scripts' done().
wrk_result() { awk '/^RESULT/{print $2, $3, $4}' <<<"$1"; }
