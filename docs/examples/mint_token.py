"""Mints a roomcast media token in an application's own backend with PyJWT: an HS256 JWT
signed with the relay's token secret (docs/tokens.md has the format).

    pip install PyJWT
    ROOMCAST_TOKEN_SECRET=... python3 mint_token.py <room> <identity> [grants] [ttl-seconds]

grants: comma separated, of publish, subscribe, chat, admin (default publish,subscribe);
ttl: seconds the token stays valid (default 3600; the relay refuses more than 86400).
"""

import os
import sys
import time
import uuid

import jwt


def mint_token(secret, room, identity, grants=("publish", "subscribe"), ttl_seconds=3600):
    """The token for `identity` in `room` with `grants`, valid for `ttl_seconds` from now."""
    now = int(time.time())
    claims = {
        "sub": identity.lower(),  # identities (ASCII) are compared in lower case
        "room": room,
        "grants": list(grants),
        "iat": now,
        "nbf": now,
        "exp": now + ttl_seconds,
        "jti": str(uuid.uuid4()),  # unique per token: kicks and bans revoke tokens by it
    }
    return jwt.encode(claims, secret, algorithm="HS256")


if __name__ == "__main__":
    secret = os.environ.get("ROOMCAST_TOKEN_SECRET")
    if len(sys.argv) < 3 or not secret:
        sys.exit("usage: ROOMCAST_TOKEN_SECRET=... python3 mint_token.py <room> <identity> [grants] [ttl-seconds]")
    room, identity = sys.argv[1], sys.argv[2]
    grants = sys.argv[3].split(",") if len(sys.argv) > 3 else ["publish", "subscribe"]
    ttl = int(sys.argv[4]) if len(sys.argv) > 4 else 3600
    print(mint_token(secret, room, identity, grants, ttl))
