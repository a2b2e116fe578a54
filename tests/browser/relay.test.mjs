// The web page connects over WebTransport with the served certificate hash and a token,
// and receives a publisher's objects through the relay.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { startRelay, publish, launchBrowser, waitFor, root } from './harness.mjs';

test('page receives verified objects over WebTransport', async () => {
  const relay = await startRelay();
  const pub = publish(relay, 'r1', 'alice', ['--video-kbps', '400', '--audio-kbps', '0', '--gop-secs', '1']);
  const browser = await launchBrowser();
  try {
    const page = await browser.newPage();
    const token = relay.token('r1', 'viewer', 'subscribe');
    await new Promise((r) => setTimeout(r, 500));
    await page.goto(`${relay.http}/check.html?token=${token}&room=r1&watch=alice&track=video`);
    await waitFor(page, () => window.roomcast && window.roomcast.verified >= 60);
    const state = await page.evaluate(() => ({ ...window.roomcast, groups: window.roomcast.groups.size }));
    assert.deepEqual(state.errors, []);
    assert.equal(state.verified, state.objects, 'every object verified byte-exact');
    assert.ok(state.groups >= 2, `objects from ${state.groups} groups`);
    // The content security policy holds in the browser: an injected inline script does not run.
    const injected = await page.evaluate(() => {
      const s = document.createElement('script');
      s.textContent = 'window.injected = true';
      document.body.append(s);
      return window.injected === true;
    });
    assert.equal(injected, false, 'an inline script ran despite the CSP');
    mkdirSync(join(root, 'test-output'), { recursive: true });
    await page.screenshot({ path: join(root, 'test-output', 'relay-check.png') });
  } finally {
    await browser.close();
    pub.kill('SIGTERM');
    relay.stop();
  }
});

test('page reports a refused token clearly', async () => {
  const relay = await startRelay();
  const browser = await launchBrowser();
  try {
    const page = await browser.newPage();
    // No subscription is attempted: only the relay closing the session ends 'connected'. A
    // relay that accepted the token would leave the page connected and fail the wait.
    await page.goto(`${relay.http}/check.html?token=not-a-token`);
    // A token that does not verify is refused at the CONNECT (403): the browser learns only
    // that the handshake failed.
    await waitFor(page, () => window.roomcast && /^(error|disconnected)/.test(window.roomcast.status));
    assert.match(await page.evaluate(() => window.roomcast.status), /^error: .*handshake failed/i);
    // Without a token the session is answered, then closed before the relay's SETUP with the
    // code and reason the page reads from CLOSE_WEBTRANSPORT_SESSION.
    await page.goto(`${relay.http}/check.html`);
    await waitFor(page, () => window.roomcast && /^(error|disconnected)/.test(window.roomcast.status));
    assert.equal(
      await page.evaluate(() => window.roomcast.status),
      'error: closed by the relay (code 2): missing_token: no token presented',
    );
    // The same page with a valid token stays connected: the wait above is about the token.
    await page.goto(`${relay.http}/check.html?token=${relay.token('r1', 'alice', 'subscribe')}`);
    await waitFor(page, () => window.roomcast && window.roomcast.status === 'connected');
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(await page.evaluate(() => window.roomcast.status), 'connected');
  } finally {
    await browser.close();
    relay.stop();
  }
});
