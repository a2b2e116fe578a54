// The video grid: our own camera and screen, and one tile per remote participant.
import { Publisher } from './media.js';
import { Viewer } from './viewer.js';
import { $, state, showError, fillDevices } from './ui.js';
import { refreshPeople } from './people.js';

export function stopMedia() {
  state.screenStop?.();
  state.publisher?.stop();
  state.publisher = null;
  state.camera?.getTracks().forEach((t) => t.stop());
  state.camera = null;
  for (const v of state.viewers.values()) v.viewer.stop();
  state.viewers.clear();
  $('grid').replaceChildren();
}

export async function startPublishing() {
  if (state.publisher) return;
  const me = state.user.username;
  const pub = new Publisher(state.client, ['room', state.room.id, me]);
  state.publisher = pub;
  try {
    // The devices chosen before joining, if any.
    const chosen = (id) => (id ? { deviceId: { exact: id } } : {});
    state.camera = await navigator.mediaDevices.getUserMedia({
      video: { width: 640, height: 480, ...chosen(state.devices?.video) },
      audio: state.devices?.audio ? chosen(state.devices.audio) : true,
    });
  } catch (e) {
    showError(`camera/microphone unavailable: ${e.message}`);
    state.camera = new MediaStream();
  }
  await pub.announce();
  const video = state.camera.getVideoTracks()[0];
  const audio = state.camera.getAudioTracks()[0];
  state.videoOut = video ? await pub.publishVideo(video, 'video') : null;
  state.audioOut = audio ? await pub.publishAudio(audio) : null;
  listDevices();
  const tile = makeTile(`${me} (you)`, 'self');
  const el = document.createElement('video');
  el.muted = true;
  el.autoplay = true;
  el.playsInline = true;
  el.srcObject = state.camera;
  tile.prepend(el);
}

/** Fills the camera and microphone pickers. */
export async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices().catch(() => []);
  for (const [kind, id] of [['videoinput', 'camera-select'], ['audioinput', 'mic-select']]) {
    const current = state.camera?.getTracks().find((t) => (kind === 'videoinput' ? t.kind === 'video' : t.kind === 'audio'));
    fillDevices($(id), devices, kind, current?.getSettings().deviceId);
    $(id).hidden = !state.publisher;
  }
}

/** Switches camera or microphone without leaving or re-announcing. */
export async function switchDevice(kind, deviceId) {
  if (!state.publisher || !state.camera) return;
  try {
    const s = await navigator.mediaDevices.getUserMedia(kind === 'video'
      ? { video: { deviceId: { exact: deviceId }, width: 640, height: 480 } }
      : { audio: { deviceId: { exact: deviceId } } });
    const fresh = kind === 'video' ? s.getVideoTracks()[0] : s.getAudioTracks()[0];
    const old = kind === 'video' ? state.camera.getVideoTracks()[0] : state.camera.getAudioTracks()[0];
    (kind === 'video' ? state.videoOut : state.audioOut)?.replace(fresh);
    if (old) {
      state.camera.removeTrack(old);
      old.stop();
    }
    state.camera.addTrack(fresh);
  } catch (e) {
    showError(`cannot switch ${kind}: ${e.message}`);
  }
}

export function stopPublishing() {
  state.screenStop?.();
  state.publisher?.stop();
  state.publisher = null;
  state.camera?.getTracks().forEach((t) => t.stop());
  state.camera = null;
  document.querySelector('[data-who="self"]')?.remove();
}

export function makeTile(label, who) {
  const tile = document.createElement('div');
  tile.className = 'tile';
  tile.dataset.who = who;
  const name = document.createElement('span');
  name.className = 'name';
  name.textContent = label;
  tile.append(name);
  $('grid').append(tile);
  return tile;
}

