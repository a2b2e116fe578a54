// Two remote speakers at once are heard at once: two speakers (ffmpeg tones of 500 Hz and
// 1700 Hz, Opus, published with `roomcast publish`) and a listener in the web client, whose
// played output, after the mixer, holds both tones in the same 5 ms windows, not one after
// the other. (The speakers were browsers once; three browsers on two cores starved the audio
// threads often enough to make the measurement flaky.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startRelay, launchBrowser, waitFor, signUp, createRoom, publishFfmpeg } from './harness.mjs';

/** A speaker: a tone of `hz`, Opus, into the room as `who`. */
const tone = (relay, room, who, hz) => publishFfmpeg(relay, room, who,
  ['-f', 'lavfi', '-i', `sine=frequency=${hz}:sample_rate=48000`, '-t', '120', '-c:a', 'libopus', '-b:a', '64k']);

test('two remote speakers are mixed, not played in turn', { timeout: 150000 }, async () => {
  const relay = await startRelay();
  const browser = await launchBrowser();
  const speakers = [];
  try {
    const cat = await signUp(browser, relay, 'cat');
    const id = await createRoom(cat, 'duet');
    speakers.push(tone(relay, id, 'ann', 500), tone(relay, id, 'ben', 1700));
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
    // Played one after the other, no window holds both tones (measured with a mixer that
    // keeps only the first source playing: 0 of 120). Mixed, with steady speakers: 120 of 120.
    const sounding = result.both + result.one;
    assert.ok(sounding >= 40 && result.both >= 0.3 * sounding, `both tones together in only ${JSON.stringify(result)}`);
  } finally {
    for (const s of speakers) s.stop();
    await browser.close();
    relay.stop();
  }
});
