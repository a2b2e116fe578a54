// Live-streaming tools and the web client: an ffmpeg stream published with `roomcast publish`
// is a participant the web client sees and hears, a browser publisher is recorded with
// `roomcast subscribe` to a file ffprobe reads, and a recording plays in a browser through
// Media Source Extensions.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  startRelay, launchBrowser, waitFor, signUp, createRoom, frames, pixelSpread, publishFfmpeg, probe, bin,
} from './harness.mjs';

const SOURCE = ['-f', 'lavfi', '-i', 'testsrc2=size=320x240:rate=30', '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000', '-t', '30'];

test('an ffmpeg stream published with roomcast publish is seen and heard in the web client', { timeout: 90000 }, async () => {
  const relay = await startRelay();
  const browser = await launchBrowser();
  let stream = null;
  try {
    const alice = await signUp(browser, relay, 'alice');
    const id = await createRoom(alice, 'live');
    stream = publishFfmpeg(relay, id, 'encoder', [...SOURCE, '-c:v', 'libx264', '-preset', 'veryfast', '-g', '30', '-c:a', 'aac']);
    await waitFor(alice, () => (window.roomcast.stats().viewers.encoder?.frames ?? 0) > 60, 45000);
    await waitFor(alice, () => (window.roomcast.stats().viewers.encoder?.audioRms ?? 0) > 0.01, 15000);
    const spread = await pixelSpread(alice, 'encoder');
    console.log('ffmpeg participant:', await frames(alice, 'encoder'), 'frames, pixel spread', spread.toFixed(1));
    assert.ok(spread > 20, `the encoder's tile looks blank (spread ${spread})`);
  } finally {
    stream?.stop();
    await browser.close();
    relay.stop();
  }
});

test('a browser publisher recorded with roomcast subscribe is a file ffprobe reads', { timeout: 90000 }, async () => {
  const relay = await startRelay();
  const browser = await launchBrowser();
  const dir = mkdtempSync(join(tmpdir(), 'roomcast-record-'));
  const file = join(dir, 'alice.mp4');
  try {
    const alice = await signUp(browser, relay, 'alice');
    const id = await createRoom(alice, 'record');
    // The web client encodes once somebody subscribes: the recorder is that somebody.
    const rec = spawn(bin, ['subscribe', '--url', relay.quic, '--cert-sha256', relay.certSha256,
      '--token', relay.token(id, 'recorder', 'subscribe'), '--participant', 'alice', '-o', file, '--duration', '8s'],
    { stdio: ['ignore', 'inherit', 'inherit'] });
    const code = await new Promise((resolve) => rec.on('exit', resolve));
    assert.equal(code, 0, 'roomcast subscribe failed');
    const streams = probe(file);
    console.log('recorded:', JSON.stringify(streams));
    const video = streams.find((s) => s.width);
    const audio = streams.find((s) => !s.width);
    assert.equal(video?.codec, 'vp8');
    assert.ok(video.width > 0 && video.height > 0, JSON.stringify(video));
    assert.ok(video.frames > 60, `only ${video.frames} video frames in 8 s`);
    assert.equal(audio?.codec, 'opus');
    assert.ok(audio.frames > 100, `only ${audio.frames} audio frames in 8 s`);
  } finally {
    await browser.close();
    relay.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a recording made with roomcast subscribe plays in the browser through MSE', { timeout: 90000 }, async () => {
  const relay = await startRelay();
  const browser = await launchBrowser();
  const dir = mkdtempSync(join(tmpdir(), 'roomcast-mse-'));
  const file = join(dir, 'encoder.mp4');
  let stream = null;
  try {
    stream = publishFfmpeg(relay, 'mse', 'encoder', [...SOURCE, '-c:v', 'libx264', '-preset', 'veryfast', '-g', '30', '-c:a', 'aac']);
    const rec = spawn(bin, ['subscribe', '--url', relay.quic, '--cert-sha256', relay.certSha256,
      '--token', relay.token('mse', 'recorder', 'subscribe'), '--participant', 'encoder', '-o', file, '--duration', '8s'],
    { stdio: ['ignore', 'inherit', 'inherit'] });
    assert.equal(await new Promise((resolve) => rec.on('exit', resolve)), 0, 'roomcast subscribe failed');
    const page = await browser.newPage();
    await page.goto(`${relay.http}/check.html`);
    const played = await page.evaluate(async (b64) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const video = document.createElement('video');
      video.muted = true;
      document.body.append(video);
      const ms = new MediaSource();
      video.src = URL.createObjectURL(ms);
      await new Promise((r) => ms.addEventListener('sourceopen', r, { once: true }));
      const sb = ms.addSourceBuffer('video/mp4; codecs="avc1.64001e,mp4a.40.2"');
      const errors = [];
      sb.addEventListener('error', () => errors.push('sourcebuffer error'));
      video.addEventListener('error', () => errors.push(`video error ${video.error?.message}`));
      sb.appendBuffer(bytes);
      await new Promise((r) => sb.addEventListener('updateend', r, { once: true }));
      const buffered = sb.buffered.length ? sb.buffered.end(0) - sb.buffered.start(0) : 0;
      video.currentTime = sb.buffered.length ? sb.buffered.start(0) : 0;
      await video.play().catch((e) => errors.push(String(e)));
      await new Promise((r) => setTimeout(r, 1500));
      return { buffered, time: video.currentTime, width: video.videoWidth, errors, frames: video.getVideoPlaybackQuality().totalVideoFrames };
    }, readFileSync(file).toString('base64'));
    console.log('MSE:', JSON.stringify(played));
    assert.deepEqual(played.errors, []);
    assert.equal(played.width, 320);
    assert.ok(played.buffered > 3, `only ${played.buffered} s buffered`);
    assert.ok(played.frames > 10, `only ${played.frames} frames played`);
  } finally {
    stream?.stop();
    await browser.close();
    relay.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
