// Camera, microphone and screen: capture -> WebCodecs -> MoQ objects (playback: viewer.js).
// Object format: docs/protocol.md (catalog + LOC frames, one group per GOP).

export const VIDEO_CODEC = 'vp8';
export const AUDIO_CODEC = 'opus';
const GOP_FRAMES = 60; // a keyframe, hence a new group, every 2 s at 30 fps
const AUDIO_GROUP = 50; // 1 s of 20 ms Opus packets per group
const PRIORITY = { audio: 200, catalog: 150, video: 100, screen: 100 };

/** Wall-clock milliseconds, comparable between pages on one machine. */
export const nowMs = () => performance.timeOrigin + performance.now();

/** Publishes a participant's tracks from a MediaStream. */
/** A bitrate that fits the picture: ~0.08 bit per pixel per frame, within 150 kbit/s-2.5 Mbit/s. */
export function fittingBitrate(width, height, framerate = 30) {
  return Math.round(Math.min(2_500_000, Math.max(150_000, width * height * framerate * 0.08)));
}

export class Publisher {
  constructor(client, namespace) {
    this.client = client;
    this.namespace = namespace;
    this.catalog = { version: 1, streamingFormat: 1, streamingFormatVersion: '0.2', tracks: [] };
    this.catalogGroup = 0;
    this.catalogTrack = client.track(namespace, 'catalog', PRIORITY.catalog, () => setTimeout(() => this.sendCatalog(), 0));
    this.stops = [];
    this.stats = { videoFrames: 0, audioPackets: 0, bytes: 0 };
  }

  async announce() {
    this.announcement = await this.client.publishNamespace(this.namespace);
  }

  sendCatalog() {
    const g = this.catalogGroup++;
    this.catalogTrack.write(g, 0, new TextEncoder().encode(JSON.stringify(this.catalog)), Math.round(nowMs() * 1000));
    this.catalogTrack.endGroup();
  }

  setCatalogTrack(entry) {
    this.catalog.tracks = this.catalog.tracks.filter((t) => t.name !== entry.name).concat([entry]);
    this.sendCatalog();
  }

  removeCatalogTrack(name) {
    this.catalog.tracks = this.catalog.tracks.filter((t) => t.name !== name);
    this.sendCatalog();
  }

  /** Encodes `videoTrack` as track `name` (video or screen). The bitrate starts at what fits
   *  the picture and backs off when the network drops groups, recovering slowly after.
   *  Returns `{ stop, replace(track) }`; `replace` switches the camera without re-announcing. */
  async publishVideo(videoTrack, name = 'video') {
    const settings = videoTrack.getSettings();
    let width = settings.width || 640;
    let height = settings.height || 480;
    let target = fittingBitrate(width, height);
    let bitrate = target;
    const track = this.client.track(this.namespace, name, PRIORITY[name], () => (forceKey = true));
    let forceKey = true;
    let lastDrop = 0;
    const configure = () => {
      encoder.configure({ codec: VIDEO_CODEC, width, height, bitrate, framerate: 30, latencyMode: 'realtime' });
      forceKey = true;
      this.stats.videoBitrate = bitrate;
    };
    track.onCongestion = () => {
      lastDrop = performance.now();
      bitrate = Math.max(150_000, Math.round(bitrate * 0.7));
      configure();
    };
    const recover = setInterval(() => {
      if (bitrate < target && performance.now() - lastDrop > 10_000) {
        bitrate = Math.min(target, Math.round(bitrate * 1.15));
        configure();
      }
    }, 5000);
    let group = -1;
    let object = 0;
    let frames = 0;
    const encoder = new VideoEncoder({
      output: (chunk) => {
        if (chunk.type === 'key') {
          group++;
          object = 0;
        }
        if (group < 0) return;
        const data = new Uint8Array(chunk.byteLength);
        chunk.copyTo(data);
        this.stats.videoFrames++;
        this.stats.bytes += data.length;
        track.write(group, object++, data, chunk.timestamp);
      },
      error: (e) => console.warn('video encoder', e),
    });
    configure();
    this.setCatalogTrack({
      name, packaging: 'loc', renderGroup: 1,
      selectionParams: { codec: VIDEO_CODEC, width, height, framerate: 30, bitrate },
    });
    let reader = new MediaStreamTrackProcessor({ track: videoTrack }).readable.getReader();
    let running = true;
    (async () => {
      while (running) {
        const current = reader;
        const { value: frame, done } = await current.read().catch(() => ({ done: true }));
        if (done) {
          if (current !== reader) continue; // the source was replaced
          break;
        }
        // Timestamp = capture wall clock (µs), carried to the viewer for glass-to-glass latency.
        const stamped = new VideoFrame(frame, { timestamp: Math.round(nowMs() * 1000) });
        frame.close();
        if (track.subscribed && encoder.encodeQueueSize < 4) {
          encoder.encode(stamped, { keyFrame: forceKey || frames % GOP_FRAMES === 0 });
          forceKey = false;
          frames++;
        }
        stamped.close();
      }
    })().catch((e) => console.warn('video capture', e));
    const stop = () => {
      running = false;
      clearInterval(recover);
      reader.cancel().catch(() => {});
      if (encoder.state !== 'closed') encoder.close();
      track.endGroup();
      track.end();
      this.client.published.delete([...this.namespace, name].join('/'));
      this.removeCatalogTrack(name);
    };
    const replace = (newTrack) => {
      const s = newTrack.getSettings();
      const old = reader;
      reader = new MediaStreamTrackProcessor({ track: newTrack }).readable.getReader();
      old.cancel().catch(() => {});
      if ((s.width && s.width !== width) || (s.height && s.height !== height)) {
        width = s.width;
        height = s.height;
        target = fittingBitrate(width, height);
        bitrate = target;
      }
      configure();
    };
    this.stops.push(stop);
    return { stop, replace };
  }

