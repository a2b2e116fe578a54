#!/usr/bin/env bash
# Runs a command with a PostgreSQL and a Redis server of its own (data in a temp directory,
# 127.0.0.1, free ports): `ROOMCAST_TEST_POSTGRES_URL` and `ROOMCAST_TEST_REDIS_URL` point at
# them. Both are stopped (by PID) and their data removed when the command ends.
#   bash scripts/with-services.sh cargo test --test api
set -euo pipefail
. "$(dirname "$0")/lib/services.sh"
dir=$(mktemp -d /tmp/roomcast-services.XXXXXX)
stop() {
  stop_postgres "$dir/pg"
  [ -n "${redis_pid:-}" ] && kill "$redis_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap stop EXIT
start_postgres "$dir/pg"
start_redis "$dir/redis"
export ROOMCAST_TEST_POSTGRES_URL=$pg_url ROOMCAST_TEST_REDIS_URL=$redis_url
"$@"
