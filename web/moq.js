// A minimal IETF MoQ Transport draft-18 client over WebTransport, as roomcast speaks it.
// Wire format: docs/protocol.md. Plain ES module, no build step.

const SETUP = 0x2f00;
const MSG = {
  SUBSCRIBE: 0x03, SUBSCRIBE_OK: 0x04, REQUEST_ERROR: 0x05, PUBLISH_NAMESPACE: 0x06, REQUEST_OK: 0x07,
  NAMESPACE: 0x08, UNSUBSCRIBE: 0x0a, PUBLISH_DONE: 0x0b, NAMESPACE_DONE: 0x0e, GOAWAY: 0x10, SUBSCRIBE_NAMESPACE: 0x50,
};
/** Objects a published track may have waiting to be written. */
const MAX_PENDING = 90;
/** How long, and how many at once, data streams wait for their SUBSCRIBE_OK. */
const HOLD_MS = 2000;
const HOLD_STREAMS = 64;
/** Object extension: capture timestamp, wall clock microseconds since the Unix epoch (even
 *  type: varint value), as docs/protocol.md and the LOC draft define it. */
export const EXT_CAPTURE_TIMESTAMP = 0x06;

/** Encodes a draft-18 variable-length integer: n leading one bits, then 7-n + 8n value bits. */
export function encodeVarint(value) {
  const v = BigInt(value);
  for (let n = 0; n < 8; n++) {
    const bits = BigInt(7 - n + 8 * n);
    if (v < 1n << bits) {
      const out = [];
      for (let i = n; i >= 0; i--) out.push(Number((v >> BigInt(8 * (n - i))) & 0xffn));
      out.reverse();
      out[0] |= (0xff << (8 - n)) & 0xff;
      return out;
    }
  }
  const out = [0xff];
  for (let i = 7; i >= 0; i--) out.push(Number((v >> BigInt(8 * i)) & 0xffn));
  return out;
}

function encodeBytes(bytes) {
  return [...encodeVarint(bytes.length), ...bytes];
}

function encodeTuple(parts) {
  const enc = new TextEncoder();
  return [...encodeVarint(parts.length), ...parts.flatMap((p) => encodeBytes([...enc.encode(p)]))];
}

function frame(type, payload) {
  if (payload.length > 0xffff) throw new RangeError('control message too large');
  return new Uint8Array([...encodeVarint(type), payload.length >> 8, payload.length & 0xff, ...payload]);
}

/** Buffered reader over a ReadableStream of Uint8Array chunks. */
export class StreamReader {
  constructor(readable) {
    this.reader = readable.getReader();
    this.buf = new Uint8Array(0);
    this.done = false;
  }
  async fill(n) {
    while (this.buf.length < n) {
      const { value, done } = await this.reader.read();
      if (done) {
        this.done = true;
        return false;
      }
      const merged = new Uint8Array(this.buf.length + value.length);
      merged.set(this.buf);
      merged.set(value, this.buf.length);
      this.buf = merged;
    }
    return true;
  }
  /** Stops reading (STOP_SENDING to the sender). */
  async cancel() {
    await this.reader.cancel().catch(() => {});
  }
  async atEnd() {
    return this.buf.length === 0 && !(await this.fill(1));
  }
  async bytes(n) {
    if (!(await this.fill(n))) throw new Error('stream ended mid-message');
    const out = this.buf.slice(0, n);
    this.buf = this.buf.slice(n);
    return out;
  }
  async u8() {
    return (await this.bytes(1))[0];
  }
  async u16() {
    const b = await this.bytes(2);
    return (b[0] << 8) | b[1];
  }
  async varint() {
    const first = await this.u8();
    let ones = 0;
    while (ones < 8 && first & (0x80 >> ones)) ones++;
    let value = ones === 8 ? 0 : first & (0xff >> (ones + 1));
    const rest = ones === 8 ? 8 : ones;
    for (const b of await this.bytes(rest)) value = value * 256 + b;
    return value;
  }
}

async function readTuple(r) {
  const n = await r.varint();
  const parts = [];
  for (let i = 0; i < n; i++) parts.push(new TextDecoder().decode(await r.bytes(await r.varint())));
  return parts;
}

/** Parses one control frame from `r`: { type, payload: StreamReader over the payload }. */
async function readFrame(r) {
  const type = await r.varint();
  const len = await r.u16();
  const body = await r.bytes(len);
  return { type, body: new StreamReader(new Blob([body]).stream()) };
}

