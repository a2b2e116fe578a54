// The roomcast web client: lobby (accounts, rooms) and a room (camera, microphone, screen,
// participants, chat, classroom hands). Talks JSON to /api and MoQ over WebTransport.
// Modules: ui.js (state, API), tiles.js (grid and media), people.js (list, moderation),
// chat.js.
import { MoqClient, pinFor } from './moq.js';
import { publishWhip } from './whip.js';
import { $, state, api, showError, setStatus } from './ui.js';
import { prejoin } from './prejoin.js';
import { addMessage, loadOlder, sendChat } from './chat.js';
import { onMuteEvent, refreshHands, refreshPeople } from './people.js';
import {
  addViewer, collectStats, removeViewer, startPublishing, stopMedia, stopPublishing, switchDevice, toggleScreen, toggleTrack,
} from './tiles.js';

window.roomcast = { state, stats: () => collectStats() };

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
  $('logout').hidden = !state.session;
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
    if (!rooms.length) {
      const li = document.createElement('li');
      li.className = 'empty';
      li.textContent = 'No rooms yet: create one above, or paste a room or invite link to join.';
      $('room-list').append(li);
    }
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

/** A room id from a pasted room link (`…#room=ID`) or an invite link (`…&invite=…`). */
function parseRoomLink(text) {
  const m = text.match(/#room=([^&]+)(?:&invite=(.+))?$/);
  return m ? { id: decodeURIComponent(m[1]), invite: m[2] && decodeURIComponent(m[2]) } : null;
}

async function joinForm() {
  const v = $('join-id').value.trim();
  const link = parseRoomLink(v);
  if (link?.invite) return join(link.id, { invite: link.invite });
  const body = $('join-password').value ? { password: $('join-password').value } : {};
  return join(link ? link.id : v, body);
}

/** Joins a room: the pre-join screen first (unless rejoining), then the API and the relay. */
async function join(roomId, body, { ask = true, attempt = 0 } = {}) {
  showError('');
  if (ask && !(await prejoin(''))) return;
  try {
    const r = await api('POST', `/api/rooms/${encodeURIComponent(roomId)}/join`, body);
    state.room = r.room;
    state.media = r.token;
    state.role = r.role;
    state.grants = r.grants;
    state.mediaExpires = r.expires_at;
    // A cluster names the node to use (the least loaded); a single relay names none.
    state.relay = r.relay ?? null;
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
    $('invite-box').hidden = true;
    $('empty').hidden = false;
    await connect(attempt);
  } catch (e) {
    showError(e.message);
    if (!state.room) showLobby();
    else if (attempt > 0) retry(attempt + 1);
  }
}

function roomLink() {
  return `${location.origin}/#room=${encodeURIComponent(state.room.id)}`;
}

/** Copies `text`, or at least shows it when the clipboard is not available. */
async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    const label = button.textContent;
    button.textContent = 'copied';
    setTimeout(() => (button.textContent = label), 1500);
  } catch (_) {
    $('invite-link').textContent = text;
    $('invite-box').hidden = false;
  }
}

async function connect(attempt = 0) {
  setStatus('connecting');
  try {
    const { url, pin } = await relayAddress();
    const client = await MoqClient.connect(url, pin);
    state.client = client;
    setStatus('connected');
    client.closed.then((info) => onDisconnect(client, info), () => onDisconnect(client));
    // The relay is stopping (a restart): leave now and reconnect, rather than wait to be cut.
    client.onGoAway = () => {
      state.goaways = (state.goaways ?? 0) + 1;
      try {
        client.wt.close({ closeCode: 0, reason: 'going away' });
      } catch (_) {
        onDisconnect(client);
      }
    };
    const id = state.room.id;
    await client.subscribe(['room', id, '_server'], 'events', ({ payload }) => onEvent(JSON.parse(new TextDecoder().decode(payload))));
    await client.subscribeNamespace(['room', id], (ns) => addViewer(ns[2]), (ns) => removeViewer(ns[2]));
    if (state.grants.includes('publish')) await startPublishing();
    refreshPeople();
  } catch (e) {
    setStatus('disconnected');
    showError(`cannot connect: ${e.message}`);
    retry(attempt + 1);
  }
}

/** Where to connect: the node the join placed us on (cluster), else this page's relay. */
async function relayAddress() {
  const token = `?token=${encodeURIComponent(state.media)}`;
  if (state.relay) {
    const base = state.relay.webtransport_url.replace(/\/?$/, '/');
    return { url: `${base}${token}`, pin: pinFor(state.relay) };
  }
  const info = await api('GET', '/api/info', undefined, null);
  return { url: `https://${location.hostname}:${info.webtransport_port}/${token}`, pin: pinFor(info) };
}

