// The relay check page (check.html): connect, subscribe to one track, count what arrives.
import { MoqClient, pinFor, verifySynthetic } from './moq.js';

const state = (window.roomcast = { status: 'connecting', objects: 0, groups: new Set(), verified: 0, errors: [] });
const show = (text, cls) => {
  const el = document.getElementById('status');
  el.textContent = text;
  el.className = cls || '';
  state.status = text;
};
const params = new URLSearchParams(location.search);
try {
  const info = await (await fetch('/api/info')).json();
  const token = params.get('token');
  const url = `https://${location.hostname}:${info.webtransport_port}/${token === null ? '' : `?token=${encodeURIComponent(token)}`}`;
  const client = await MoqClient.connect(url, pinFor(info));
  show('connected', 'ok');
  // The relay closes a refused session right after SETUP; say so with whatever the browser
  // was told (a close code and reason, or the error).
  client.closed.then(
    (info) => show(`disconnected: ${info?.closeCode ?? ''} ${info?.reason ?? ''}`.trim(), 'err'),
    (e) => show(`disconnected: ${e.message || e}`, 'err'));
  const watch = params.get('watch');
  if (watch) {
    await client.subscribe(['room', params.get('room'), watch], params.get('track') || 'video', ({ group, object, payload }) => {
      state.objects++;
      state.groups.add(group);
      if (verifySynthetic(group, object, payload) !== null) state.verified++;
      document.getElementById('objects').textContent = state.objects;
      document.getElementById('groups').textContent = state.groups.size;
      document.getElementById('verified').textContent = state.verified;
    });
    show(`subscribed to ${watch}`, 'ok');
  }
} catch (e) {
  state.errors.push(String(e));
  show(`error: ${e.message || e}`, 'err');
}