  /** Encodes `audioTrack` as Opus on track `audio`. */
  async publishAudio(audioTrack) {
    const track = this.client.track(this.namespace, 'audio', PRIORITY.audio);
    const settings = audioTrack.getSettings();
    const sampleRate = settings.sampleRate || 48000;
    const numberOfChannels = 1;
    let packets = 0;
    const encoder = new AudioEncoder({
      output: (chunk) => {
        const data = new Uint8Array(chunk.byteLength);
        chunk.copyTo(data);
        const group = Math.floor(packets / AUDIO_GROUP);
        const object = packets % AUDIO_GROUP;
        packets++;
        this.stats.audioPackets++;
        this.stats.bytes += data.length;
        // The encoder counts its output timestamps from the first input on, so they drift
        // from the wall clock when capture delivers fewer samples than real time. The capture
        // time sent is the wall clock now, less the packet's own duration.
        track.write(group, object, data, Math.round(nowMs() * 1000) - (chunk.duration ?? 0));
        if (object === AUDIO_GROUP - 1) track.endGroup();
      },
      error: (e) => console.warn('audio encoder', e),
    });
    encoder.configure({ codec: AUDIO_CODEC, sampleRate, numberOfChannels, bitrate: 64000 });
    this.setCatalogTrack({
      name: 'audio', packaging: 'loc', renderGroup: 1,
      selectionParams: { codec: AUDIO_CODEC, samplerate: sampleRate, channelConfig: String(numberOfChannels), bitrate: 64000 },
    });
    let reader = new MediaStreamTrackProcessor({ track: audioTrack }).readable.getReader();
    let running = true;
    (async () => {
      while (running) {
        const current = reader;
        const { value: data, done } = await current.read().catch(() => ({ done: true }));
        if (done) {
          if (current !== reader) continue; // the source was replaced
          break;
        }
        if (track.subscribed) {
          const stamped = mono(data, Math.round(nowMs() * 1000));
          encoder.encode(stamped);
          stamped.close();
        }
        data.close();
      }
    })().catch((e) => console.warn('audio capture', e));
    const stop = () => {
      running = false;
      reader.cancel().catch(() => {});
      if (encoder.state !== 'closed') encoder.close();
      track.endGroup();
      track.end();
      this.client.published.delete([...this.namespace, 'audio'].join('/'));
      this.removeCatalogTrack('audio');
    };
    const replace = (newTrack) => {
      const old = reader;
      reader = new MediaStreamTrackProcessor({ track: newTrack }).readable.getReader();
      old.cancel().catch(() => {});
    };
    this.stops.push(stop);
    return { stop, replace };
  }

  stop() {
    for (const s of this.stops) s();
    this.stops = [];
    this.announcement?.withdraw();
  }
}

/** The first channel of `data` as a mono AudioData with a new timestamp. */
function mono(data, timestamp) {
  const samples = new Float32Array(data.numberOfFrames);
  data.copyTo(samples, { planeIndex: 0, format: 'f32-planar' });
  return new AudioData({ format: 'f32-planar', sampleRate: data.sampleRate, numberOfFrames: data.numberOfFrames, numberOfChannels: 1, timestamp, data: samples });
}
