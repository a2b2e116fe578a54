// Two remote speakers at once are heard at once: each browser's fake microphone plays its own
// tone (500 Hz and 1700 Hz, from a WAV file), and a third participant's played output, after
// the mixer, holds both tones in the same 5 ms windows, not one after the other.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRelay, launchBrowser, waitFor, signUp, createRoom, joinRoom } from './harness.mjs';

/** A 16-bit mono 48 kHz WAV of a sine at `hz`, `secs` long. */
function tone(path, hz, secs = 10) {
  const rate = 48000;
  const n = rate * secs;
  const data = Buffer.alloc(n * 2);
  for (let i = 0; i < n; i++) data.writeInt16LE(Math.round(Math.sin((2 * Math.PI * hz * i) / rate) * 12000), i * 2);
  const head = Buffer.alloc(44);
  head.write('RIFF', 0);
  head.writeUInt32LE(36 + data.length, 4);
  head.write('WAVEfmt ', 8);
  head.writeUInt32LE(16, 16);
  head.writeUInt16LE(1, 20); // PCM
  head.writeUInt16LE(1, 22); // mono
  head.writeUInt32LE(rate, 24);
  head.writeUInt32LE(rate * 2, 28);
  head.writeUInt16LE(2, 32);
  head.writeUInt16LE(16, 34);
  head.write('data', 36);
  head.writeUInt32LE(data.length, 40);
  writeFileSync(path, Buffer.concat([head, data]));
}

test('two remote speakers are mixed, not played in turn', { timeout: 150000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'roomcast-tones-'));
  const [low, high] = [join(dir, 'low.wav'), join(dir, 'high.wav')];
  tone(low, 500);
  tone(high, 1700);
  const relay = await startRelay();
  const browsers = [];
  try {
    const launch = async (args) => {
      const b = await launchBrowser(args);
      browsers.push(b);
      return b;
    };
    const ann = await signUp(await launch([`--use-file-for-fake-audio-capture=${low}`]), relay, 'ann');
    // Steady test tones are what noise suppression removes; the speakers' pages capture
    // them as a musician would ("original sound"), the mixing under test is the listener's.
    const original = () => {
      const gum = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
      navigator.mediaDevices.getUserMedia = (c) => gum(c.audio ? { ...c, audio: { noiseSuppression: false, autoGainControl: false, echoCancellation: false } } : c);
    };
    await ann.evaluate(original);
    const id = await createRoom(ann, 'duet');
    const ben = await signUp(await launch([`--use-file-for-fake-audio-capture=${high}`]), relay, 'ben');
    await ben.evaluate(original);
    await joinRoom(ben, id);
    const cat = await signUp(await launch([]), relay, 'cat');
    await joinRoom(cat, id);
    await waitFor(cat, () => ['ann', 'ben'].every((w) => (window.roomcast.stats().viewers[w]?.audioPackets ?? 0) > 150), 60000);

    // 5.3 ms windows (much shorter than a 10-20 ms audio frame) of what cat's speakers play:
    // played one after the other, a window holds both tones only across a frame boundary.
    const result = await cat.evaluate(async () => {
      const { analyser, ctx } = window.roomcastAudio;
      analyser.fftSize = 256;
      analyser.smoothingTimeConstant = 0;
      const bins = new Float32Array(analyser.frequencyBinCount);
      const binOf = (hz) => Math.round(hz / (ctx.sampleRate / analyser.fftSize));
      const peak = (hz) => Math.max(bins[binOf(hz) - 1], bins[binOf(hz)], bins[binOf(hz) + 1]);
      let both = 0, one = 0, none = 0;
      for (let i = 0; i < 120; i++) {
        await new Promise((r) => setTimeout(r, 25));
        analyser.getFloatFrequencyData(bins);
        // A tone is there when its bin is within 15 dB of the loudest one (leakage of the
        // other tone into it is 40 dB down or more); silence when nothing stands out.
        const sorted = [...bins].sort((x, y) => x - y);
        const [floor, top] = [sorted[Math.floor(sorted.length / 2)], sorted[sorted.length - 1]];
        const loud = top - floor > 30;
        const [a, b] = [loud && peak(500) > top - 15, loud && peak(1700) > top - 15];
        if (a && b) both++;
        else if (a || b) one++;
        else none++;
      }
      return { both, one, none };
    });
    console.log('mixed output windows:', JSON.stringify(result));
    // Played one after the other (one shared buffer), no window holds both tones (measured:
    // 0 and 2 of about 100). Mixed, 16-40 of 60-90 sounding windows did; the rest are
    // stretches where one speaker's packets were late on this loaded machine (three browsers
    // on two cores: see the closing note of issue 7).
    const sounding = result.both + result.one;
    assert.ok(result.both >= 6 && result.both >= 0.1 * sounding, `both tones together in only ${JSON.stringify(result)}`);
  } finally {
    for (const b of browsers) await b.close();
    relay.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