/** Hex SHA-256 string to the bytes `serverCertificateHashes` wants. */
function hexToBytes(hex) {
  return new Uint8Array(hex.match(/../g).map((h) => parseInt(h, 16)));
}

/**
 * The certificate hash to pin for the relay `/api/info` describes: its generated (or other
 * short-lived self-signed) certificate, or none for a CA-issued one, which the browser checks
 * as for any HTTPS site (and `serverCertificateHashes` would refuse, valid over 14 days).
 */
export function pinFor(info) {
  return info.cert_pin ? info.cert_sha256 : null;
}

export class MoqClient {
  /** Connects to `url` (https://host:port/?token=...), pinning `certSha256` if given. */
  static async connect(url, certSha256) {
    const options = { protocols: ['moqt-18'] };
    if (certSha256) options.serverCertificateHashes = [{ algorithm: 'sha-256', value: hexToBytes(certSha256) }];
    const wt = new WebTransport(url, options);
    await wt.ready;
    const client = new MoqClient(wt);
    // Where the session went (host:port; the token stays out of it).
    client.relay = new URL(url).host;
    try {
      await client.setup();
    } catch (e) {
      // A relay that refuses the session (e.g. no token) closes it before its SETUP, with a
      // code and reason in CLOSE_WEBTRANSPORT_SESSION: report those rather than a lost stream.
      const info = await Promise.race([wt.closed.catch(() => null), new Promise((r) => setTimeout(r, 1000, null))]);
      if (info?.reason) throw new Error(`closed by the relay (code ${info.closeCode}): ${info.reason}`);
      throw e;
    }
    return client;
  }

  constructor(wt) {
    this.wt = wt;
    this.nextRequest = 0;
    this.nextAlias = 1;
    this.tracks = new Map(); // alias -> handler
    this.waiting = new Map(); // alias -> [resolve] for data that overtook SUBSCRIBE_OK
    this.held = 0; // data streams waiting for their subscription's OK
    this.published = new Map(); // "ns/.../track" -> PublishedTrack
    this.closed = wt.closed;
  }

  async setup() {
    // Our control stream must be the first stream we open.
    this.control = await this.wt.createUnidirectionalStream();
    this.controlWriter = this.control.getWriter();
    await this.controlWriter.write(new Uint8Array([...encodeVarint(SETUP), 0, 0]));
    const incoming = this.wt.incomingUnidirectionalStreams.getReader();
    const { value: serverControl } = await incoming.read();
    const r = new StreamReader(serverControl);
    const type = await r.varint();
    if (type !== SETUP) throw new Error(`expected SETUP, got ${type}`);
    await r.bytes(await r.u16());
    this.readControl(r);
    this.acceptData(incoming);
    this.acceptRequests(this.wt.incomingBidirectionalStreams.getReader());
  }

  /**
   * Reads the relay's control stream after SETUP. GOAWAY (the relay is stopping) sets
   * `this.goaway = { uri, timeoutMs }` and calls `this.onGoAway`; other messages are skipped.
   */
  async readControl(r) {
    try {
      for (;;) {
        const { type, body } = await readFrame(r);
        if (type !== MSG.GOAWAY || this.goaway) continue;
        const uri = new TextDecoder().decode(await body.bytes(await body.varint()));
        const timeoutMs = await body.varint().catch(() => 0);
        this.goaway = { uri, timeoutMs };
        this.onGoAway?.(this.goaway);
      }
    } catch (_) {
      // The session ended; `closed` says so.
    }
  }

  async acceptRequests(incoming) {
    for (;;) {
      const { value, done } = await incoming.read().catch(() => ({ done: true }));
      if (done) return;
      this.serveSubscribe(value).catch((e) => console.warn('request stream', e));
    }
  }

