#!/usr/bin/env bash
# Runs a command with a PostgreSQL server of its own: `initdb` into a temp directory, trust
# authentication on 127.0.0.1, a free port, `ROOMCAST_TEST_POSTGRES_URL` pointing at it; the
# server is stopped (by its PID) and its data removed when the command ends.
#   bash scripts/with-postgres.sh cargo test --test api
set -euo pipefail
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
dir=$(mktemp -d /tmp/roomcast-pg.XXXXXX)
run() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run "$bin/initdb" -A trust -U roomcast -E UTF8 --no-sync -D "$dir/data" >/dev/null
run "$bin/postgres" -D "$dir/data" -p "$port" -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories="$dir" -c fsync=off -c max_connections=300 >"$dir/log" 2>&1 &
pid=$!
stop() {
  kill "$(head -1 "$dir/data/postmaster.pid" 2>/dev/null || echo "$pid")" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap stop EXIT
for _ in $(seq 100); do
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break
  sleep 0.1
done
"$bin/pg_isready" -q -h 127.0.0.1 -p "$port" || { cat "$dir/log"; exit 1; }
export ROOMCAST_TEST_POSTGRES_URL="postgres://roomcast@127.0.0.1:$port/postgres"
"$@"
