// The roomcast web client: lobby (accounts, rooms) and a room (camera, microphone, screen,
// participants, chat, classroom hands). Talks JSON to /api and MoQ over WebTransport.
import { MoqClient } from './moq.js';
import { Publisher, Viewer } from './media.js';

const $ = (id) => document.getElementById(id);
const state = {
  session: sessionStorage.getItem('roomcast.session'),
  user: JSON.parse(sessionStorage.getItem('roomcast.user') || 'null'),
  room: null, media: null, role: null, grants: [], client: null, publisher: null,
  viewers: new Map(), camera: null, screenStop: null, closing: false, oldest: null, status: 'idle',
};
window.roomcast = { state, stats: () => collectStats() };

function showError(msg) {
  $('error').textContent = msg;
  $('error').hidden = !msg;
}
function setStatus(text) {
  state.status = text;
  $('status').textContent = text;
}

async function api(method, path, body, token = state.session) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  let payload;
  if (body instanceof Blob) payload = body;
  else if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  const res = await fetch(path, { method, headers, body: payload });
  const data = res.status === 204 ? {} : await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.error ? `${data.error.message} (${data.error.code})` : `HTTP ${res.status}`);
  return data;
}

// ----- lobby -----

async function auth(register) {
  showError('');
  const creds = { username: $('username').value.trim(), password: $('password').value };
  try {
    if (register) await api('POST', '/api/users', creds, null);
    const r = await api('POST', '/api/login', creds, null);
    state.session = r.token;
    state.user = r.user;
    sessionStorage.setItem('roomcast.session', r.token);
    sessionStorage.setItem('roomcast.user', JSON.stringify(r.user));
    await showLobby();
  } catch (e) {
    showError(e.message);
  }
}

async function showLobby() {
  $('lobby').hidden = false;
  $('room').hidden = true;
  $('auth').hidden = !!state.session;
  $('rooms-panel').hidden = !state.session;
  $('me').textContent = state.user ? state.user.username : '';
  if (!state.session) return;
  try {
    const { rooms } = await api('GET', '/api/rooms');
    $('room-list').replaceChildren(...rooms.map(({ room, live_sessions }) => {
      const li = document.createElement('li');
      li.textContent = `${room.name} (${room.mode}, ${live_sessions} live) `;
      const b = document.createElement('button');
      b.textContent = 'join';
      b.onclick = () => join(room.id, {});
      li.append(b);
      return li;
    }));
  } catch (e) {
    if (/session_ended|expired/.test(e.message)) logout();
    else showError(e.message);
  }
}

function logout() {
  sessionStorage.clear();
  state.session = null;
  state.user = null;
  showLobby();
}

async function createRoom() {
  showError('');
  const spec = { name: $('room-name').value, max_participants: Number($('room-max').value), mode: $('room-mode').value };
  if ($('room-password').value) spec.password = $('room-password').value;
  try {
    const { room } = await api('POST', '/api/rooms', spec);
    await join(room.id, spec.password ? { password: spec.password } : {});
  } catch (e) {
    showError(e.message);
  }
}

