// A graceful restart of the relay (SIGTERM, as systemd or a deploy does): the web client gets
// GOAWAY, leaves, reconnects to the restarted relay by itself and the call resumes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startRelay, launchBrowser, waitFor, signUp, createRoom, joinRoom, frames } from './harness.mjs';

test('restart: both sides get GOAWAY, reconnect and see each other again', { timeout: 150000 }, async () => {
  const relay = await startRelay();
  const browser = await launchBrowser();
  try {
    const alice = await signUp(browser, relay, 'alice');
    const id = await createRoom(alice, 'restart');
    const bob = await signUp(browser, relay, 'bob');
    await joinRoom(bob, id);
    await waitFor(alice, () => (window.roomcast.stats().viewers.bob?.frames ?? 0) > 30, 30000);
    await waitFor(bob, () => (window.roomcast.stats().viewers.alice?.frames ?? 0) > 30, 30000);

    const drained = await relay.restart();
    console.log(`old relay drained and exited in ${drained} ms`);
    for (const page of [alice, bob]) {
      assert.equal(await page.evaluate(() => window.roomcast.state.goaways ?? 0), 1, 'no GOAWAY seen');
    }
    // Both sessions left on GOAWAY, so the relay stopped well before its 3 s drain ran out.
    assert.ok(drained < 2500, `the drain took ${drained} ms: the clients did not leave on GOAWAY`);
    // New sessions on the new relay: the viewers start over and frames flow again.
    await waitFor(alice, () => document.getElementById('status')?.textContent === 'connected', 30000);
    const before = { alice: await frames(alice, 'bob'), bob: await frames(bob, 'alice') };
    await waitFor(alice, (n) => (window.roomcast.stats().viewers.bob?.frames ?? 0) > n + 30, 40000, before.alice);
    await waitFor(bob, (n) => (window.roomcast.stats().viewers.alice?.frames ?? 0) > n + 30, 40000, before.bob);
  } finally {
    await browser.close();
    relay.stop();
  }
});
