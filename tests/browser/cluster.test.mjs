// A cluster in the browser: two `roomcast serve` nodes on the PostgreSQL and Redis that
// scripts/with-services.sh started. The page follows the join answer's `relay` (the least
// loaded node), so two members of one room land on different nodes and see each other through
// the node-to-node hop; when a member's node is killed, her page asks for a new placement and
// goes on through the surviving node.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { startRelay, publish, launchBrowser, waitFor, signUp, createRoom, joinRoom, frames } from './harness.mjs';

test('pages connect where the join places them and move when that node dies', { timeout: 180000 }, async () => {
  const database = process.env.ROOMCAST_TEST_POSTGRES_URL;
  const redis = process.env.ROOMCAST_TEST_REDIS_URL;
  assert.ok(database && redis, 'run under scripts/with-services.sh (PostgreSQL and Redis)');
  // Tokens minted by `roomcast token` verify on every node.
  process.env.ROOMCAST_TOKEN_SECRET = randomBytes(32).toString('hex');
  const cluster = ['--database-url', database, '--redis-url', redis, '--cluster-secret', randomBytes(32).toString('hex'),
    '--node-region', 'eu'];
  const nodes = [];
  let busy = null;
  let browser = null;
  try {
    // One after the other: the first applies the migrations.
    const a = await startRelay({ extra: [...cluster, '--node-id', 'a'] });
    nodes.push(a);
    const b = await startRelay({ extra: [...cluster, '--node-id', 'b'] });
    nodes.push(b);
    // A session on a: with its load seen (1 s heartbeats), the least loaded node is b.
    busy = publish(a, 'warmup', 'busy', ['--video-kbps', '50', '--audio-kbps', '0']);
    await new Promise((r) => setTimeout(r, 2500));
    browser = await launchBrowser();
    // alice uses a's page: the join sends her to b.
    const alice = await signUp(browser, a, 'alice');
    const id = await createRoom(alice, 'spanning');
    const host = (node) => new URL(node.webtransport).host;
    const session = (page) => page.evaluate(() => window.roomcast.state.client?.relay);
    assert.equal(await alice.evaluate(() => window.roomcast.state.relay?.id), 'b', 'alice placed on b');
    assert.equal(await session(alice), host(b), "alice's session is on b");
    // bob uses b's page once b carries alice: a and b are equally loaded, a (the lower id) wins.
    await new Promise((r) => setTimeout(r, 2500));
    const bob = await signUp(browser, b, 'bob');
    await joinRoom(bob, id);
    assert.equal(await bob.evaluate(() => window.roomcast.state.relay?.id), 'a', 'bob placed on a');
    assert.equal(await session(bob), host(a), "bob's session is on a");
    // Each sees the other through the node-to-node hop.
    await waitFor(alice, () => (window.roomcast.stats().viewers.bob?.frames ?? 0) > 30, 40000);
    await waitFor(bob, () => (window.roomcast.stats().viewers.alice?.frames ?? 0) > 30, 40000);

    // b dies (SIGKILL: no GOAWAY, no goodbye in Redis): alice's page finds a node that lives
    // (a, once b's registry entry expired) and publishes again; bob sees her again.
    b.proc.kill('SIGKILL');
    const killed = Date.now();
    await waitFor(alice, (h) => window.roomcast.state.client?.relay === h && window.roomcast.state.status === 'connected', 60000, host(a));
    console.log(`alice connected to a ${Date.now() - killed} ms after b was killed`);
    const before = await frames(bob, 'alice');
    await waitFor(bob, (n) => (window.roomcast.stats().viewers.alice?.frames ?? 0) > n + 30, 60000, before);
    console.log(`bob saw alice again ${Date.now() - killed} ms after b was killed`);
  } finally {
    await browser?.close();
    busy?.kill('SIGTERM');
    for (const n of nodes) n.stop();
  }
});
