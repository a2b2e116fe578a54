// Glass-to-glass latency benchmark: two browsers in one room on loopback, each rendering the
// other's fake camera. A frame's capture time (wall clock, carried in the object's extension
// header) is compared with the time it is drawn (after lip sync holds it for its audio). Prints
// p50/p95 per direction and overall, and each viewer's median audio/video skew.
//   node tests/browser/latency.mjs [seconds]
import { startRelay, launchBrowser, signUp, createRoom, joinRoom, waitFor } from './harness.mjs';

const seconds = Number(process.argv[2] || 20);
const relay = await startRelay();
const browser = await launchBrowser();
try {
  const a = await signUp(browser, relay, 'alice');
  const id = await createRoom(a, 'latency');
  const b = await signUp(browser, relay, 'bob');
  await joinRoom(b, id);
  await waitFor(a, () => (window.roomcast.stats().viewers.bob?.frames ?? 0) > 30, 30000);
  await waitFor(b, () => (window.roomcast.stats().viewers.alice?.frames ?? 0) > 30, 30000);
  // Discard warm-up samples, then measure.
  const reset = (p) => p.evaluate(() => { for (const { viewer } of window.roomcast.state.viewers.values()) viewer.stats.latencies = []; });
  await reset(a);
  await reset(b);
  const samples = { 'bob->alice': [], 'alice->bob': [] };
  const until = Date.now() + seconds * 1000;
  while (Date.now() < until) {
    await new Promise((r) => setTimeout(r, 2000));
    const take = (p, who) => p.evaluate((w) => {
      const v = window.roomcast.state.viewers.get(w).viewer;
      const l = v.stats.latencies;
      v.stats.latencies = [];
      return l;
    }, who);
    samples['bob->alice'].push(...(await take(a, 'bob')));
    samples['alice->bob'].push(...(await take(b, 'alice')));
  }
  const pct = (xs, p) => {
    const s = xs.slice().sort((x, y) => x - y);
    return s[Math.min(s.length - 1, Math.floor(s.length * p))];
  };
  const all = [...samples['bob->alice'], ...samples['alice->bob']];
  for (const [k, v] of Object.entries(samples).concat([['overall', all]])) {
    console.log(`${k.padEnd(12)} frames ${String(v.length).padStart(5)}  p50 ${pct(v, 0.5).toFixed(1)} ms  p95 ${pct(v, 0.95).toFixed(1)} ms`);
  }
  for (const [p, who] of [[a, 'bob'], [b, 'alice']]) {
    const v = await p.evaluate((w) => window.roomcast.stats().viewers[w], who);
    console.log(`${who.padEnd(12)} audio/video skew p50 ${v.avSkewP50} ms over ${v.avSkewSamples} frames`);
  }
} finally {
  await browser.close();
  relay.stop();
}
