// Mints a roomcast media token in an application's own backend, with nothing but Node's
// `crypto`: an HS256 JWT signed with the relay's token secret (docs/tokens.md has the format).
//
//   ROOMCAST_TOKEN_SECRET=... node mint-token.mjs <room> <identity> [grants] [ttl-seconds]
//
// grants: comma separated, of publish, subscribe, chat, admin (default publish,subscribe);
// ttl: seconds the token stays valid (default 3600; the relay refuses more than 86400).
import { createHmac, randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';

const base64url = (data) => Buffer.from(data).toString('base64url');

/** The token for `identity` in `room` with `grants`, valid for `ttlSeconds` from now. */
export function mintToken(secret, { room, identity, grants = ['publish', 'subscribe'], ttlSeconds = 3600 }) {
  const now = Math.floor(Date.now() / 1000);
  const header = { alg: 'HS256', typ: 'JWT' };
  const claims = {
    sub: identity.toLowerCase(), // identities (ASCII) are compared in lower case
    room,
    grants,
    iat: now,
    nbf: now,
    exp: now + ttlSeconds,
    jti: randomUUID(), // unique per token: kicks and bans revoke tokens by it
  };
  const body = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}`;
  const signature = createHmac('sha256', secret).update(body).digest('base64url');
  return `${body}.${signature}`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [room, identity, grants = 'publish,subscribe', ttl = '3600'] = process.argv.slice(2);
  const secret = process.env.ROOMCAST_TOKEN_SECRET;
  if (!room || !identity || !secret) {
    console.error('usage: ROOMCAST_TOKEN_SECRET=... node mint-token.mjs <room> <identity> [grants] [ttl-seconds]');
    process.exit(2);
  }
  console.log(mintToken(secret, { room, identity, grants: grants.split(','), ttlSeconds: Number(ttl) }));
}
