// One remote participant, played back: their catalog decides which tracks are subscribed
// (camera to the tile's canvas, screen to a tile of its own, audio to the shared mixer).
// Tracks the catalog drops are unsubscribed; when the publisher's session ends a
// subscription (it reconnected from elsewhere, or left) the viewer follows it again.
import { nowMs } from './media.js';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The shared audio output: an AudioWorklet that mixes one jitter buffer per remote track. */
let audioOut = null;
async function output() {
  if (!audioOut) {
    audioOut = (async () => {
      const ctx = new AudioContext({ sampleRate: 48000, latencyHint: 'interactive' });
      await ctx.audioWorklet.addModule('audio-worklet.js');
      const node = new AudioWorkletNode(ctx, 'roomcast-mixer');
      node.connect(ctx.destination);
      // How far behind capture each source is heard: what the worklet plays now, plus the
      // output's own latency.
      node.port.onmessage = ({ data }) => {
        const out = ((ctx.baseLatency || 0) + (ctx.outputLatency || 0)) * 1000;
        audioLag.set(data.source, { lagMs: nowMs() - data.playingUs / 1000 + out, at: nowMs() });
      };
      // Tests and meters listen to what is played, after mixing.
      const analyser = ctx.createAnalyser();
      node.connect(analyser);
      ctx.resume().catch(() => {});
      window.roomcastAudio = { ctx, node, analyser };
      return { ctx, node, analyser };
    })();
  }
  return audioOut;
}

let nextSource = 1;

/** Per audio source, how far behind capture it is heard now (ms), as last reported. */
const audioLag = new Map();
function lagOf(source) {
  const l = source && audioLag.get(source);
  return l && nowMs() - l.at < 1000 ? l.lagMs : null;
}

/** The decoder configuration a catalog track carries (`initData`, base64), as WebCodecs wants it. */
function description(t) {
  if (!t.initData) return {};
  return { description: Uint8Array.from(atob(t.initData), (c) => c.charCodeAt(0)) };
}

/** Longest a video frame is held back to meet its audio. */
const MAX_HOLD_MS = 300;

export class Viewer {
  /**
   * `canvas` shows the camera; `screen` (optional) `{ open(): canvas, close() }` makes and
   * removes the tile a screen share is drawn to.
   */
  constructor(client, namespace, canvas, screen = null) {
    this.client = client;
    this.namespace = namespace;
    this.canvas = canvas;
    this.screen = screen;
    this.stats = {
      frames: 0, screenFrames: 0, audioPackets: 0, audioRms: 0, bytes: 0, latencies: [], droppedGroups: 0,
      restarts: 0, avSkew: [], since: performance.now(),
    };
    this.audioSource = null; // the mixer source of this participant's audio
    this.tracks = new Map(); // name -> { stop }
    this.catalog = null; // the catalog subscription
    this.stopped = false;
  }

  async start() {
    const sub = await this.client.subscribe(this.namespace, 'catalog', ({ payload }) => {
      try {
        this.onCatalog(JSON.parse(new TextDecoder().decode(payload)));
      } catch (e) {
        console.warn('catalog', e);
      }
    });
    this.catalog = sub;
    sub.done.then(() => {
      if (this.catalog === sub) this.follow();
    });
  }

  /** The catalog subscription ended: drop what was playing and subscribe again, for a while. */
  async follow() {
    this.stopTracks();
    for (let attempt = 0; attempt < 40 && !this.stopped; attempt++) {
      await sleep(attempt === 0 ? 50 : 250);
      if (this.stopped) return;
      try {
        await this.start();
        this.stats.restarts++;
        return;
      } catch (_) {
        // Nobody publishes the namespace (yet): try again.
      }
    }
  }

  onCatalog(catalog) {
    const listed = new Map((catalog.tracks || []).map((t) => [t.name, t]));
    for (const [name, handle] of this.tracks) {
      if (!listed.has(name)) {
        handle.stop();
        this.tracks.delete(name);
      }
    }
    for (const [name, t] of listed) {
      if (this.tracks.has(name)) continue;
      if (name === 'video') this.startVideo(t, () => this.canvas, () => {}, 'frames');
      else if (name === 'screen' && this.screen) this.startVideo(t, () => this.screen.open(), () => this.screen.close(), 'screenFrames');
      else if (name === 'audio') this.startAudio(t);
    }
  }

  /** Subscribes to `t.name` and hands its objects to `onObject`; returns the track's handle. */
  track(t, onObject, cleanup) {
    let sub = null;
    let live = true;
    const handle = {
      stop: () => {
        if (!live) return;
        live = false;
        sub?.unsubscribe();
        cleanup();
      },
    };
    this.tracks.set(t.name, handle);
    this.client.subscribe(this.namespace, t.name, (o) => live && onObject(o)).then((s) => {
      sub = s;
      if (!live) return s.unsubscribe();
      // The publisher ended the track (a share stopped, a session replaced): let it go; a
      // catalog that still lists it starts it again.
      s.done.then(() => {
        if (this.tracks.get(t.name) === handle) this.tracks.delete(t.name);
        handle.stop();
      });
    }, (e) => {
      console.warn(`${t.name} subscribe`, e);
      if (this.tracks.get(t.name) === handle) this.tracks.delete(t.name);
      handle.stop();
    });
    return handle;
  }

