// Mixes remote audio tracks: each source (one remote track) has its own jitter buffer, and
// the output is their sum, so two people speaking at once are heard at once.
//
// Each source also knows the capture time of what it plays (chunks carry their capture
// timestamp), and reports it about every 100 ms ({ source, playingUs }), so the page can hold
// that participant's video back to the same moment (lip sync).
//
// Messages: { source, samples: Float32Array, captureUs } appends decoded mono samples at 48 kHz;
// { source, remove: true } drops a source. A source starts (and restarts after running dry)
// once its target is buffered, which absorbs network and scheduling jitter. The target starts
// at 40 ms, grows by half after each underrun (up to 100 ms) and shrinks back slowly while
// playback is smooth; past the target plus 40 ms the oldest samples are dropped, so a source
// never lags behind by more than that.

const MIN_TARGET = 1920; // 40 ms
const MAX_TARGET = 4800; // 100 ms
const SLACK = 1920; // 40 ms above the target before old samples are dropped
const CAPACITY = 24000; // 0.5 s per source, a hard bound
const SHRINK_AFTER = 48000 * 5; // samples played without an underrun before the target shrinks

class Source {
  constructor() {
    this.buffer = new Float32Array(CAPACITY);
    this.read = 0;
    this.size = 0;
    this.playing = false;
    this.target = MIN_TARGET;
    this.smooth = 0; // samples played since the last underrun
    this.written = 0; // samples pushed, ever
    this.played = 0; // samples consumed (played or dropped), ever
    this.marks = []; // [{ at: sample index, us: capture time }], oldest first, bounded
  }

  /** Capture time (µs) of the next sample to play, if known. */
  playingUs() {
    while (this.marks.length > 1 && this.marks[1].at <= this.played) this.marks.shift();
    const m = this.marks[0];
    return m && m.at <= this.played ? m.us + ((this.played - m.at) * 1e6) / 48000 : null;
  }

  push(samples, captureUs) {
    if (captureUs != null) {
      this.marks.push({ at: this.written, us: captureUs });
      if (this.marks.length > 256) this.marks.shift();
    }
    this.written += samples.length;
    for (const s of samples) {
      if (this.size === CAPACITY) {
        this.read = (this.read + 1) % CAPACITY;
        this.size--;
        this.played++;
      }
      this.buffer[(this.read + this.size) % CAPACITY] = s;
      this.size++;
    }
    if (this.size > this.target + SLACK) {
      const drop = this.size - this.target - SLACK;
      this.read = (this.read + drop) % CAPACITY;
      this.size -= drop;
      this.played += drop;
    }
    if (this.size >= this.target) this.playing = true;
  }

  /** Adds this source's next samples into `out`. */
  mixInto(out) {
    if (!this.playing) return;
    for (let i = 0; i < out.length; i++) {
      if (this.size === 0) {
        // Ran dry: wait for a larger target before playing again.
        this.playing = false;
        this.target = Math.min(MAX_TARGET, Math.round(this.target * 1.5));
        this.smooth = 0;
        return;
      }
      out[i] += this.buffer[this.read];
      this.read = (this.read + 1) % CAPACITY;
      this.size--;
      this.played++;
    }
    this.smooth += out.length;
    if (this.smooth > SHRINK_AFTER && this.target > MIN_TARGET) {
      this.target = Math.max(MIN_TARGET, Math.round(this.target * 0.9));
      this.smooth = 0;
    }
  }
}

class RoomcastMixer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.sources = new Map();
    this.port.onmessage = ({ data }) => {
      if (data.remove) {
        this.sources.delete(data.source);
        return;
      }
      if (this.sources.size >= 64 && !this.sources.has(data.source)) return; // bounded
      let s = this.sources.get(data.source);
      if (!s) this.sources.set(data.source, (s = new Source()));
      s.push(data.samples, data.captureUs);
    };
    this.sinceReport = 0;
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    out.fill(0);
    for (const s of this.sources.values()) s.mixInto(out);
    this.sinceReport += out.length;
    if (this.sinceReport >= 4800) {
      this.sinceReport = 0;
      for (const [source, s] of this.sources) {
        const us = s.playing ? s.playingUs() : null;
        if (us != null) this.port.postMessage({ source, playingUs: us });
      }
    }
    for (let i = 0; i < out.length; i++) out[i] = Math.max(-1, Math.min(1, out[i]));
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    return true;
  }
}
registerProcessor('roomcast-mixer', RoomcastMixer);
