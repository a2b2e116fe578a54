// What viewers follow: a screen share started, stopped with the browser's control and started
// again; a publisher whose session is replaced by a new one; a participant muted and unmuted,
// then kicked, who must not come back by itself.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startRelay, launchBrowser, waitFor, signUp, createRoom, joinRoom, frames } from './harness.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const viewer = (page, who) => page.evaluate((w) => window.roomcast.stats().viewers[w] ?? null, who);

test('screen share: its own tile, stopped by the browser control, shared again', { timeout: 120000 }, async () => {
  const relay = await startRelay();
  const browser = await launchBrowser();
  try {
    const alice = await signUp(browser, relay, 'alice');
    const id = await createRoom(alice, 'demo');
    const bob = await signUp(browser, relay, 'bob');
    await joinRoom(bob, id);
    await waitFor(bob, () => (window.roomcast.stats().viewers.alice?.frames ?? 0) > 10, 30000);

    for (const round of [1, 2]) {
      await alice.click('#share');
      await waitFor(bob, () => (window.roomcast.stats().viewers.alice?.screenFrames ?? 0) > 20
        && document.querySelector('.tile[data-who="alice:screen"] canvas'), 30000);
      const cameraBefore = await frames(bob, 'alice');
      // The camera keeps its own tile and keeps playing beside the share.
      await waitFor(bob, (n) => (window.roomcast.stats().viewers.alice?.frames ?? 0) > n + 10, 15000, cameraBefore);
      // The browser's "stop sharing" ends the capture track: the UA fires `ended`.
      await alice.evaluate(() => {
        const t = window.roomcast.state.screenCapture;
        t.stop();
        t.dispatchEvent(new Event('ended'));
      });
      await waitFor(bob, () => !document.querySelector('.tile[data-who="alice:screen"]'), 10000);
      assert.equal(await alice.textContent('#share'), 'share screen', `round ${round}: button not reset`);
      const stopped = (await viewer(bob, 'alice')).screenFrames;
      await sleep(1000);
      assert.equal((await viewer(bob, 'alice')).screenFrames, stopped, `round ${round}: screen frames after stop`);
      // Counted anew in the second round.
      if (round === 1) await bob.evaluate(() => { window.roomcast.state.viewers.get('alice').viewer.stats.screenFrames = 0; });
    }
  } finally {
    await browser.close();
    relay.stop();
  }
});

test('a publisher whose session is replaced is followed by its viewers', { timeout: 120000 }, async () => {
  const relay = await startRelay();
  const browser = await launchBrowser();
  try {
    const first = await signUp(browser, relay, 'alice');
    const id = await createRoom(first, 'move');
    const bob = await signUp(browser, relay, 'bob');
    await joinRoom(bob, id);
    await waitFor(bob, () => (window.roomcast.stats().viewers.alice?.frames ?? 0) > 20, 30000);
    // Alice comes in again from another tab while the first session is still up (a network
    // change, a second device): the relay hands her namespace to the new session.
    const second = await signUp(browser, relay, 'alice', { login: true });
    await joinRoom(second, id);
    const replacedAt = Date.now();
    await waitFor(bob, () => (window.roomcast.stats().viewers.alice?.restarts ?? 0) >= 1, 10000);
    const resumed = await frames(bob, 'alice');
    await waitFor(bob, (n) => (window.roomcast.stats().viewers.alice?.frames ?? 0) > n + 5, 10000, resumed);
    const followedMs = Date.now() - replacedAt;
    console.log(`viewer followed the new session in ${followedMs} ms (join to frames)`);
    // Frames keep coming from the new session: bob decodes about what it encodes.
    const sent = () => second.evaluate(() => window.roomcast.stats().publisher.videoFrames);
    const [bob0, sent0] = [await frames(bob, 'alice'), await sent()];
    await sleep(2000);
    const [bobDelta, sentDelta] = [(await frames(bob, 'alice')) - bob0, (await sent()) - sent0];
    assert.ok(sentDelta > 5 && bobDelta >= sentDelta / 2, `bob decoded ${bobDelta} of ${sentDelta} frames sent`);
  } finally {
    await browser.close();
    relay.stop();
  }
});

test('muted and unmuted from the list; kicked, told, and not back by itself', { timeout: 120000 }, async () => {
  const relay = await startRelay();
  const browser = await launchBrowser();
  try {
    const host = await signUp(browser, relay, 'host');
    const id = await createRoom(host, 'strict');
    const bob = await signUp(browser, relay, 'bob');
    await joinRoom(bob, id);
    await waitFor(host, () => (window.roomcast.stats().viewers.bob?.frames ?? 0) > 10, 30000);
    // Mute and unmute from the people list: the badge shows, bob's audio stops and returns.
    const audio = () => host.evaluate(() => window.roomcast.stats().viewers.bob?.audioPackets ?? 0);
    await host.waitForSelector('#people button[data-action=mute][data-who=bob]', { timeout: 10000 });
    await host.click('#people button[data-action=mute][data-who=bob]');
    await host.waitForSelector('#people button[data-action=unmute][data-who=bob]', { timeout: 10000 });
    await host.waitForSelector('.tile[data-who="bob"] .muted', { timeout: 10000 });
    await bob.waitForSelector('.tile[data-who="self"] .muted', { timeout: 10000 });
    await sleep(500);
    const mutedAt = await audio();
    await sleep(1500);
    assert.ok((await audio()) - mutedAt < 5, 'bob still heard while muted');
    await host.click('#people button[data-action=unmute][data-who=bob]');
    await waitFor(host, (n) => (window.roomcast.stats().viewers.bob?.audioPackets ?? 0) > n + 20, 10000, await audio());
    await host.waitForSelector('.tile[data-who="bob"] .muted', { state: 'detached', timeout: 10000 });

    await host.waitForSelector('#people button[data-action=kick][data-who=bob]', { timeout: 10000 });
    await host.click('#people button[data-action=kick][data-who=bob]');
    await waitFor(bob, () => window.roomcast.state.status === 'disconnected'
      && /you were kicked/.test(document.getElementById('error').textContent), 10000);
    // Past the client's reconnect delay it is still out, and the host no longer sees it.
    await sleep(4000);
    assert.equal(await bob.evaluate(() => window.roomcast.state.status), 'disconnected');
    await waitFor(host, () => !document.querySelector('.tile[data-who="bob"]'), 10000);
    const people = await host.$$eval('#people li', (l) => l.map((x) => x.textContent));
    assert.ok(!people.some((t) => t.startsWith('bob')), `bob still listed: ${people}`);
  } finally {
    await browser.close();
    relay.stop();
  }
});