  /** Answers a SUBSCRIBE from the relay for one of our tracks, until UNSUBSCRIBE. */
  async serveSubscribe(stream) {
    const r = new StreamReader(stream.readable);
    const writer = stream.writable.getWriter();
    const { type, body } = await readFrame(r);
    if (type !== MSG.SUBSCRIBE) {
      await writer.abort();
      return;
    }
    await body.varint(); // request id
    const ns = await readTuple(body);
    const name = new TextDecoder().decode(await body.bytes(await body.varint()));
    const track = this.published.get([...ns, name].join('/'));
    if (!track) {
      const reason = [...new TextEncoder().encode('no such track')];
      await writer.write(frame(MSG.REQUEST_ERROR, [0x10, 0, ...encodeBytes(reason)]));
      await writer.close();
      return;
    }
    const alias = this.nextAlias++;
    await writer.write(frame(MSG.SUBSCRIBE_OK, [...encodeVarint(alias), 0]));
    const sub = track.addSubscriber(alias);
    const unsubscribed = (async () => {
      try {
        for (;;) {
          const f = await readFrame(r);
          if (f.type === MSG.UNSUBSCRIBE) return;
        }
      } catch (_) {
        // Stream ended or reset: the subscription is over either way.
      }
    })();
    // Until the relay unsubscribes, or the track ends here (then PUBLISH_DONE tells it so,
    // with the number of data streams it must wait for).
    const ended = await Promise.race([unsubscribed.then(() => null), sub.ended]);
    track.removeSubscriber(alias);
    if (ended) {
      const reason = [...new TextEncoder().encode(ended.reason)];
      // On the request's own stream the message carries no request id (draft-18).
      const done = [...encodeVarint(ended.code), ...encodeVarint(sub.streams), ...encodeBytes(reason)];
      await writer.write(frame(MSG.PUBLISH_DONE, done)).catch(() => {});
    }
    writer.close().catch(() => {});
  }

  /** Announces `namespace`; returns a handle whose `withdraw()` ends it. */
  async publishNamespace(namespace) {
    const id = this.nextRequest;
    this.nextRequest += 2;
    const stream = await this.wt.createBidirectionalStream();
    const writer = stream.writable.getWriter();
    await writer.write(frame(MSG.PUBLISH_NAMESPACE, [...encodeVarint(id), ...encodeTuple(namespace), 0]));
    const { type, body } = await readFrame(new StreamReader(stream.readable));
    if (type === MSG.REQUEST_ERROR) {
      const code = await body.varint();
      await body.varint();
      const reason = new TextDecoder().decode(await body.bytes(await body.varint()));
      throw new Error(`publish refused: code ${code}: ${reason}`);
    }
    if (type !== MSG.REQUEST_OK) throw new Error(`unexpected response ${type}`);
    return { withdraw: () => writer.abort().catch(() => {}) };
  }

  /** A track we publish under `namespace`; the relay subscribes to it on demand. */
  track(namespace, name, priority, onSubscribe) {
    const t = new PublishedTrack(this, priority, onSubscribe);
    this.published.set([...namespace, name].join('/'), t);
    return t;
  }

  /** Discovers namespaces under `prefix`: onAdded(ns) / onRemoved(ns) as they come and go. */
  async subscribeNamespace(prefix, onAdded, onRemoved) {
    const id = this.nextRequest;
    this.nextRequest += 2;
    const stream = await this.wt.createBidirectionalStream();
    const writer = stream.writable.getWriter();
    await writer.write(frame(MSG.SUBSCRIBE_NAMESPACE, [...encodeVarint(id), ...encodeTuple(prefix), 0]));
    const r = new StreamReader(stream.readable);
    const first = await readFrame(r);
    if (first.type !== MSG.REQUEST_OK) throw new Error(`subscribe_namespace refused (${first.type})`);
    (async () => {
      for (;;) {
        const { type, body } = await readFrame(r);
        const ns = [...prefix, ...(await readTuple(body))];
        if (type === MSG.NAMESPACE) onAdded(ns);
        else if (type === MSG.NAMESPACE_DONE) onRemoved(ns);
      }
    })().catch(() => {});
    return { writer };
  }

  async acceptData(incoming) {
    for (;;) {
      const { value, done } = await incoming.read().catch(() => ({ done: true }));
      if (done) return;
      this.readSubgroup(new StreamReader(value)).catch((e) => console.warn('data stream', e));
    }
  }

  async readSubgroup(r) {
    const t = await r.varint();
    if (t < 0x10 || t > 0x7d || !(t & 0x10) || (t & 0x06) === 0x06) throw new Error(`bad stream type ${t}`);
    const props = t & 0x01;
    const mode = t & 0x06;
    const alias = await r.varint();
    const group = await r.varint();
    if (mode === 0x04) await r.varint();
    if (!(t & 0x20)) await r.u8();
    const track = this.tracks.get(alias) ?? (await this.awaitTrack(alias));
    if (!track) {
      await r.cancel();
      return;
    }
    let id = -1;
    while (!(await r.atEnd())) {
      const delta = await r.varint();
      id = id < 0 ? delta : id + delta + 1;
      let captureUs = null;
      if (props) {
        const ext = new StreamReader(new Blob([await r.bytes(await r.varint())]).stream());
        let key = 0;
        while (!(await ext.atEnd())) {
          key += await ext.varint();
          if (key % 2 === 0) {
            const v = await ext.varint();
            if (key === EXT_CAPTURE_TIMESTAMP) captureUs = v;
          } else {
            await ext.bytes(await ext.varint());
          }
        }
      }
      const len = await r.varint();
      if (len === 0) {
        await r.varint(); // object status
        continue;
      }
      const payload = await r.bytes(len);
      track?.onObject({ group, object: id, payload, captureUs });
    }
  }