async function joinForm() {
  const v = $('join-id').value.trim();
  const m = v.match(/#room=([^&]+)&invite=(.+)$/);
  if (m) return join(decodeURIComponent(m[1]), { invite: decodeURIComponent(m[2]) });
  const body = $('join-password').value ? { password: $('join-password').value } : {};
  return join(v, body);
}

// ----- room -----

async function join(roomId, body) {
  showError('');
  try {
    const r = await api('POST', `/api/rooms/${encodeURIComponent(roomId)}/join`, body);
    state.room = r.room;
    state.media = r.token;
    state.role = r.role;
    state.grants = r.grants;
    state.mediaExpires = r.expires_at;
    // Events before this join are history (an earlier kick must not act again).
    state.eventsFrom = r.events_from ?? 0;
    state.kicked = null;
    $('lobby').hidden = true;
    $('room').hidden = false;
    $('room-title').textContent = r.room.name;
    $('room-id').textContent = r.room.id;
    $('hand').hidden = !(r.room.mode === 'classroom' && !r.grants.includes('admin'));
    $('hands-panel').hidden = !(r.room.mode === 'classroom' && r.grants.includes('admin'));
    $('invite').hidden = !r.grants.includes('admin');
    $('messages').replaceChildren();
    state.oldest = null;
    for (const m of r.recent_chat.slice().reverse()) addMessage(m);
    await connect();
  } catch (e) {
    showError(e.message);
  }
}

async function connect(attempt = 0) {
  setStatus('connecting');
  try {
    const info = await api('GET', '/api/info', undefined, null);
    const url = `https://${location.hostname}:${info.webtransport_port}/?token=${encodeURIComponent(state.media)}`;
    const client = await MoqClient.connect(url, info.cert_sha256);
    state.client = client;
    setStatus('connected');
    client.closed.then(() => onDisconnect(client), () => onDisconnect(client));
    const id = state.room.id;
    await client.subscribe(['room', id, '_server'], 'events', ({ payload }) => onEvent(JSON.parse(new TextDecoder().decode(payload))));
    await client.subscribeNamespace(['room', id], (ns) => addViewer(ns[2]), (ns) => removeViewer(ns[2]));
    if (state.grants.includes('publish')) await startPublishing();
    refreshPeople();
  } catch (e) {
    setStatus('disconnected');
    showError(`cannot connect: ${e.message}`);
    if (attempt < 5 && !state.closing) setTimeout(() => connect(attempt + 1), 1000 * (attempt + 1));
  }
}

function onDisconnect(client) {
  if (client !== state.client || state.closing) return;
  setStatus('disconnected');
  stopMedia();
  if (state.kicked) return showError(state.kicked);
  showError('connection lost; reconnecting');
  const expired = state.mediaExpires && Date.now() / 1000 > state.mediaExpires - 5;
  setTimeout(() => (expired ? join(state.room.id, {}) : connect()), 1000);
}

function stopMedia() {
  state.publisher?.stop();
  state.publisher = null;
  state.camera?.getTracks().forEach((t) => t.stop());
  state.camera = null;
  for (const v of state.viewers.values()) v.viewer.stop();
  state.viewers.clear();
  $('grid').replaceChildren();
}

async function startPublishing() {
  if (state.publisher) return;
  const me = state.user.username;
  const pub = new Publisher(state.client, ['room', state.room.id, me]);
  state.publisher = pub;
  try {
    state.camera = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
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
async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices().catch(() => []);
  for (const [kind, id] of [['videoinput', 'camera-select'], ['audioinput', 'mic-select']]) {
    const current = state.camera?.getTracks().find((t) => (kind === 'videoinput' ? t.kind === 'video' : t.kind === 'audio'));
    const selected = current?.getSettings().deviceId;
    $(id).replaceChildren(...devices.filter((d) => d.kind === kind).map((d, i) => {
      const o = document.createElement('option');
      o.value = d.deviceId;
      o.textContent = d.label || `${kind === 'videoinput' ? 'camera' : 'microphone'} ${i + 1}`;
      o.selected = d.deviceId === selected;
      return o;
    }));
    $(id).hidden = !state.publisher;
  }
}

/** Switches camera or microphone without leaving or re-announcing. */
async function switchDevice(kind, deviceId) {
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

function stopPublishing() {
  state.publisher?.stop();
  state.publisher = null;
  state.camera?.getTracks().forEach((t) => t.stop());
  state.camera = null;
  document.querySelector('[data-who="self"]')?.remove();
}

function makeTile(label, who) {
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

function addViewer(who) {
  if (!who || who === state.user.username || who === '_server' || state.viewers.has(who)) return;
  const tile = makeTile(who, who);
  const canvas = document.createElement('canvas');
  canvas.width = 640;
  canvas.height = 480;
  tile.prepend(canvas);
  const viewer = new Viewer(state.client, ['room', state.room.id, who], canvas);
  state.viewers.set(who, { viewer, tile });
  const start = (attempt) => viewer.start().catch((e) => {
    console.warn('viewer', who, e);
    if (attempt < 5 && state.viewers.get(who)?.viewer === viewer) setTimeout(() => start(attempt + 1), 1000);
  });
  start(0);
  refreshPeople();
}

function removeViewer(who) {
  const v = state.viewers.get(who);
  if (!v) return;
  v.viewer.stop();
  v.tile.remove();
  state.viewers.delete(who);
  refreshPeople();
}

function onEvent(e) {
  if (e.seq < state.eventsFrom) return;
  const me = state.user.username;
  const who = e.data && e.data.identity;
  switch (e.type) {
    case 'chat':
      addMessage(e.data.message);
      break;
    case 'joined':
    case 'left':
      refreshPeople();
      break;
    case 'hand_raised':
    case 'hand_lowered':
    case 'floor_granted':
    case 'floor_revoked':
      refreshHands();
      if (who === me && e.type.startsWith('hand')) $('hand').textContent = e.type === 'hand_raised' ? 'lower hand' : 'raise hand';
      break;
    case 'permissions_changed':
      if (who === me) {
        state.grants = e.data.grants;
        if (state.grants.includes('publish')) startPublishing().catch((err) => showError(err.message));
        else stopPublishing();
      }
      break;
    case 'kicked':
    case 'banned':
      if (who === me) state.kicked = `you were ${e.type} from the room`;
      refreshPeople();
      break;
    case 'room_closing':
      state.kicked = 'the room was closed';
      break;
    default:
      break;
  }
  window.roomcast.lastEvent = e;
}

async function refreshPeople() {
  if (!state.room) return;
  try {
    const r = await api('GET', `/api/rooms/${state.room.id}`);
    const mod = state.grants.includes('admin');
    $('people').replaceChildren(...r.participants.map((p) => {
      const li = document.createElement('li');
      li.textContent = `${p.identity}${p.publishing ? ' 🎥' : ''}${p.hand_raised ? ' ✋' : ''}`;
      if (mod && p.identity !== state.user.username) {
        for (const [label, fn] of [['mute', () => moderate(p.identity, 'mute', { muted: true })], ['kick', () => moderate(p.identity, 'kick')]]) {
          const b = document.createElement('button');
          b.textContent = label;
          b.onclick = fn;
          li.append(b);
        }
      }
      return li;
    }));
  } catch (e) {
    console.warn('people', e);
  }
  refreshHands();
}

async function refreshHands() {
  if (!state.grants.includes('admin') || !state.room || state.room.mode !== 'classroom') return;
  const { hands } = await api('GET', `/api/rooms/${state.room.id}/hands`).catch(() => ({ hands: [] }));
  const r = await api('GET', `/api/rooms/${state.room.id}`).catch(() => ({ participants: [] }));
  const publishing = new Set((r.publishers || []));
  const rows = hands.map((h) => ({ who: h, floor: false })).concat(
    [...publishing].filter((p) => p !== state.user.username && !hands.includes(p)).map((p) => ({ who: p, floor: true })));
  $('hands').replaceChildren(...rows.map(({ who, floor }) => {
    const li = document.createElement('li');
    li.textContent = floor ? `${who} (has the floor)` : `${who} ✋`;
    const b = document.createElement('button');
    b.textContent = floor ? 'take floor' : 'grant floor';
    b.dataset.action = floor ? 'revoke' : 'grant';
    b.dataset.who = who;
    b.onclick = () => moderate(who, 'floor', { granted: !floor }).then(refreshHands);
    li.append(b);
    return li;
  }));
}

async function moderate(who, action, body = undefined) {
  try {
    await api('POST', `/api/rooms/${state.room.id}/participants/${encodeURIComponent(who)}/${action}`, body ?? {});
  } catch (e) {
    showError(e.message);
  }
}

async function attachmentUrl(id) {
  const res = await fetch(`/api/attachments/${id}`, { headers: { Authorization: `Bearer ${state.media}` } });
  return URL.createObjectURL(await res.blob());
}

function addMessage(m) {
  if (document.querySelector(`[data-msg="${m.id}"]`)) return;
  const li = document.createElement('li');
  li.dataset.msg = m.id;
  const who = document.createElement('b');
  who.textContent = `${m.username}: `;
  li.append(who, document.createTextNode(m.text));
  if (m.attachment) {
    const img = document.createElement('img');
    img.alt = 'image';
    attachmentUrl(m.attachment).then((u) => (img.src = u));
    li.append(img);
  }
  const list = $('messages');
  const older = [...list.children].find((c) => Number(c.dataset.msg) > m.id);
  list.insertBefore(li, older || null);
  if (!older) list.scrollTop = list.scrollHeight;
  if (state.oldest === null || m.id < state.oldest) state.oldest = m.id;
}

async function loadOlder() {
  if ($('messages').scrollTop > 0 || state.oldest === null || state.loadingOlder) return;
  state.loadingOlder = true;
  try {
    const r = await api('GET', `/api/rooms/${state.room.id}/chat?before=${state.oldest}&limit=50`, undefined, state.media);
    for (const m of r.messages) addMessage(m);
  } finally {
    state.loadingOlder = false;
  }
}

async function sendChat() {
  showError('');
  const text = $('chat-text').value;
  const file = $('chat-image').files[0];
  try {
    let attachment;
    if (file) attachment = (await api('POST', `/api/rooms/${state.room.id}/attachments`, file, state.media)).id;
    await api('POST', `/api/rooms/${state.room.id}/chat`, attachment ? { text, attachment } : { text }, state.media);
    $('chat-text').value = '';
    $('chat-image').value = '';
  } catch (e) {
    showError(e.message);
  }
}

async function leave() {
  state.closing = true;
  stopMedia();
  state.client?.close();
  state.client = null;
  state.room = null;
  state.closing = false;
  setStatus('');
  await showLobby();
}

async function toggleScreen() {
  if (state.screenStop) {
    state.screenStop();
    state.screenStop = null;
    $('share').textContent = 'share screen';
    return;
  }
  if (!state.publisher) return showError('you may not publish in this room');
  try {
    const s = await navigator.mediaDevices.getDisplayMedia({ video: true });
    state.screenStop = (await state.publisher.publishVideo(s.getVideoTracks()[0], 'screen')).stop;
    $('share').textContent = 'stop sharing';
  } catch (e) {
    showError(`screen sharing: ${e.message}`);
  }
}

function toggleTrack(kind, button) {
  const t = state.camera && (kind === 'video' ? state.camera.getVideoTracks() : state.camera.getAudioTracks())[0];
  if (!t) return;
  t.enabled = !t.enabled;
  button.textContent = `${kind === 'video' ? 'camera' : 'mic'} ${t.enabled ? 'off' : 'on'}`;
}

function collectStats() {
  const out = { publisher: state.publisher?.stats ?? null, viewers: {} };
  for (const [who, { viewer }] of state.viewers) {
    const s = viewer.stats;
    const secs = (performance.now() - s.since) / 1000;
    const lat = s.latencies.slice().sort((a, b) => a - b);
    out.viewers[who] = {
      frames: s.frames,
      audioPackets: s.audioPackets,
      audioRms: s.audioRms,
      kbps: Math.round((s.bytes * 8) / 1000 / Math.max(secs, 1)),
      latencyP50: lat[Math.floor(lat.length / 2)] ?? null,
      droppedGroups: s.droppedGroups,
    };
  }
  return out;
}

$('auth').onsubmit = (e) => {
  e.preventDefault();
  auth(false);
};
$('register').onclick = () => auth(true);
$('create').onsubmit = (e) => {
  e.preventDefault();
  createRoom();
};
$('join').onsubmit = (e) => {
  e.preventDefault();
  joinForm();
};
$('chat-form').onsubmit = (e) => {
  e.preventDefault();
  sendChat();
};
$('messages').onscroll = loadOlder;
$('leave').onclick = leave;
$('share').onclick = toggleScreen;
$('toggle-cam').onclick = (e) => toggleTrack('video', e.target);
$('toggle-mic').onclick = (e) => toggleTrack('audio', e.target);
$('hand').onclick = async () => {
  const raised = $('hand').textContent === 'raise hand';
  await api('POST', `/api/rooms/${state.room.id}/hand`, { raised }, state.media).catch((e) => showError(e.message));
};
$('invite').onclick = async () => {
  const r = await api('POST', `/api/rooms/${state.room.id}/invites`, { role: 'participant' }).catch((e) => showError(e.message));
  if (r) showError(`invite link: ${location.origin}/#room=${state.room.id}&invite=${r.invite}`);
};
$('camera-select').onchange = (e) => switchDevice('video', e.target.value);
$('mic-select').onchange = (e) => switchDevice('audio', e.target.value);
$('show-stats').onclick = () => {
  $('stats').hidden = !$('stats').hidden;
};
setInterval(() => {
  if (!$('stats').hidden) $('stats').textContent = JSON.stringify(collectStats(), null, 1);
}, 1000);

const invite = location.hash.match(/#room=([^&]+)&invite=(.+)$/);
showLobby().then(() => {
  if (invite && state.session) join(decodeURIComponent(invite[1]), { invite: decodeURIComponent(invite[2]) });
});
