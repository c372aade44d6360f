#!/usr/bin/env bash
# POST /v1/events with the Redis counter backend (bar: >= 100,000 events/s), with
# redis-benchmark INCR at the same pipelining as the reference: bench/events_http.sh
# with BACKEND=redis. Usage: bench/events_redis.sh [BUILD_DIR]
exec env BACKEND=redis "$(dirname "$0")/events_http.sh" "$@"
