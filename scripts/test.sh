#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and end-to-end tests, and the headless
# Chromium test. Installs what it needs (Chromium, ffmpeg, playwright-core) on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium..."
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
# Emoji in the chat and in README's screenshots need a colour emoji font.
if ! fc-list 2>/dev/null | grep -qi "color emoji"; then
  echo "installing an emoji font..."
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq fonts-noto-color-emoji >/dev/null \
    || { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq fonts-noto-color-emoji >/dev/null; }
fi
# The HTTPS browser test makes a CA with openssl and trusts it in an NSS database (certutil).
if ! command -v certutil >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
  echo "installing certutil and openssl..."
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libnss3-tools openssl >/dev/null \
    || { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libnss3-tools openssl >/dev/null; }
fi
# roomcast publish/subscribe are tested with Debian's real ffmpeg and ffprobe.
if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
  echo "installing ffmpeg..."
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null \
    || { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null; }
fi
# The PostgreSQL store and the cluster are tested with Debian's real PostgreSQL and Redis
# servers, each test starting its own in a temp directory.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; then
  echo "installing postgresql and redis-server..."
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql redis-server >/dev/null \
    || { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql redis-server >/dev/null; }
fi
# tests/interop.rs runs an independent draft-18 client: aiomoqt from PyPI.
bash scripts/interop-setup.sh
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

# A fresh clone builds everything once: incremental compilation data would only cost time
# and disk there.
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL=0; fi
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo build --release --bin roomcast
cargo test --all-targets
# The same store queries on PostgreSQL: the suites that exercise the store, each relay on a
# database of its own on one real server.
bash scripts/with-services.sh cargo test --test api --test moderation --test roles \
  --test grants --test attachments --test abuse --test sessions --test admin
# The browser tests too: tests/browser/cluster.test.mjs runs two nodes on those servers.
bash scripts/with-services.sh node --test --test-concurrency=1 tests/browser/