export function addViewer(who) {
  if (!who || who === state.user.username || who === '_server' || state.viewers.has(who)) return;
  const tile = makeTile(who, who);
  const canvas = document.createElement('canvas');
  canvas.width = 640;
  canvas.height = 480;
  tile.prepend(canvas);
  // A screen share gets a tile of its own, made when it starts and removed when it stops.
  const screen = {
    open: () => {
      document.querySelector(`[data-who="${who}:screen"]`)?.remove();
      const t = makeTile(`${who} (screen)`, `${who}:screen`);
      t.classList.add('screen');
      const c = document.createElement('canvas');
      c.width = 1280;
      c.height = 720;
      t.prepend(c);
      return c;
    },
    close: () => document.querySelector(`[data-who="${who}:screen"]`)?.remove(),
  };
  const viewer = new Viewer(state.client, ['room', state.room.id, who], canvas, screen);
  state.viewers.set(who, { viewer, tile });
  $('empty').hidden = true;
  const start = (attempt) => viewer.start().catch((e) => {
    console.warn('viewer', who, e);
    if (attempt < 5 && state.viewers.get(who)?.viewer === viewer) setTimeout(() => start(attempt + 1), 1000);
  });
  start(0);
  refreshPeople();
}

export function removeViewer(who) {
  const v = state.viewers.get(who);
  if (!v) return;
  v.viewer.stop();
  v.tile.remove();
  state.viewers.delete(who);
  $('empty').hidden = state.viewers.size > 0;
  refreshPeople();
}

/** Starts or stops sharing the screen. The share is its own track and its own tile; it also
 *  stops when the browser's own "stop sharing" control ends the capture. */
export async function toggleScreen() {
  if (state.screenStop) return state.screenStop();
  if (!state.publisher) return showError('you may not publish in this room');
  try {
    const s = await navigator.mediaDevices.getDisplayMedia({ video: true });
    const capture = s.getVideoTracks()[0];
    const out = await state.publisher.publishVideo(capture, 'screen');
    const tile = makeTile(`${state.user.username} (your screen)`, 'self:screen');
    tile.classList.add('screen');
    const el = document.createElement('video');
    Object.assign(el, { muted: true, autoplay: true, playsInline: true, srcObject: s });
    tile.prepend(el);
    const stop = () => {
      if (state.screenStop !== stop) return;
      state.screenStop = null;
      out.stop();
      capture.stop();
      tile.remove();
      $('share').textContent = 'share screen';
    };
    capture.addEventListener('ended', stop);
    state.screenStop = stop;
    state.screenCapture = capture;
    $('share').textContent = 'stop sharing';
  } catch (e) {
    showError(`screen sharing: ${e.message}`);
  }
}

export function toggleTrack(kind, button) {
  const t = state.camera && (kind === 'video' ? state.camera.getVideoTracks() : state.camera.getAudioTracks())[0];
  if (!t) return;
  t.enabled = !t.enabled;
  button.textContent = `${kind === 'video' ? 'camera' : 'mic'} ${t.enabled ? 'off' : 'on'}`;
}

export function collectStats() {
  const out = { publisher: state.publisher?.stats ?? null, viewers: {} };
  for (const [who, { viewer }] of state.viewers) {
    const s = viewer.stats;
    const secs = (performance.now() - s.since) / 1000;
    const lat = s.latencies.slice().sort((a, b) => a - b);
    const skew = s.avSkew.slice().sort((a, b) => a - b);
    out.viewers[who] = {
      frames: s.frames,
      audioPackets: s.audioPackets,
      screenFrames: s.screenFrames,
      restarts: s.restarts,
      audioRms: s.audioRms,
      kbps: Math.round((s.bytes * 8) / 1000 / Math.max(secs, 1)),
      latencyP50: lat[Math.floor(lat.length / 2)] ?? null,
      droppedGroups: s.droppedGroups,
      avSkewP50: skew.length ? Math.round(skew[Math.floor(skew.length / 2)]) : null,
      avSkewSamples: skew.length,
    };
  }
  return out;
}
