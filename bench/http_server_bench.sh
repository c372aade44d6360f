#!/usr/bin/env bash
# Compares quell::http::Server (http_echo_server: a fixed 200 JSON answer) with
# nginx returning a static 200, same wrk settings, same run. Prints req/s and
# p99 for both and the ratio, then p99 of each at half of nginx's rate.
#
# Usage: bench/http_server_bench.sh [BUILD_DIR]   (default: build)
# Env:   DURATION (10s), CONNECTIONS (32), THREADS (wrk threads, 1),
#        SERVER_THREADS (echo server event loops, 0 = nproc),
#        NGINX_WORKERS (auto = one per CPU, the fair match for SERVER_THREADS=0)
set -euo pipefail

BUILD_DIR=${1:-build}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
SERVER_THREADS=${SERVER_THREADS:-0}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
ECHO_BIN=${ECHO_BIN:-$BUILD_DIR/src/api/http/http_echo_server}
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}

for tool in wrk "$NGINX_BIN" "$ECHO_BIN"; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done

tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- nginx: static 200 ---
nginx_port=$(free_port)
cat >"$tmp/nginx.conf" <<CONF
worker_processes $NGINX_WORKERS;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$nginx_port;
    location / { default_type application/json; return 200 '{"verdict":"allow","mitigations":[],"seq":0}'; }
  }
}
CONF
"$NGINX_BIN" -c "$tmp/nginx.conf" -p "$tmp" &
pids+=($!)

# --- quell echo server ---
"$ECHO_BIN" --port 0 --threads "$SERVER_THREADS" >"$tmp/echo.out" &
pids+=($!)
for _ in $(seq 100); do
  grep -q '^port ' "$tmp/echo.out" 2>/dev/null && break
  sleep 0.05
done
echo_port=$(awk '/^port /{print $2}' "$tmp/echo.out")
[ -n "$echo_port" ] || { echo "http_echo_server did not start" >&2; exit 1; }
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$nginx_port/" >/dev/null 2>&1 && break
  sleep 0.05
done

# A wrk script that paces each connection to a target total rate (for the
# half-load latency run) and prints p99 in microseconds.
cat >"$tmp/report.lua" <<'LUA'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.0f %.0f %d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(99), summary.errors.status))
end
LUA
cat >"$tmp/paced.lua" <<'LUA'
local rate = tonumber(os.getenv("PACED_RATE"))       -- requests/s, all connections
local conns = tonumber(os.getenv("PACED_CONNS"))
local mean_ms = conns * 1000.0 / rate
math.randomseed(os.time())
delay = function()
  -- wrk delays in whole ms: draw floor/ceil so the mean is exact.
  local base = math.floor(mean_ms)
  if math.random() < (mean_ms - base) then return base + 1 end
  return base
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.0f %.0f %d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(99), summary.errors.status))
end
LUA

run_wrk() {  # url script -> "rps p99_us errors"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s "$2" "$1" | awk '/^RESULT/{print $2, $3, $4}'
}

url_path="/v1/check?entity=user%3A42"
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION keep-alive; nginx worker_processes $NGINX_WORKERS;" \
     "http_echo_server threads $SERVER_THREADS (0 = nproc = $(nproc))"
read -r n_rps n_p99 n_err < <(run_wrk "http://127.0.0.1:$nginx_port$url_path" "$tmp/report.lua")
read -r q_rps q_p99 q_err < <(run_wrk "http://127.0.0.1:$echo_port$url_path" "$tmp/report.lua")
printf '%-18s %10s req/s  p99 %6s us  non-2xx %s\n' "nginx" "$n_rps" "$n_p99" "$n_err"
printf '%-18s %10s req/s  p99 %6s us  non-2xx %s\n' "quell http" "$q_rps" "$q_p99" "$q_err"
awk -v q="$q_rps" -v n="$n_rps" 'BEGIN { printf "ratio quell/nginx  %.2f (target >= 0.70)\n", q / n }'

half=$(awk -v n="$n_rps" 'BEGIN { printf "%d", n / 2 }')
# wrk's delay() has millisecond granularity and timer slack, so a paced run
# falls short of its target; calibrate each server with a 3 s run first.
paced() {  # url -> "rps p99_us"
  local rate=$half
  export PACED_CONNS=$CONNECTIONS PACED_RATE=$rate
  local got
  got=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s "$tmp/paced.lua" "$1" | awk '/^RESULT/{print $2}')
  rate=$(awk -v h="$half" -v g="$got" 'BEGIN { r = (g > 0) ? h * h / g : h; if (r > 4 * h) r = 4 * h; printf "%d", r }')
  PACED_RATE=$rate run_wrk "$1" "$tmp/paced.lua" | awk '{print $1, $2}'
}
read -r nh_rps nh_p99 < <(paced "http://127.0.0.1:$nginx_port$url_path")
read -r qh_rps qh_p99 < <(paced "http://127.0.0.1:$echo_port$url_path")
echo "half load (target $half req/s = nginx/2, paced by wrk delay()):"
printf '%-18s %10s req/s  p99 %6s us\n' "nginx" "$nh_rps" "$nh_p99"
printf '%-18s %10s req/s  p99 %6s us  (target <= 1000 us)\n' "quell http" "$qh_rps" "$qh_p99"
