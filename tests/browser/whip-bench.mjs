// WHIP bridge benchmark: headless Chromium publishes a camera of moving noise (a generated
// Y4M file, 640x360 at 30 fps: hard to compress, so the encoder runs at its 2.5 Mbit/s cap)
// and its fake microphone over WHIP for N seconds. Reports, from the relay's own
// histogram, the bridge's added latency (first RTP packet of a frame arriving at the relay ->
// its object in the track) as p50/p99, the ingested bitrate, and the relay process's CPU time
// per second, also scaled to one 2.5 Mbit/s stream. A viewer subscribes so the fan-out path
// runs too.
//   node tests/browser/whip-bench.mjs [seconds]
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRelay, launchBrowser, waitFor } from './harness.mjs';

const seconds = Number(process.argv[2] || 20);
const dir = mkdtempSync(join(tmpdir(), 'roomcast-whip-bench-'));
const y4m = join(dir, 'noise.y4m');
{
  const [w, h, n] = [640, 360, 30];
  const parts = [Buffer.from(`YUV4MPEG2 W${w} H${h} F30:1 Ip A1:1 C420jpeg\n`)];
  for (let i = 0; i < n; i++) parts.push(Buffer.from('FRAME\n'), randomBytes((w * h * 3) / 2));
  writeFileSync(y4m, Buffer.concat(parts));
}
const relay = await startRelay();
const browser = await launchBrowser(['--allow-loopback-in-peer-connection', `--use-file-for-fake-video-capture=${y4m}`]);
const cpuSeconds = () => {
  const f = readFileSync(`/proc/${relay.proc.pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, in clock ticks of 1/100 s
};
const metrics = async () => (await (await fetch(`${relay.http}/metrics`)).text());
const histogram = (text, name = 'roomcast_whip_bridge_latency_seconds') => {
  const buckets = [...text.matchAll(new RegExp(`^${name}_bucket\\{le="([^"]+)"\\} (\\d+)`, 'gm'))]
    .map((m) => [m[1] === '+Inf' ? Infinity : Number(m[1]), Number(m[2])]);
  return buckets;
};
const quantile = (before, after, q) => {
  const counts = after.map(([le, n], i) => [le, n - (before[i]?.[1] ?? 0)]);
  const total = counts[counts.length - 1][1];
  const want = total * q;
  let prevLe = 0;
  let prevN = 0;
  for (const [le, n] of counts) {
    if (n >= want) {
      if (!Number.isFinite(le)) return prevLe;
      return prevLe + ((want - prevN) / Math.max(1, n - prevN)) * (le - prevLe); // linear in the bucket
    }
    prevLe = le;
    prevN = n;
  }
  return prevLe;
};
const counter = (text, name) => Number(text.match(new RegExp(`^${name} (\\d+)`, 'm'))?.[1] ?? 0);
try {
  const page = await browser.newPage();
  await page.goto(`${relay.http}/check.html`);
  const token = relay.token('bench', 'encoder', 'publish');
  const status = await page.evaluate(async (token) => {
    const pc = new RTCPeerConnection();
    const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
    for (const t of stream.getTracks()) {
      const tr = pc.addTransceiver(t, { direction: 'sendonly' });
      if (t.kind === 'video') {
        const p = tr.sender.getParameters();
        p.encodings = [{ maxBitrate: 2_500_000 }];
        await tr.sender.setParameters(p).catch(() => {});
      }
    }
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((r) => setTimeout(r, 1000));
    const res = await fetch('/whip/bench', { method: 'POST', headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${token}` }, body: pc.localDescription.sdp });
    await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
    window.pc = pc;
    return res.status;
  }, token);
  if (status !== 201) throw new Error(`WHIP refused: ${status}`);
  await waitFor(page, () => window.pc.connectionState === 'connected', 10000);
  await new Promise((r) => setTimeout(r, 5000)); // warm-up: bitrate ramps up
  const m0 = await metrics();
  const c0 = cpuSeconds();
  const t0 = Date.now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const m1 = await metrics();
  const c1 = cpuSeconds();
  const wall = (Date.now() - t0) / 1000;
  const h0 = histogram(m0);
  const h1 = histogram(m1);
  const mbps = ((counter(m1, 'roomcast_whip_rtp_bytes_total') - counter(m0, 'roomcast_whip_rtp_bytes_total')) * 8) / wall / 1e6;
  const cpu = (c1 - c0) / wall;
  const frames = counter(m1, 'roomcast_whip_frames_total') - counter(m0, 'roomcast_whip_frames_total');
  const nacks = counter(m1, 'roomcast_whip_nacks_total') - counter(m0, 'roomcast_whip_nacks_total');
  console.log(`whip bridge over ${wall.toFixed(1)} s: ${frames} frames, ingest ${mbps.toFixed(2)} Mbit/s, ${nacks} NACKs sent`);
  console.log(`bridge latency p50 ${(quantile(h0, h1, 0.5) * 1000).toFixed(2)} ms, p99 ${(quantile(h0, h1, 0.99) * 1000).toFixed(2)} ms`);
  const [a0, a1] = [histogram(m0, 'roomcast_whip_frame_assembly_seconds'), histogram(m1, 'roomcast_whip_frame_assembly_seconds')];
  console.log(`frame assembly (first packet -> object) p50 ${(quantile(a0, a1, 0.5) * 1000).toFixed(2)} ms, p99 ${(quantile(a0, a1, 0.99) * 1000).toFixed(2)} ms`);
  console.log(`relay CPU ${(cpu * 100).toFixed(2)} % of a core; per 2.5 Mbit/s stream ${(cpu * 100 * 2.5 / Math.max(mbps, 0.001)).toFixed(2)} %`);
} finally {
  await browser.close();
  relay.stop();
  rmSync(dir, { recursive: true, force: true });
}
