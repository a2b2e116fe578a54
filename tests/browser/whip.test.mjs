// WHIP: headless Chromium publishes its fake camera and microphone through RTCPeerConnection
// to /whip/{room}; a second page subscribes over WebTransport to that participant's tracks
// and decodes them with WebCodecs (VP8 frames, Opus audio that is not silent), with capture
// timestamps that only go forward. Then DELETE ends the session and the tracks end.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRelay, launchBrowser, waitFor, signUp, createRoom, joinRoom, frames, pixelSpread, probe, bin } from './harness.mjs';

/**
 * In the page: offers sendonly camera+microphone to /whip/{room} and applies the answer; with
 * `codec` ('H264' or 'VP8') the video is steered to that codec.
 */
async function publishWhip(page, room, token, codec = null) {
  return page.evaluate(async ({ room, token, codec }) => {
    const pc = new RTCPeerConnection();
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 360 }, audio: true });
    for (const t of stream.getTracks()) {
      const tr = pc.addTransceiver(t, { direction: 'sendonly' });
      if (codec && t.kind === 'video') {
        const wanted = RTCRtpReceiver.getCapabilities('video').codecs.filter((c) => c.mimeType === `video/${codec}`);
        tr.setCodecPreferences(wanted);
      }
    }
    await pc.setLocalDescription(await pc.createOffer());
    // WHIP without trickle: send the offer once gathering is done.
    await new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') return resolve();
      pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
      setTimeout(resolve, 3000);
    });
    const res = await fetch(`/whip/${room}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${token}` },
      body: pc.localDescription.sdp,
    });
    const body = await res.text();
    window.whip = { pc, status: res.status, location: res.headers.get('Location'), etag: res.headers.get('ETag') };
    if (res.status === 201) await pc.setRemoteDescription({ type: 'answer', sdp: body });
    return { status: res.status, location: window.whip.location, etag: window.whip.etag, body: res.status === 201 ? '' : body };
  }, { room, token, codec });
}

/** In the page: subscribes to `who`'s video and audio and decodes them. */
async function watchDecoded(page, wtUrl, certSha256, room, who) {
  await page.evaluate(async ({ wtUrl, certSha256, room, who }) => {
    const { MoqClient } = await import('/moq.js');
    const s = (window.seen = { video: 0, videoDecoded: 0, audio: 0, audioDecoded: 0, loud: 0, backwards: 0, errors: [], ended: [] });
    const client = await MoqClient.connect(wtUrl, certSha256);
    const ns = ['room', room, who];
    // The catalog says which codec to decode.
    const described = new Promise((resolve) => client.subscribe(ns, 'catalog', ({ payload }) => {
      const v = JSON.parse(new TextDecoder().decode(payload)).tracks.find((t) => t.name === 'video');
      if (v) resolve(v.selectionParams);
    }));
    const params = await described;
    s.codec = params.codec;
    s.catalogSize = [params.width, params.height];
    const video = new VideoDecoder({
      output: (f) => { s.videoDecoded++; s.width = f.displayWidth; f.close(); },
      error: (e) => s.errors.push(String(e)),
    });
    video.configure({ codec: params.codec, optimizeForLatency: true });
    // Timestamps go forward within a group and from each group to the next; a group's tail
    // may still arrive after the next group started (the relay sends groups in parallel).
    const lastTs = new Map();
    let lastKeyTs = 0;
    let keyed = false;
    const vsub = await client.subscribe(ns, 'video', ({ group, object, payload, captureUs }) => {
      s.video++;
      if (captureUs <= (lastTs.get(group) ?? 0)) s.backwards++;
      lastTs.set(group, captureUs);
      if (lastTs.size > 8) lastTs.delete(lastTs.keys().next().value);
      if (object === 0) {
        if (captureUs <= lastKeyTs) s.backwards++;
        lastKeyTs = captureUs;
      }
      if (object === 0) keyed = true;
      if (!keyed) return;
      video.decode(new EncodedVideoChunk({ type: object === 0 ? 'key' : 'delta', timestamp: captureUs, data: payload }));
    });
    const audio = new AudioDecoder({
      output: (d) => {
        s.audioDecoded++;
        const buf = new Float32Array(d.numberOfFrames);
        d.copyTo(buf, { planeIndex: 0, format: 'f32-planar' });
        const rms = Math.sqrt(buf.reduce((a, v) => a + v * v, 0) / buf.length);
        if (rms > 0.001) s.loud++;
        d.close();
      },
      error: (e) => s.errors.push(String(e)),
    });
    audio.configure({ codec: 'opus', sampleRate: 48000, numberOfChannels: 1 });
    const asub = await client.subscribe(ns, 'audio', ({ payload, captureUs }) => {
      s.audio++;
      audio.decode(new EncodedAudioChunk({ type: 'key', timestamp: captureUs, data: payload }));
    });
    vsub.done.then(() => s.ended.push('video'));
    asub.done.then(() => s.ended.push('audio'));
  }, { wtUrl, certSha256, room, who });
}

