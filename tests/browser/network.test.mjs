// The web client behind a lossy path: both browsers reach the relay's WebTransport port through
// the seeded impairment proxy (`roomcast impair`: 20 ms +- 5 ms each way, 5 % loss). Bob must
// keep seeing Alice's camera: decoded frames keep arriving, with no freeze longer than a GOP.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { startRelay, launchBrowser, signUp, createRoom, joinRoom, waitFor, frames, pixelSpread, bin } from './harness.mjs';

const PATH = 'delay=20ms,jitter=5ms,loss=5%';
/** One GOP of the web client's video: 60 frames at the fake camera's ~20-30 fps. */
const GOP_MS = 2000;

async function freeUdpPort() {
  const s = createSocket('udp4');
  await new Promise((r) => s.bind(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

/** Starts `roomcast impair` in front of `upstream`; resolves with its process and port. */
async function startProxy(upstream, seed) {
  const proc = spawn(bin, ['impair', '--upstream', upstream, '--seed', String(seed), '--up', PATH, '--down', PATH],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let stats = '';
  proc.stderr.on('data', (d) => { stats += d; });
  const exited = new Promise((r) => proc.on('exit', r));
  const port = await new Promise((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/impair ready listen=\S+:(\d+)/);
      if (m) resolve(Number(m[1]));
    });
    proc.on('exit', (code) => reject(new Error(`impair exited with ${code}`)));
    setTimeout(() => reject(new Error('impair did not become ready')), 10000);
  });
  /** Stops the proxy; resolves with its statistics (what it forwarded, lost, reordered). */
  const stop = async () => {
    proc.kill('SIGINT');
    await exited;
    const num = (dir, key) => Number(stats.match(new RegExp(`${dir}\\s.*\\b${key} (\\d+)`))?.[1] ?? 0);
    return { text: stats, flows: Number(stats.match(/flows (\d+)/)?.[1] ?? 0), downPackets: num('down', 'packets'), downLost: num('down', 'lost'), upLost: num('up', 'lost') };
  };
  return { proc, port, stop };
}

test('meeting over a lossy path: remote video keeps playing', { timeout: 120000 }, async () => {
  const wtPort = await freeUdpPort();
  const proxy = await startProxy(`127.0.0.1:${wtPort}`, 7);
  const relay = await startRelay({ webtransportListen: `127.0.0.1:${wtPort}`, extra: ['--webtransport-public-port', String(proxy.port)] });
  const browser = await launchBrowser();
  try {
    const a = await signUp(browser, relay, 'alice');
    const id = await createRoom(a, 'lossy');
    const b = await signUp(browser, relay, 'bob');
    await joinRoom(b, id);
    await waitFor(b, () => (window.roomcast.stats().viewers.alice?.frames ?? 0) > 30, 30000);
    // Watch for 15 s: sample the decoded frame count every 100 ms.
    let last = await frames(b, 'alice');
    let lastChange = Date.now();
    let longestFreeze = 0;
    const start = last;
    const until = Date.now() + 15000;
    while (Date.now() < until) {
      await new Promise((r) => setTimeout(r, 100));
      const n = await frames(b, 'alice');
      if (n > last) {
        longestFreeze = Math.max(longestFreeze, Date.now() - lastChange);
        last = n;
        lastChange = Date.now();
      }
    }
    longestFreeze = Math.max(longestFreeze, Date.now() - lastChange);
    const decoded = last - start;
    console.log(`lossy path: ${decoded} frames in 15 s, longest freeze ${longestFreeze} ms`);
    assert.ok(decoded > 150, `only ${decoded} frames decoded in 15 s`);
    assert.ok(longestFreeze <= GOP_MS, `video froze for ${longestFreeze} ms (more than one GOP, ${GOP_MS} ms)`);
    assert.ok((await pixelSpread(b, 'alice')) > 5, 'the remote tile shows a picture');
    await browser.close();
    // Both browsers' media really crossed the proxy, and it really lost packets.
    const stats = await proxy.stop();
    console.log(stats.text.trim());
    assert.ok(stats.flows >= 1, `only ${stats.flows} flows went through the proxy`);
    assert.ok(stats.downPackets > 1000 && stats.downLost > 0 && stats.upLost > 0, stats.text);
  } finally {
    await browser.close();
    proxy.proc.kill('SIGINT');
    relay.stop();
  }
});
