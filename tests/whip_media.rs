//! WHIP media end to end without a browser: str0m publishers send VP8 over real UDP (ICE,
//! DTLS, SRTP with the relay) and the project's raw-QUIC client reads what the bridge made;
//! the WHIP port's STUN answers.

mod common;

use std::time::Duration;

use common::media::{drain, published, watch};
use common::whip::{str0m_publisher, vp8_frame};
use common::Relay;
use roomcast::auth::Grant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webrtc_publisher_reaches_a_quic_subscriber_as_keyframe_groups_with_rising_timestamps() {
    let relay = Relay::start().await;
    // A QUIC subscriber watching the catalog and the video the bridge will publish.
    let token = relay.token("r1", "enc", &[Grant::Publish]);
    let publisher = {
        let relay = &relay;
        let token = token.clone();
        async move { str0m_publisher(relay, "r1", &token, 90, true).await.0 }
    };
    let subscriber = async {
        published(&relay, "r1", "enc").await;
        let viewer = relay.client("r1", "viewer", &[Grant::Subscribe]).await;
        let catalog = watch(&viewer, "r1", "enc", "catalog").await;
        let video = watch(&viewer, "r1", "enc", "video").await;
        (viewer, catalog, video)
    };
    let (status, (_viewer, mut catalog, mut video)) = tokio::join!(publisher, subscriber);
    assert_eq!(status, 201);
    let mut got = drain(&mut video, Duration::from_secs(1)).await;
    assert!(got.len() >= 30, "{} objects", got.len());
    // Group streams may interleave on the wire: look at them in track order.
    got.sort_by_key(|o| (o.group, o.object));
    // Each group starts at a keyframe (object 0), objects in order, frames intact.
    // Each group starts at a keyframe (object 0) and holds only that keyframe's successors,
    // objects in order, frames intact; capture timestamps rise.
    let mut last_ts = 0;
    let mut by_group: std::collections::BTreeMap<u64, Vec<(u64, u32)>> = Default::default();
    for o in &got {
        let n = u32::from_be_bytes(o.payload[o.payload.len() - 604..][..4].try_into().unwrap());
        let key = o.payload[0] & 1 == 0;
        assert_eq!(o.payload.as_ref(), vp8_frame(key, n), "frame {n} intact");
        assert_eq!(
            key,
            o.object == 0,
            "frame {n} (group {} object {}): keyframes open groups",
            o.group,
            o.object
        );
        by_group.entry(o.group).or_default().push((o.object, n));
        let ts = match o.extensions.get(0x06).map(|kv| &kv.value) {
            Some(moq_transport::coding::Value::IntValue(v)) => *v,
            other => panic!("no capture timestamp: {other:?}"),
        };
        assert!(ts > last_ts, "capture timestamps rise");
        last_ts = ts;
    }
    let mut next_frame = 0;
    for (g, objects) in &by_group {
        for (i, (object, n)) in objects.iter().enumerate() {
            assert_eq!(
                (*object, *n),
                (i as u64, next_frame),
                "group {g}: every frame, in order"
            );
            next_frame += 1;
        }
    }
    assert!(next_frame >= 30);
    // The catalog describes what the keyframe says.
    let cat = drain(&mut catalog, Duration::from_millis(200)).await;
    let last: serde_json::Value = serde_json::from_slice(&cat.last().unwrap().payload).unwrap();
    let v = &last["tracks"][0]["selectionParams"];
    assert_eq!(
        (
            v["codec"].as_str(),
            v["width"].as_u64(),
            v["height"].as_u64()
        ),
        (Some("vp8"), Some(320), Some(240))
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_subscriber_gets_a_keyframe_asked_for_it() {
    let relay = Relay::start().await;
    let token = relay.token("r1", "enc", &[Grant::Publish]);
    // An encoder that sends a keyframe only at the start and when asked.
    let publisher = str0m_publisher(&relay, "r1", &token, 120, false);
    let subscriber = async {
        published(&relay, "r1", "enc").await;
        // Joins a second and a half in, the first to watch.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let viewer = relay.client("r1", "viewer", &[Grant::Subscribe]).await;
        let video = watch(&viewer, "r1", "enc", "video").await;
        (viewer, video)
    };
    let ((status, asked), (_viewer, mut video)) = tokio::join!(publisher, subscriber);
    assert_eq!(status, 201);
    assert!(
        asked.iter().any(|&n| n >= 40),
        "no keyframe asked for when the subscriber came (asked at frames {asked:?})"
    );
    let got = drain(&mut video, Duration::from_secs(1)).await;
    let groups: std::collections::BTreeSet<u64> = got.iter().map(|o| o.group).collect();
    assert!(
        groups.len() >= 2,
        "a fresh group began at the requested keyframe: {groups:?}"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whip_port_tells_a_client_its_address_and_bounds_its_answers() {
    let relay = Relay::start().await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = socket.local_addr().unwrap();
    let request = |id: u8| {
        let mut r = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        r.extend_from_slice(&[id; 12]);
        r
    };
    socket
        .send_to(&request(1), relay.server.whip_addr)
        .await
        .unwrap();
    let mut buf = [0u8; 128];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .expect("a Binding response")
        .unwrap();
    let r = &buf[..n];
    assert_eq!(&r[0..2], &[0x01, 0x01], "Binding success");
    assert_eq!(&r[8..20], &[1u8; 12], "our transaction");
    assert_eq!(&r[20..22], &[0x00, 0x20], "XOR-MAPPED-ADDRESS");
    let port = u16::from_be_bytes([r[26], r[27]]) ^ 0x2112;
    let ip: Vec<u8> = r[28..32]
        .iter()
        .zip([0x21, 0x12, 0xa4, 0x42])
        .map(|(b, c)| b ^ c)
        .collect();
    assert_eq!((ip, port), (vec![127, 0, 0, 1], me.port()));

    // A flood (spoofable in the wild) gets a bounded number of answers, not one each.
    for i in 0..400u32 {
        socket
            .send_to(&request((i % 250) as u8), relay.server.whip_addr)
            .await
            .unwrap();
    }
    let mut answers = 0;
    while tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf))
        .await
        .is_ok()
    {
        answers += 1;
    }
    assert!(
        (50..=200).contains(&answers),
        "{answers} answers to 400 requests"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_webrtc_publishers_at_once_each_reach_their_subscriber() {
    let relay = Relay::start().await;
    let names = ["cam1", "cam2", "cam3"];
    let tokens: Vec<String> = names
        .iter()
        .map(|n| relay.token("r1", n, &[Grant::Publish]))
        .collect();
    let publishers = futures::future::join_all(
        tokens
            .iter()
            .map(|t| str0m_publisher(&relay, "r1", t, 90, true)),
    );
    let subscriber = async {
        for n in names {
            published(&relay, "r1", n).await;
        }
        let viewer = relay.client("r1", "viewer", &[Grant::Subscribe]).await;
        let mut tracks = vec![];
        for n in names {
            tracks.push(watch(&viewer, "r1", n, "video").await);
        }
        (viewer, tracks)
    };
    let (results, (_viewer, mut tracks)) = tokio::join!(publishers, subscriber);
    assert!(results.iter().all(|(status, _)| *status == 201));
    for (n, rx) in names.iter().zip(tracks.iter_mut()) {
        let got = drain(rx, Duration::from_millis(500)).await;
        assert!(got.len() >= 30, "{n}: {} objects", got.len());
    }
    relay.stop().await;
}
