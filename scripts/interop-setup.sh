#!/usr/bin/env bash
# Installs the independent MoQ Transport draft-18 peer of tests/interop.rs: aiomoqt from PyPI,
# pinned, in a venv at target/interop/venv, with PyJWT for the token-minting example that
# tests/token_examples.rs runs (docs/examples/mint_token.py). aiomoqt's draft-18 releases need Python 3.12 or
# newer (on 3.11 pip would pick 0.5.x, which speaks draft-14 only), so a 3.12+ interpreter is
# looked for on PATH and among pyenv's versions.
set -euo pipefail
cd "$(dirname "$0")/.."

AIOMOQT=aiomoqt==0.13.3
PYJWT=PyJWT==2.10.1
VENV=target/interop/venv

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import aiomoqt" 2>/dev/null \
  && [ "$("$VENV/bin/pip" show aiomoqt 2>/dev/null | sed -n 's/^Version: //p')" = "${AIOMOQT#*==}" ]; then
  if ! "$VENV/bin/python" -c "import jwt" 2>/dev/null; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$PYJWT"
  fi
  exit 0
fi

new_enough() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; }
PY=""
for candidate in python3.13 python3.12 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && new_enough "$(command -v "$candidate")"; then
    PY="$(command -v "$candidate")"; break
  fi
done
if [ -z "$PY" ]; then
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3; do
    if [ -x "$candidate" ] && new_enough "$candidate"; then PY="$candidate"; break; fi
  done
fi
if [ -z "$PY" ]; then
  echo "interop-setup: no Python 3.12 or newer found (PATH or pyenv); aiomoqt's draft-18 releases need it" >&2
  exit 1
fi

echo "installing $AIOMOQT with $PY..."
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "$AIOMOQT" "$PYJWT"
"$VENV/bin/python" -c "import aiomoqt, jwt"