  /** Registers the handler of `alias` and releases data streams held for it. */
  setTrack(alias, handler) {
    this.tracks.set(alias, handler);
    for (const resolve of this.waiting.get(alias) ?? []) resolve(handler);
    this.waiting.delete(alias);
  }

  /**
   * A data stream can overtake its SUBSCRIBE_OK on a lossy path (the OK is retransmitted,
   * the media is not waiting for it). Hold such a stream, unread, until the alias is known:
   * at most HOLD_MS and HOLD_STREAMS at once; then give up on it (only that group is lost).
   */
  awaitTrack(alias) {
    if (this.held >= HOLD_STREAMS) return Promise.resolve(null);
    this.held++;
    return new Promise((resolve) => {
      const list = this.waiting.get(alias) ?? [];
      list.push(resolve);
      this.waiting.set(alias, list);
      setTimeout(() => {
        const rest = (this.waiting.get(alias) ?? []).filter((r) => r !== resolve);
        if (rest.length) this.waiting.set(alias, rest);
        else this.waiting.delete(alias);
        resolve(null);
      }, HOLD_MS);
    }).finally(() => this.held--);
  }

  /**
   * Subscribes to `track` in `namespace`; `onObject({group, object, payload, captureUs})` per
   * object. Resolves, once accepted, with `{ alias, done, unsubscribe }`: `done` resolves with
   * `{ code, reason }` when the publisher ends the subscription (PUBLISH_DONE) or its request
   * stream ends; `unsubscribe()` sends UNSUBSCRIBE and stops delivering objects.
   */
  async subscribe(namespace, track, onObject) {
    const id = this.nextRequest;
    this.nextRequest += 2;
    // Alias = request id on roomcast; register first, data may overtake SUBSCRIBE_OK.
    this.setTrack(id, { onObject });
    const stream = await this.wt.createBidirectionalStream();
    const writer = stream.writable.getWriter();
    // No SUBSCRIPTION_FILTER: roomcast then starts at the newest group's first object (a
    // keyframe), where Next Group Start would wait for the next group.
    const payload = [...encodeVarint(id), ...encodeTuple(namespace), ...encodeBytes([...new TextEncoder().encode(track)]), 0];
    await writer.write(frame(MSG.SUBSCRIBE, payload));
    const reader = new StreamReader(stream.readable);
    const { type, body } = await readFrame(reader);
    if (type === MSG.REQUEST_ERROR) {
      this.tracks.delete(id);
      const code = await body.varint();
      await body.varint();
      const reason = new TextDecoder().decode(await body.bytes(await body.varint()));
      throw new Error(`subscribe refused: code ${code}: ${reason}`);
    }
    if (type !== MSG.SUBSCRIBE_OK) throw new Error(`unexpected response ${type}`);
    const alias = await body.varint();
    if (alias !== id) {
      this.tracks.delete(id);
      this.setTrack(alias, { onObject });
    }
    let over = false;
    const finish = () => {
      over = true;
      if (this.tracks.get(alias)?.onObject === onObject) this.tracks.delete(alias);
    };
    const done = (async () => {
      try {
        for (;;) {
          const f = await readFrame(reader);
          if (f.type !== MSG.PUBLISH_DONE) continue;
          const code = await f.body.varint();
          await f.body.varint(); // stream count
          const reason = new TextDecoder().decode(await f.body.bytes(await f.body.varint()));
          return { code, reason };
        }
      } catch (_) {
        return { code: null, reason: 'request stream ended' };
      } finally {
        finish();
      }
    })();
    const unsubscribe = async () => {
      if (over) return;
      finish();
      // UNSUBSCRIBE on the subscription's own stream: no fields left.
      await writer.write(frame(MSG.UNSUBSCRIBE, [])).catch(() => {});
      await writer.close().catch(() => {});
    };
    return { alias, done, unsubscribe };
  }

  close() {
    this.wt.close();
  }
}

