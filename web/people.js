// The participant list, moderation buttons and the classroom hand queue.
import { $, state, api, showError } from './ui.js';

export async function refreshPeople() {
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
