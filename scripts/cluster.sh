#!/usr/bin/env bash
# A three-node roomcast cluster on this machine: a redis-server and a PostgreSQL server of its
# own (data in a temp directory), and nodes a, b (region eu) and c (region us) on 127.0.0.1:
#   a: http://127.0.0.1:8081   b: http://127.0.0.1:8082   c: http://127.0.0.1:8083
# The admin password is `admin-password` on every node (one shared store). Ctrl-C stops
# everything (by PID) and removes the data.
#   bash scripts/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin roomcast
. scripts/lib/services.sh
dir=$(mktemp -d /tmp/roomcast-cluster.XXXXXX)
chmod 755 "$dir"
pids=()
stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_postgres "$dir/pg"
  [ -n "${redis_pid:-}" ] && kill "$redis_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap stop EXIT INT TERM
start_redis "$dir/redis"
start_postgres "$dir/pg"

secret() { python3 -c 'import secrets; print(secrets.token_hex(32))'; }
export ROOMCAST_TOKEN_SECRET=$(secret) ROOMCAST_CLUSTER_SECRET=$(secret)
export ROOMCAST_DATABASE_URL=$pg_url ROOMCAST_REDIS_URL=$redis_url
export ROOMCAST_ADMIN_PASSWORD=admin-password
i=0
for node in a:eu b:eu c:us; do
  id=${node%%:*} region=${node##*:}
  i=$((i + 1))
  ./target/release/roomcast serve --node-id "$id" --node-region "$region" \
    --http-listen "127.0.0.1:808$i" --webtransport-listen "127.0.0.1:44${i}3" \
    --quic-listen "127.0.0.1:44${i}4" --whip-listen "127.0.0.1:44${i}5" \
    --data-dir "$dir/$id/data" --cert-dir "$dir/$id/certs" >"$dir/$id.log" 2>&1 &
  pids+=($!)
  # One after the other: the first applies the migrations.
  for _ in $(seq 100); do grep -q "roomcast ready" "$dir/$id.log" 2>/dev/null && break; sleep 0.1; done
  echo "node $id ($region): http://127.0.0.1:808$i  logs: $dir/$id.log"
done
echo "Redis 127.0.0.1:$redis_port, PostgreSQL 127.0.0.1:$pg_port; Ctrl-C stops the cluster."
wait