  /** Decodes a video track to a canvas. The camera is held back to its audio's delay (lip
   *  sync, from the mixer's reports); a screen share is drawn as it comes. */
  startVideo(t, openCanvas, closeCanvas, counter) {
    const canvas = openCanvas();
    const ctx2d = canvas.getContext('2d');
    const sync = t.name === 'video';
    const queue = [];
    let timer = null;
    const draw = (frame) => {
      if (canvas.width !== frame.displayWidth) {
        canvas.width = frame.displayWidth;
        canvas.height = frame.displayHeight;
      }
      ctx2d.drawImage(frame, 0, 0, canvas.width, canvas.height);
      const lag = nowMs() - frame.timestamp / 1000;
      this.stats.latencies.push(lag);
      if (this.stats.latencies.length > 600) this.stats.latencies.shift();
      const heard = sync ? lagOf(this.audioSource) : null;
      if (heard != null) {
        this.stats.avSkew.push(lag - heard);
        if (this.stats.avSkew.length > 300) this.stats.avSkew.shift();
      }
      this.stats[counter]++;
      frame.close();
    };
    const pump = () => {
      timer = null;
      while (queue.length) {
        const heard = sync ? lagOf(this.audioSource) : null;
        const wait = heard == null ? 0 : Math.min(MAX_HOLD_MS, heard) - (nowMs() - queue[0].timestamp / 1000);
        if (wait > 2) {
          timer = setTimeout(pump, wait);
          return;
        }
        draw(queue.shift());
      }
    };
    const decoder = new VideoDecoder({
      output: (frame) => {
        queue.push(frame);
        while (queue.length > 12) draw(queue.shift()); // bounded
        if (!timer) pump();
      },
      error: (e) => console.warn('video decoder', e),
    });
    decoder.configure({ codec: t.selectionParams.codec, optimizeForLatency: true, ...description(t) });
    let needKey = true;
    let lastGroup = -1;
    this.track(t, ({ group, object, payload, captureUs }) => {
      this.stats.bytes += payload.length;
      // Groups arrive newest first on a narrow path: the tail of an older group after a newer
      // keyframe would decode against the wrong reference, so it is dropped.
      if (group < lastGroup) return;
      if (object === 0) {
        if (lastGroup >= 0 && group > lastGroup + 1) this.stats.droppedGroups += group - lastGroup - 1;
        lastGroup = group;
        needKey = false;
      }
      if (needKey || decoder.state !== 'configured') return;
      const timestamp = captureUs ?? Math.round(nowMs() * 1000);
      try {
        decoder.decode(new EncodedVideoChunk({ type: object === 0 ? 'key' : 'delta', timestamp, data: payload }));
      } catch (e) {
        needKey = true;
      }
    }, () => {
      if (decoder.state !== 'closed') decoder.close();
      clearTimeout(timer);
      for (const f of queue.splice(0)) f.close();
      closeCanvas();
    });
  }

  startAudio(t) {
    const source = nextSource++;
    this.audioSource = source;
    const stamps = []; // capture times of the chunks being decoded
    const out = output().catch(() => null);
    const decoder = new AudioDecoder({
      output: (data) => {
        const samples = new Float32Array(data.numberOfFrames);
        data.copyTo(samples, { planeIndex: 0, format: 'f32-planar' });
        let sum = 0;
        for (const s of samples) sum += s * s;
        this.stats.audioRms = Math.max(this.stats.audioRms * 0.9, Math.sqrt(sum / samples.length));
        this.stats.audioPackets++;
        // The decoder counts output timestamps on from its first input (lost packets make them
        // drift), so the capture time comes from the chunk itself: one output per chunk, in order.
        const captureUs = stamps.shift() ?? data.timestamp;
        out.then((o) => o?.node.port.postMessage({ source, samples, captureUs }, [samples.buffer]));
        data.close();
      },
      error: (e) => console.warn('audio decoder', e),
    });
    decoder.configure({
      codec: t.selectionParams.codec, sampleRate: t.selectionParams.samplerate || 48000,
      numberOfChannels: Number(t.selectionParams.channelConfig) || 1, ...description(t),
    });
    let audioGroup = -1;
    this.track(t, ({ group, payload, captureUs }) => {
      this.stats.bytes += payload.length;
      // Packets of a group older than the newest one heard would play late: skip them.
      if (group < audioGroup) return;
      audioGroup = group;
      if (decoder.state !== 'configured') return;
      const timestamp = captureUs ?? Math.round(nowMs() * 1000);
      stamps.push(timestamp);
      if (stamps.length > 100) stamps.shift();
      decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp, data: payload }));
    }, () => {
      if (decoder.state !== 'closed') decoder.close();
      if (this.audioSource === source) this.audioSource = null;
      out.then((o) => o?.node.port.postMessage({ source, remove: true }));
    });
  }

  stopTracks() {
    for (const h of this.tracks.values()) h.stop();
    this.tracks.clear();
  }

  stop() {
    this.stopped = true;
    const catalog = this.catalog;
    this.catalog = null;
    catalog?.unsubscribe();
    this.stopTracks();
  }
}
