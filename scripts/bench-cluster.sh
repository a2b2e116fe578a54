#!/usr/bin/env bash
# The cluster benchmark: 1 publisher with S subscribers spread over 3 relay nodes (a Redis and
# a PostgreSQL of their own, on loopback) against the same S on one node, measured in the
# same run; relay CPU is summed over the nodes.
#   bash scripts/bench-cluster.sh [S]   (default 100)
set -euo pipefail
cd "$(dirname "$0")/.."
subs=${1:-100}
cargo build --release --bin roomcast
bash scripts/with-services.sh bash -c "
  ./target/release/roomcast bench --nodes 3 --redis-url \"\$ROOMCAST_TEST_REDIS_URL\" \
    --database-url \"\$ROOMCAST_TEST_POSTGRES_URL\" --subscribers $subs --duration 10s
  ./target/release/roomcast bench --subscribers $subs --duration 10s
"