/**
 * Tries again after a failed connection (up to 8 times, backing off). In a cluster it asks
 * the API where to go first: a node that died drops out of placement within seconds.
 */
function retry(attempt) {
  if (attempt > 8 || state.closing || state.kicked) return;
  const again = () => (state.relay ? join(state.room.id, {}, { ask: false, attempt }) : connect(attempt));
  setTimeout(again, 1000 * Math.min(attempt, 4));
}

/** The session ended; `info` is the relay's close code and reason, when it closed it. */
function onDisconnect(client, info) {
  if (client !== state.client || state.closing) return;
  setStatus('disconnected');
  stopMedia();
  // Removed from the room (even if its event never arrived): say so and stay out.
  const reason = info?.reason || '';
  if (!state.kicked && /^(kicked|banned|room_closed|token_revoked)\b/.test(reason)) state.kicked = `removed from the room: ${reason}`;
  if (state.kicked) return showError(state.kicked);
  showError('connection lost; reconnecting');
  const expired = state.mediaExpires && Date.now() / 1000 > state.mediaExpires - 5;
  // A new token when it is about to expire, and a new placement in a cluster (its node may be gone).
  setTimeout(() => (expired || state.relay ? join(state.room.id, {}, { ask: false }) : connect()), 1000);
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
    case 'muted':
    case 'unmuted':
      onMuteEvent(e);
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

/** Switches the own camera and microphone between WebTransport and WebRTC (WHIP). */
async function toggleWhip(button) {
  showError('');
  button.disabled = true;
  try {
    if (state.whip) {
      await state.whip.stop();
      state.whip = null;
      button.textContent = 'publish over WebRTC';
      await startPublishing();
    } else {
      stopPublishing();
      state.whip = await publishWhip(state.room.id, state.media, state.devices);
      button.textContent = 'publish over WebTransport';
    }
  } catch (e) {
    showError(e.message);
  } finally {
    button.disabled = false;
  }
}

async function leave() {
  state.closing = true;
  await state.whip?.stop();
  state.whip = null;
  $('whip').textContent = 'publish over WebRTC';
  stopMedia();
  state.client?.close();
  state.client = null;
  state.room = null;
  state.closing = false;
  setStatus('');
  await showLobby();
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
$('whip').onclick = (e) => toggleWhip(e.target);
$('toggle-cam').onclick = (e) => toggleTrack('video', e.target);
$('toggle-mic').onclick = (e) => toggleTrack('audio', e.target);
$('hand').onclick = async () => {
  const raised = $('hand').textContent === 'raise hand';
  await api('POST', `/api/rooms/${state.room.id}/hand`, { raised }, state.media).catch((e) => showError(e.message));
};
$('invite').onclick = async () => {
  const r = await api('POST', `/api/rooms/${state.room.id}/invites`, { role: 'participant' }).catch((e) => showError(e.message));
  if (!r) return;
  $('invite-link').textContent = `${roomLink()}&invite=${encodeURIComponent(r.invite)}`;
  $('invite-box').hidden = false;
};
$('copy-invite').onclick = (e) => copy($('invite-link').textContent, e.target);
$('copy-link').onclick = (e) => copy(roomLink(), e.target);
$('copy-link-empty').onclick = (e) => copy(roomLink(), e.target);
$('logout').onclick = async () => {
  if (state.room) await leave();
  logout();
};
// A green outline on the tiles of people heard right now.
const heard = new Map();
setInterval(() => {
  for (const [who, { viewer, tile }] of state.viewers) {
    const packets = viewer.stats.audioPackets;
    tile.classList.toggle('speaking', packets > (heard.get(who) ?? packets) && viewer.stats.audioRms > 0.02);
    heard.set(who, packets);
  }
}, 300);
$('camera-select').onchange = (e) => switchDevice('video', e.target.value);
$('mic-select').onchange = (e) => switchDevice('audio', e.target.value);
$('show-stats').onclick = () => {
  $('stats').hidden = !$('stats').hidden;
};
setInterval(() => {
  if (!$('stats').hidden) $('stats').textContent = JSON.stringify(collectStats(), null, 1);
}, 1000);

const linked = parseRoomLink(location.hash);
showLobby().then(() => {
  if (linked && state.session) join(linked.id, linked.invite ? { invite: linked.invite } : {});
  else if (linked) $('join-id').value = location.hash;
});
