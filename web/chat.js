// Room chat: history, images, sending.
import { $, state, api, showError } from './ui.js';

export async function attachmentUrl(id) {
  const res = await fetch(`/api/attachments/${id}`, { headers: { Authorization: `Bearer ${state.media}` } });
  return URL.createObjectURL(await res.blob());
}

export function addMessage(m) {
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

export async function loadOlder() {
  if ($('messages').scrollTop > 0 || state.oldest === null || state.loadingOlder) return;
  state.loadingOlder = true;
  try {
    const r = await api('GET', `/api/rooms/${state.room.id}/chat?before=${state.oldest}&limit=50`, undefined, state.media);
    for (const m of r.messages) addMessage(m);
  } finally {
    state.loadingOlder = false;
  }
}

export async function sendChat() {
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
