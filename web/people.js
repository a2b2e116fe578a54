// The participant list, moderation buttons and the classroom hand queue.
import { $, state, api, showError } from './ui.js';

/** Badges on the tiles: 🔇 when a moderator muted that participant's audio. */
function showMutes() {
  for (const tile of document.querySelectorAll('.tile')) {
    const who = tile.dataset.who === 'self' ? state.user?.username : tile.dataset.who;
    const muted = state.muted.get(who)?.has('audio');
    let badge = tile.querySelector('.muted');
    if (muted && !badge) {
      badge = document.createElement('span');
      badge.className = 'muted';
      badge.textContent = '🔇';
      badge.title = 'muted by a moderator';
      tile.append(badge);
    }
    if (!muted) badge?.remove();
  }
}

/** Applies a `muted` / `unmuted` room event. */
export function onMuteEvent(e) {
  const muted = e.type === 'muted';
  for (const who of e.data.identities ?? [e.data.identity]) {
    const set = state.muted.get(who) ?? new Set();
    if (muted) set.add(e.data.track);
    else set.delete(e.data.track);
    state.muted.set(who, set);
  }
  refreshPeople();
}

export async function refreshPeople() {
  if (!state.room) return;
  try {
    const r = await api('GET', `/api/rooms/${state.room.id}`);
    const mod = state.grants.includes('admin');
    state.muted = new Map(r.participants.map((p) => [p.identity, new Set(p.muted ?? [])]));
    $('people').replaceChildren(...r.participants.map((p) => {
      const li = document.createElement('li');
      const muted = state.muted.get(p.identity).has('audio');
      li.textContent = `${p.identity}${p.publishing ? ' 🎥' : ''}${muted ? ' 🔇' : ''}${p.hand_raised ? ' ✋' : ''}`;
      if (mod && p.identity !== state.user.username) {
        const actions = [
          muted ? ['unmute', () => moderate(p.identity, 'mute', { track: 'audio', muted: false })]
            : ['mute', () => moderate(p.identity, 'mute', { track: 'audio', muted: true })],
          ['kick', () => moderate(p.identity, 'kick')],
        ];
        for (const [label, fn] of actions) {
          const b = document.createElement('button');
          b.textContent = label;
          b.dataset.action = label;
          b.dataset.who = p.identity;
          b.onclick = fn;
          li.append(b);
        }
      }
      return li;
    }));
    showMutes();
  } catch (e) {
    console.warn('people', e);
  }
  refreshHands();
}

export async function refreshHands() {
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

export async function moderate(who, action, body = undefined) {
  try {
    await api('POST', `/api/rooms/${state.room.id}/participants/${encodeURIComponent(who)}/${action}`, body ?? {});
  } catch (e) {
    showError(e.message);
  }
}
