// Live-streaming tools and the web client: an ffmpeg stream published with `roomcast publish`
// is a participant the web client sees and hears, and a browser publisher is recorded with
// `roomcast subscribe` to a file ffprobe reads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
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
