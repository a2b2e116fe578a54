"""An independent MoQ Transport draft-18 peer for roomcast's interop tests: aiomoqt (PyPI).

    aiomoqt_peer.py publish   URL TOKEN NAMESPACE TRACK GROUPS OBJECTS SIZE
    aiomoqt_peer.py subscribe URL TOKEN NAMESPACE TRACK COUNT

URL is moqt://HOST:PORT (raw QUIC, the token goes in SETUP's AUTHORIZATION_TOKEN) or
https://HOST:PORT (WebTransport, the token in the CONNECT path's query); TOKEN `-` sends
none (an anonymous session, for the relay's open namespaces). NAMESPACE is
slash-separated. `publish` announces the namespace and serves GROUPS groups of OBJECTS
objects (roomcast's synthetic payloads: group, object, send time, then filler derived from
them) until stdin closes, printing "ready" once announced. `subscribe` prints one JSON line
per object ({"group", "object", "payload"} with the payload in base64) until COUNT arrived.
Either prints {"error": CODE, "reason": TEXT} and exits 3 when the relay refuses a request.
"""

import asyncio
import base64
import json
import struct
import sys
import time
from urllib.parse import urlparse

from aiomoqt.client import MOQTClient
from aiomoqt.track import PublishedTrack, SubscribedTrack
from aiomoqt.types import FilterType, MOQTRequestError, SetupParamType

MASK = (1 << 64) - 1


def synthetic_payload(group, obj, size):
    """Same bytes as roomcast::client::synthetic_payload."""
    head = struct.pack(">QQQ", group, obj, int(time.time() * 1e6))
    x = ((group * 0x9E3779B97F4A7C15) & MASK) ^ obj
    tail = bytearray()
    while len(head) + len(tail) < size:
        x ^= (x << 13) & MASK
        x ^= x >> 7
        x ^= (x << 17) & MASK
        tail.append(x & 0xFF)
    return head + bytes(tail)


def connect(url, token):
    u = urlparse(url)
    anonymous = token == "-"
    if u.scheme == "moqt":
        client = MOQTClient(u.hostname, u.port, use_quic=True, verify_tls=False, supported_drafts=18)
        return client, None if anonymous else {SetupParamType.AUTH_TOKEN: token.encode()}
    path = "/" if anonymous else f"/?token={token}"
    client = MOQTClient(u.hostname, u.port, path=path, use_quic=False,
                        verify_tls=False, supported_drafts=18)
    return client, None


def refused(e):
    print(json.dumps({"error": e.error_code, "reason": str(e.reason)}), flush=True)
    sys.exit(3)


async def publish(url, token, ns, track, groups, objects, size):
    class Synthetic(PublishedTrack):
        async def produce(self, out):
            for g in range(groups):
                for o in range(objects):
                    await out.write(g, o, synthetic_payload(g, o, size), group_start=(o == 0))
                out.end_group()
                await asyncio.sleep(0.05)

    client, params = connect(url, token)
    async with client.connect() as session:
        await session.client_session_init(timeout=10, parameters=params)
        t = Synthetic(session, namespace=ns, trackname=track)
        try:
            await t.publish(announce_namespace=True, publish_track=False)
        except MOQTRequestError as e:
            refused(e)
        print("ready", flush=True)
        # Serve until the test closes stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def subscribe(url, token, ns, track, count):
    got = 0
    done = asyncio.Event()

    def on_object(obj, size, now_us, group_id, subgroup_id):
        nonlocal got
        payload = base64.b64encode(bytes(obj.payload)).decode()
        line = {"group": group_id, "object": obj.object_id, "payload": payload}
        print(json.dumps(line), flush=True)
        got += 1
        if got >= count:
            done.set()

    client, params = connect(url, token)
    async with client.connect() as session:
        await session.client_session_init(timeout=10, parameters=params)
        t = SubscribedTrack(session, namespace=ns, trackname=track, on_object=on_object)
        try:
            await t.subscribe(filter_type=FilterType.NEXT_GROUP_START)
        except MOQTRequestError as e:
            refused(e)
        print("ready", flush=True)
        await asyncio.wait_for(done.wait(), 20)


def main():
    role, url, token, ns, track = sys.argv[1:6]
    ns = tuple(ns.split("/"))
    if role == "publish":
        groups, objects, size = map(int, sys.argv[6:9])
        run = publish(url, token, ns, track, groups, objects, size)
    else:
        run = subscribe(url, token, ns, track, int(sys.argv[6]))
    asyncio.run(asyncio.wait_for(run, 60))


if __name__ == "__main__":
    main()
