// One self-contained binary: `cargo install` puts roomcast into a temp directory, it is
// started from another directory (no web/ there, no flags but the ports), and Chromium gets
// the whole product from it: the embedded web client, an account, a room, a WebTransport
// session, and a second member seeing the first one's camera.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { root, startRelay, launchBrowser, waitFor, signUp, createRoom, joinRoom } from './harness.mjs';

test('an installed binary serves the whole product from any directory', { timeout: 600000 }, async () => {
  const prefix = mkdtempSync(join(tmpdir(), 'roomcast-install-'));
  const cwd = mkdtempSync(join(tmpdir(), 'roomcast-elsewhere-'));
  // The release build the suite made is reused (same target directory, same lock file).
  execFileSync('cargo', ['install', '--path', root, '--root', prefix, '--locked', '--offline', '--target-dir', join(root, 'target'), '--bin', 'roomcast'],
    { stdio: ['ignore', 'inherit', 'inherit'] });
  const binary = join(prefix, 'bin', 'roomcast');
  assert.ok(existsSync(binary));
  assert.ok(!existsSync(join(cwd, 'web')));
  const relay = await startRelay({ installed: { binary, cwd } });
  const browser = await launchBrowser();
  try {
    const alice = await signUp(browser, relay, 'alice');
    const id = await createRoom(alice, 'installed');
    // bob sees her camera through the installed relay.
    const bob = await signUp(browser, relay, 'bob');
    await joinRoom(bob, id);
    await waitFor(bob, () => (window.roomcast.stats().viewers.alice?.frames ?? 0) > 30, 30000);
    // Its state lives where it was started.
    assert.ok(existsSync(join(cwd, 'data')), 'data/ under the working directory');
  } finally {
    await browser.close();
    relay.stop();
    rmSync(prefix, { recursive: true, force: true });
  }
});
