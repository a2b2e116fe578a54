// A minimal IETF MoQ Transport draft-18 client over WebTransport, as roomcast speaks it.
// Wire format: docs/protocol.md. Plain ES module, no build step.

const SETUP = 0x2f00;
const MSG = { SUBSCRIBE: 0x03, SUBSCRIBE_OK: 0x04, REQUEST_ERROR: 0x05, PUBLISH_DONE: 0x0b };

/** Encodes a draft-18 variable-length integer (leading ones give the length). */
export function encodeVarint(v) {
  if (v < 0x80) return [v];
  if (v < 0x4000) return [0x80 | (v >> 8), v & 0xff];
  if (v < 0x200000) return [0xc0 | (v >> 16), (v >> 8) & 0xff, v & 0xff];
  if (v < 0x10000000) return [0xe0 | (v >>> 24), (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff];
  throw new RangeError('varint too large for this client');
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

export class MoqClient {
  /** Connects to `url` (https://host:port/?token=...), pinning `certSha256` if given. */
  static async connect(url, certSha256) {
    const options = { protocols: ['moqt-18'] };
    if (certSha256) options.serverCertificateHashes = [{ algorithm: 'sha-256', value: hexToBytes(certSha256) }];
    const wt = new WebTransport(url, options);
    await wt.ready;
    const client = new MoqClient(wt);
    await client.setup();
    return client;
  }

  constructor(wt) {
    this.wt = wt;
    this.nextRequest = 0;
    this.tracks = new Map(); // alias -> handler
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
    this.acceptData(incoming);
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
    const track = this.tracks.get(alias);
    let id = -1;
    while (!(await r.atEnd())) {
      const delta = await r.varint();
      id = id < 0 ? delta : id + delta + 1;
      if (props) await r.bytes(await r.varint());
      const len = await r.varint();
      if (len === 0) {
        await r.varint(); // object status
        continue;
      }
      const payload = await r.bytes(len);
      track?.onObject({ group, object: id, payload });
    }
  }

  /** Subscribes to `track` in `namespace`; `onObject({group, object, payload})` per object. */
  async subscribe(namespace, track, onObject) {
    const id = this.nextRequest;
    this.nextRequest += 2;
    // Alias = request id on roomcast; register first, data may overtake SUBSCRIBE_OK.
    this.tracks.set(id, { onObject });
    const stream = await this.wt.createBidirectionalStream();
    const writer = stream.writable.getWriter();
    const filter = [0x21, 1, 0x01]; // SUBSCRIPTION_FILTER = NextGroupStart
    const payload = [...encodeVarint(id), ...encodeTuple(namespace), ...encodeBytes([...new TextEncoder().encode(track)]), 1, ...filter];
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
      this.tracks.set(alias, { onObject });
      this.tracks.delete(id);
    }
    return { alias, writer };
  }

  close() {
    this.wt.close();
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
