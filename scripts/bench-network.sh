#!/usr/bin/env bash
# roomcast and another draft-18 relay (moq-relay-ietf 0.8 from crates.io), side by side in one
# run, behind the same seeded impairment path: 1 publisher direct to the relay, N subscribers
# through `roomcast bench --path`, 20 ms +- 5 ms each way and 0/1/5/10 % loss. Prints a
# Markdown table. Usage: scripts/bench-network.sh [subscribers] [seconds] [congestion]
# Env: LOSSES (default "0 1 5 10"), MOQ_RELAY_IETF (the other relay's binary), ROOMCAST_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."

SUBS=${1:-20}
SECS=${2:-20}
CC=${3:-}
LOSSES=${LOSSES:-"0 1 5 10"}
OTHER=${MOQ_RELAY_IETF:-target/bench-tools/bin/moq-relay-ietf}
if [ ! -x "$OTHER" ]; then
  echo "installing moq-relay-ietf 0.8 into target/bench-tools (once)..." >&2
  cargo install -q moq-relay-ietf --version '^0.8' --root target/bench-tools >&2
fi
# ROOMCAST_BIN measures a given build instead of building this checkout.
BIN=${ROOMCAST_BIN:-target/release/roomcast}
[ -n "${ROOMCAST_BIN:-}" ] || cargo build -q --release --bin roomcast

DIR=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT

SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
EXTRA=()
[ -n "$CC" ] && EXTRA=(--congestion "$CC")
RUST_LOG=warn "$BIN" serve --webtransport-listen 127.0.0.1:0 --quic-listen 127.0.0.1:0 --whip-listen 127.0.0.1:0 \
  --http-listen 127.0.0.1:0 --data-dir "$DIR/data" --cert-dir "$DIR/certs" --max-sessions-per-address 100000 \
  --token-secret "$SECRET" "${EXTRA[@]}" > "$DIR/ready" 2>"$DIR/roomcast.log" &
PIDS+=($!)
RC_PID=$!
for _ in $(seq 100); do grep -q '^roomcast ready' "$DIR/ready" 2>/dev/null && break; sleep 0.1; done
READY=$(grep '^roomcast ready' "$DIR/ready")
QUIC=$(echo "$READY" | sed -E 's/.* quic=([^ ]+).*/\1/')
HASH=$(echo "$READY" | sed -E 's/.* cert_sha256=([^ ]+).*/\1/')

# The other relay uses roomcast's development certificate, so one hash pins both.
PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RUST_LOG=warn "$OTHER" --bind "127.0.0.1:$PORT" --tls-cert "$DIR/certs/dev-cert.pem" \
  --tls-key "$DIR/certs/dev-key.pem" > "$DIR/other.log" 2>&1 &
PIDS+=($!)
OTHER_PID=$!
sleep 1

run() { # relay-name url pid loss [token-secret]
  local name=$1 url=$2 pid=$3 loss=$4 secret=${5:-}
  local args=(bench --relay "$url" --cert-sha256 "$HASH" --relay-pid "$pid" --publishers 1
    --subscribers "$SUBS" --duration "${SECS}s" --video-kbps 1000 --fps 30 --gop-secs 2
    --audio-kbps 64 --path "delay=20ms,jitter=5ms,loss=${loss}%" --seed 1)
  [ -n "$secret" ] && args+=(--token-secret "$secret")
  local out
  out=$("$BIN" "${args[@]}" 2>"$DIR/bench.err") || { echo "| $loss % | $name | bench failed: $(tail -1 "$DIR/bench.err") |"; return; }
  local f; f() { echo "$out" | awk -v k="$1" '$1 == k { print $2 }'; }
  local expected lost
  expected=$(f objects_expected); lost=$(f objects_lost)
  printf '| %s %% | %s | %s | %s (%.1f %%) | %s | %s | %s |\n' "$loss" "$name" "$(f subscriptions_served)" \
    "$lost" "$(echo "$lost $expected" | awk '{ print ($2 > 0) ? 100 * $1 / $2 : 0 }')" \
    "$(f latency_p50_ms)" "$(f latency_p99_ms)" "$(f objects_corrupted)"
}

echo "$SUBS subscribers x (video 1 Mbit/s, 2 s GOP + audio 64 kbit/s), ${SECS} s, path 20 ms +- 5 ms each way, seed 1${CC:+, roomcast congestion $CC}"
echo
echo "| loss | relay | subscriptions served | objects missing | p50 ms | p99 ms | corrupted |"
echo "|---|---|---|---|---|---|---|"
for loss in $LOSSES; do
  run roomcast "$QUIC" "$RC_PID" "$loss" "$SECRET"
  run moq-relay-ietf "moqt://127.0.0.1:$PORT/" "$OTHER_PID" "$loss"
done