/** Writes one published track: one unidirectional stream per group to every subscriber. */
export class PublishedTrack {
  constructor(client, priority, onSubscribe) {
    this.client = client;
    this.priority = priority;
    this.onSubscribe = onSubscribe;
    this.subs = new Map(); // alias -> { group, writer, last }
    // Writes run one after another so objects keep their order; at most MAX_PENDING wait.
    this.queue = Promise.resolve();
    this.pending = 0;
  }

  /** A new subscription; its `ended` resolves with `{ code, reason }` once the track ends. */
  addSubscriber(alias) {
    let end;
    const ended = new Promise((resolve) => (end = resolve));
    const sub = { group: null, writer: null, last: -1, streams: 0, ended, end };
    this.subs.set(alias, sub);
    this.onSubscribe?.();
    return sub;
  }

  /** Ends the track for every subscriber after the queued writes (PUBLISH_DONE, track ended). */
  end(code = 0x2, reason = 'track ended') {
    this.queue = this.queue.then(() => {
      const subs = [...this.subs.values()];
      this.closeStreams();
      for (const s of subs) s.end({ code, reason });
    });
  }

  removeSubscriber(alias) {
    const s = this.subs.get(alias);
    this.subs.delete(alias);
    s?.writer?.close().catch(() => {});
  }

  get subscribed() {
    return this.subs.size > 0;
  }

  /** Queues object `object` of group `group`. A subscriber that joined mid-group waits for the
   *  next group's first object, so it always starts at a keyframe. When the network cannot keep
   *  up, whole groups are dropped: the rest of this group is skipped, never queued without end. */
  write(group, object, payload, captureUs) {
    if (this.pending >= MAX_PENDING) {
      if (this.dropUntil !== group + 1) this.onCongestion?.();
      this.dropUntil = group + 1;
      return Promise.resolve();
    }
    if (this.dropUntil !== undefined && group < this.dropUntil) return Promise.resolve();
    this.pending++;
    this.queue = this.queue.then(() => this.send(group, object, payload, captureUs)).finally(() => this.pending--);
    return this.queue;
  }

  async send(group, object, payload, captureUs) {
    for (const [alias, s] of this.subs) {
      try {
        if (s.group !== group) {
          if (object !== 0) continue;
          s.writer?.close().catch(() => {});
          const stream = await this.client.wt.createUnidirectionalStream({ sendOrder: this.priority });
          s.streams++;
          s.writer = stream.getWriter();
          s.group = group;
          s.last = -1;
          // 0x55: explicit subgroup id, extension headers, first object, explicit priority.
          await s.writer.write(new Uint8Array([...encodeVarint(0x55), ...encodeVarint(alias), ...encodeVarint(group), 0, 255 - this.priority]));
        }
        const delta = s.last < 0 ? object : object - s.last - 1;
        s.last = object;
        const ext = captureUs == null ? [] : [...encodeVarint(EXT_CAPTURE_TIMESTAMP), ...encodeVarint(Math.round(captureUs))];
        const head = [...encodeVarint(delta), ...encodeVarint(ext.length), ...ext, ...encodeVarint(payload.length)];
        if (payload.length === 0) head.push(0);
        const buf = new Uint8Array(head.length + payload.length);
        buf.set(head);
        buf.set(payload, head.length);
        await s.writer.write(buf);
      } catch (e) {
        this.subs.delete(alias);
      }
    }
  }

  /** Ends the current group on every subscriber's stream (after queued writes). */
  endGroup() {
    this.queue = this.queue.then(() => this.closeStreams());
  }

  closeStreams() {
    for (const s of this.subs.values()) {
      s.writer?.close().catch(() => {});
      s.writer = null;
      s.group = null;
    }
  }
}

/** Checks roomcast's synthetic benchmark payload (see src/client.rs); returns send time µs. */
export function verifySynthetic(group, object, payload) {
  if (payload.length < 24) return null;
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  if (view.getBigUint64(0) !== BigInt(group) || view.getBigUint64(8) !== BigInt(object)) return null;
  const mask = (1n << 64n) - 1n;
  let x = (BigInt(group) * 0x9e3779b97f4a7c15n) & mask;
  x ^= BigInt(object);
  for (let i = 24; i < payload.length; i++) {
    x ^= (x << 13n) & mask;
    x ^= x >> 7n;
    x ^= (x << 17n) & mask;
    if (payload[i] !== Number(x & 0xffn)) return null;
  }
  return Number(view.getBigUint64(16));
}
