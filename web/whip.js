// Publishing over WebRTC instead of WebTransport: the camera and microphone go to the relay's
// WHIP endpoint (RFC 9725) with the participant's media token, for browsers without
// WebTransport or WebCodecs. The relay bridges them into the room like any publisher.

/** Starts a WHIP session; resolves with a handle whose stop() ends it (DELETE). */
export async function publishWhip(roomId, token, devices = {}) {
  const chosen = (id) => (id ? { deviceId: { exact: id } } : {});
  const stream = await navigator.mediaDevices.getUserMedia({
    video: { width: 640, height: 480, ...chosen(devices.video) },
    audio: devices.audio ? chosen(devices.audio) : true,
  });
  const pc = new RTCPeerConnection();
  for (const t of stream.getTracks()) pc.addTransceiver(t, { direction: 'sendonly' });
  await pc.setLocalDescription(await pc.createOffer());
  // The relay takes no trickled candidates: send the offer once gathering is done (or soon).
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
    setTimeout(resolve, 2000);
  });
  const res = await fetch(`/whip/${encodeURIComponent(roomId)}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${token}` },
    body: pc.localDescription.sdp,
  });
  const body = await res.text();
  if (res.status !== 201) {
    pc.close();
    stream.getTracks().forEach((t) => t.stop());
    let message = body;
    try { message = JSON.parse(body).error.message; } catch (_) { /* plain text */ }
    throw new Error(`WebRTC publishing refused: ${message}`);
  }
  const location = res.headers.get('Location');
  await pc.setRemoteDescription({ type: 'answer', sdp: body });
  return {
    stream,
    pc,
    async stop() {
      pc.close();
      stream.getTracks().forEach((t) => t.stop());
      await fetch(location, { method: 'DELETE', headers: { Authorization: `Bearer ${token}` } }).catch(() => {});
    },
  };
}
