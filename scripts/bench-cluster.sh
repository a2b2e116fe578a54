#!/usr/bin/env bash
# The cluster benchmark: 1 publisher with S subscribers spread over 3 relay nodes (a Redis and
# a PostgreSQL of their own, on loopback) against the same S on one node, measured in the
# same run; relay CPU is summed over the nodes.
#   bash scripts/bench-cluster.sh [S]   (default 100)
set -euo pipefail
cd "$(dirname "$0")/.."
subs=${1:-100}
cargo build --release --bin roomcast
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir /tmp >/dev/null 2>&1 &
redis=$!
trap 'kill $redis 2>/dev/null || true' EXIT
bash scripts/with-postgres.sh bash -c "
  ./target/release/roomcast bench --nodes 3 --redis-url redis://127.0.0.1:$port/ \
    --database-url \"\$ROOMCAST_TEST_POSTGRES_URL\" --subscribers $subs --duration 10s
  ./target/release/roomcast bench --subscribers $subs --duration 10s
"
