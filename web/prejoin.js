// The screen before a room: camera preview, microphone level, device choice. Resolves with
// the chosen devices, or null when the person goes back.
import { $, state, fillDevices } from './ui.js';

/** How long a join waits for the preview's devices to answer before going on without them. */
const PREVIEW_WAIT_MS = 2000;

export async function prejoin(roomName) {
  $('lobby').hidden = true;
  $('prejoin').hidden = false;
  $('prejoin-title').textContent = roomName ? `Ready to join ${roomName}?` : 'Ready to join?';
  let stream = null;
  let meter = null;
  const open = async () => {
    stream?.getTracks().forEach((t) => t.stop());
    meter?.close();
    const video = $('prejoin-camera').value ? { deviceId: { exact: $('prejoin-camera').value } } : true;
    const audio = $('prejoin-mic').value ? { deviceId: { exact: $('prejoin-mic').value } } : true;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video, audio });
      $('prejoin-note').textContent = '';
    } catch (e) {
      stream = new MediaStream();
      $('prejoin-note').textContent = `camera/microphone unavailable: ${e.message} (you can still join and watch)`;
    }
    $('preview').srcObject = stream;
    const devices = await navigator.mediaDevices.enumerateDevices().catch(() => []);
    fillDevices($('prejoin-camera'), devices, 'videoinput', stream.getVideoTracks()[0]?.getSettings().deviceId);
    fillDevices($('prejoin-mic'), devices, 'audioinput', stream.getAudioTracks()[0]?.getSettings().deviceId);
    if (stream.getAudioTracks().length) {
      // A level meter, so a silent microphone shows before anyone else hears it.
      const ctx = new AudioContext();
      const analyser = ctx.createAnalyser();
      ctx.createMediaStreamSource(stream).connect(analyser);
      const data = new Float32Array(analyser.fftSize);
      const timer = setInterval(() => {
        analyser.getFloatTimeDomainData(data);
        $('mic-level').value = Math.min(1, Math.sqrt(data.reduce((s, x) => s + x * x, 0) / data.length) * 4);
      }, 100);
      meter = { close: () => { clearInterval(timer); ctx.close().catch(() => {}); } };
    }
  };
  // The buttons work at once, even before the preview is up.
  const chosen = new Promise((resolve) => {
    $('prejoin-go').onclick = () => resolve({ video: $('prejoin-camera').value, audio: $('prejoin-mic').value });
    $('prejoin-back').onclick = () => resolve(null);
  });
  const opened = open();
  $('prejoin-camera').onchange = open;
  $('prejoin-mic').onchange = open;
  const choice = await chosen;
  // The preview is let go before the room captures. A camera or microphone that does not
  // answer (a stuck device, a slow permission) must not hold the join: it gets a moment, then
  // its preview is let go whenever it arrives.
  const release = () => {
    stream?.getTracks().forEach((t) => t.stop());
    meter?.close();
  };
  const settled = await Promise.race([
    opened.then(() => true, () => true),
    new Promise((r) => setTimeout(() => r(false), PREVIEW_WAIT_MS)),
  ]);
  if (settled) release();
  else opened.then(release, release);
  $('prejoin').hidden = true;
  if (!choice) $('lobby').hidden = false;
  state.devices = choice;
  return choice;
}
