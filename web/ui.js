// Shared by the web client's modules: page state, element lookup, the API, status lines.

export const $ = (id) => document.getElementById(id);
export const state = {
  session: sessionStorage.getItem('roomcast.session'),
  user: JSON.parse(sessionStorage.getItem('roomcast.user') || 'null'),
  room: null, media: null, role: null, grants: [], client: null, publisher: null,
  viewers: new Map(), camera: null, screenStop: null, closing: false, oldest: null, status: 'idle',
  muted: new Map(), // identity -> Set of tracks a moderator muted
};

export function showError(msg) {
  $('error').textContent = msg;
  $('error').hidden = !msg;
}

export function setStatus(text) {
  state.status = text;
  $('status').textContent = text;
}

export async function api(method, path, body, token = state.session) {
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

/** Fills `select` with the devices of `kind` (videoinput, audioinput), selecting `current`. */
export function fillDevices(select, devices, kind, current) {
  select.replaceChildren(...devices.filter((d) => d.kind === kind).map((d, i) => {
    const o = document.createElement('option');
    o.value = d.deviceId;
    o.textContent = d.label || `${kind === 'videoinput' ? 'camera' : 'microphone'} ${i + 1}`;
    o.selected = d.deviceId === current;
    return o;
  }));
}
