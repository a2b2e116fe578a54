// Plays Float32 mono samples posted from the main thread, from a bounded ring buffer.
class RoomcastPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.buffer = new Float32Array(48000); // 1 s bound: older audio is dropped, never queued
    this.read = 0;
    this.write = 0;
    this.port.onmessage = (e) => {
      for (const s of e.data) {
        this.buffer[this.write] = s;
        this.write = (this.write + 1) % this.buffer.length;
        if (this.write === this.read) this.read = (this.read + 1) % this.buffer.length;
      }
    };
  }

  process(_inputs, outputs) {
    for (const channel of outputs[0]) channel.fill(0);
    const out = outputs[0][0];
    for (let i = 0; i < out.length && this.read !== this.write; i++) {
      out[i] = this.buffer[this.read];
      this.read = (this.read + 1) % this.buffer.length;
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    return true;
  }
}
registerProcessor('roomcast-player', RoomcastPlayer);