for (const codec of ['VP8', 'H264']) {
  test(`a WHIP publisher is bridged into the room: its ${codec} video and Opus audio decode`, async () => {
    const relay = await startRelay();
    const browser = await launchBrowser(['--allow-loopback-in-peer-connection']);
    try {
      const publisher = await browser.newPage();
      await publisher.goto(`${relay.http}/check.html`);
      const token = relay.token('r1', 'obs', 'publish');
      const created = await publishWhip(publisher, 'r1', token, codec);
      assert.equal(created.status, 201, created.body);
      assert.match(created.location, /^\/whip\/r1\/[0-9a-f]{32}$/);
      assert.ok(created.etag, 'an ETag');
      await waitFor(publisher, () => window.whip.pc.connectionState === 'connected', 10000);

      const viewer = await browser.newPage();
      await viewer.goto(`${relay.http}/check.html`);
      await watchDecoded(viewer, `${relay.webtransport}/?token=${relay.token('r1', 'viewer', 'subscribe')}`, relay.certSha256, 'r1', 'obs');
      await waitFor(viewer, () => window.seen.videoDecoded >= 30 && window.seen.loud >= 20, 20000);
      const seen = await viewer.evaluate(() => window.seen);
      assert.deepEqual(seen.errors, []);
      assert.equal(seen.backwards, 0, 'capture timestamps only go forward');
      assert.match(seen.codec, codec === 'VP8' ? /^vp8$/ : /^avc1\.[0-9a-f]{6}$/);
      assert.equal(seen.width, seen.catalogSize[0], 'the catalog tells the decoded size');

      // Recorded with `roomcast subscribe`: H.264 arrives in Annex B form and is written as
      // AVCC with an avcC built from its parameter sets.
      const dir = mkdtempSync(join(tmpdir(), 'roomcast-whip-rec-'));
      try {
        const file = join(dir, 'obs.mp4');
        const rec = spawn(bin, ['subscribe', '--url', relay.quic, '--cert-sha256', relay.certSha256,
          '--token', relay.token('r1', 'recorder', 'subscribe'), '--participant', 'obs', '-o', file, '--duration', '4s'],
        { stdio: ['ignore', 'inherit', 'inherit'] });
        assert.equal(await new Promise((resolve) => rec.on('exit', resolve)), 0, 'roomcast subscribe failed');
        const [video, audio] = [probe(file).find((x) => x.width), probe(file).find((x) => !x.width)];
        console.log(`recorded ${codec}:`, JSON.stringify([video, audio]));
        assert.equal(video?.codec, codec === 'VP8' ? 'vp8' : 'h264');
        assert.equal(video.width, seen.catalogSize[0]);
        assert.ok(video.frames > 30, `only ${video.frames} frames in 4 s`);
        assert.equal(audio?.codec, 'opus');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }

      // DELETE ends the session; the bridged tracks end for the viewer.
      const del = (t) => publisher.evaluate(async (t) => (await fetch(window.whip.location, {
        method: 'DELETE', headers: { Authorization: `Bearer ${t}` } })).status, t);
      assert.equal(await del(token), 200);
      await waitFor(viewer, () => window.seen.ended.includes('video'), 10000);
      assert.equal(await del(token), 404, 'a second DELETE finds no session');
    } finally {
      await browser.close();
      relay.stop();
    }
  });
}

test('the web client publishes over WebRTC on request; the others keep seeing and hearing it', { timeout: 120000 }, async () => {
  const relay = await startRelay();
  const browser = await launchBrowser(['--allow-loopback-in-peer-connection']);
  try {
    const alice = await signUp(browser, relay, 'alice');
    const id = await createRoom(alice, 'webrtc');
    const bob = await signUp(browser, relay, 'bob');
    await joinRoom(bob, id);
    await waitFor(bob, () => (window.roomcast.stats().viewers.alice?.frames ?? 0) > 30, 30000);

    await alice.click('#whip');
    await waitFor(alice, () => document.getElementById('whip').textContent.includes('WebTransport'), 15000);
    const metrics = await alice.evaluate(async () => (await fetch('/metrics')).text());
    assert.match(metrics, /^roomcast_whip_sessions 1$/m, 'one WHIP session');
    // Bob follows alice's new publication: her picture keeps coming, now through WebRTC.
    await new Promise((r) => setTimeout(r, 3000));
    const after = await frames(bob, 'alice');
    await waitFor(bob, (n) => (window.roomcast.stats().viewers.alice?.frames ?? 0) > n + 30, 30000, after);
    assert.ok((await pixelSpread(bob, 'alice')) > 5, 'alice renders as a blank picture at bob');
    await waitFor(bob, () => (window.roomcast.stats().viewers.alice?.audioRms ?? 0) > 0.001, 15000);
    const whipMetrics = await alice.evaluate(async () => (await fetch('/metrics')).text());
    const packets = Number(whipMetrics.match(/^roomcast_whip_rtp_packets_total (\d+)/m)?.[1] ?? 0);
    assert.ok(packets > 0, 'RTP packets counted');
  } finally {
    await browser.close();
    relay.stop();
  }
});
