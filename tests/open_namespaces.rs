//! Open namespaces (`public_prefixes`): sessions without a token publish and subscribe only
//! there, nobody takes over another session's open namespace, each prefix holds a bounded
//! number of namespaces, and nothing is open unless configured. Read on the wire by clients
//! over raw QUIC and WebTransport.

mod common;

use std::time::Duration;

use common::media::{drain, write_group};
use common::{refused_with, Relay, PUB, SUB};
use moq_transport::serve::SubgroupsWriter;
use roomcast::client::{self, namespace, verify_payload, Client, Received, SessionTask};
use roomcast::config::Config;
use tokio::sync::mpsc::UnboundedReceiver;

fn open_relay_config() -> Config {
    Config {
        public_prefixes: vec!["moq-test".into()],
        max_namespaces_per_room: Some(2),
        ..Default::default()
    }
}

/// Publishes `video` under `path`.
fn publish(c: &Client, path: &[&str]) -> (SubgroupsWriter, SessionTask) {
    let (mut w, task) = client::publish(c, namespace(path).unwrap(), &["video"]).unwrap();
    (w.remove(0), task)
}

/// Subscribes to `path`'s video once the relay knows its publisher (retried for 3 s).
async fn watch(c: &Client, path: &[&str]) -> UnboundedReceiver<Received> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match client::subscribe(c, namespace(path).unwrap(), "video").await {
            Ok((sub, reader)) => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(async move {
                    let _keep = sub;
                    let _ = client::read_track(reader, tx).await;
                });
                return rx;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                // DOES_NOT_EXIST (the crate keeps the reason in its log only): not yet there.
                assert!(
                    matches!(
                        e.downcast_ref::<moq_transport::serve::ServeError>(),
                        Some(moq_transport::serve::ServeError::NotFoundWithId(..))
                    ),
                    "{e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{} never became readable: {e}", path.join("/")),
        }
    }
}

/// The error a publication task ended with (its PUBLISH_NAMESPACE refused).
async fn refusal(task: SessionTask) -> String {
    let ended = tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .expect("the refusal never came")
        .expect("publication task panicked");
    ended.expect_err("publication accepted").to_string()
}

/// Writes groups 0..3 of 2 objects and checks `rx` reads all of them, byte for byte.
async fn round_trip(w: &mut SubgroupsWriter, rx: &mut UnboundedReceiver<Received>, first: u64) {
    for g in first..first + 3 {
        write_group(w, g, 2, 300);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let got = drain(rx, Duration::from_millis(400)).await;
    let want: Vec<_> = (first..first + 3).flat_map(|g| [(g, 0), (g, 1)]).collect();
    assert_eq!(
        got.iter().map(|r| (r.group, r.object)).collect::<Vec<_>>(),
        want
    );
    assert!(got
        .iter()
        .all(|r| verify_payload(r.group, r.object, &r.payload).is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_without_a_token_use_only_the_open_namespaces() {
    let relay = Relay::start_with(open_relay_config()).await;
    // Anonymous on both transports: a publisher over raw QUIC, a subscriber over WebTransport.
    let publisher = client::connect(&relay.quic(), None).await.unwrap();
    let viewer = client::connect(&relay.webtransport(), None).await.unwrap();
    let (mut video, _task) = publish(&publisher, &["moq-test", "clock"]);
    let mut rx = watch(&viewer, &["moq-test", "clock"]).await;
    round_trip(&mut video, &mut rx, 0).await;
    // A token holder reads the open namespace too.
    let member = relay.client("r1", "bob", SUB).await;
    let mut member_rx = watch(&member, &["moq-test", "clock"]).await;
    // It joins late: at the newest group's first object.
    let joined = drain(&mut member_rx, Duration::from_millis(200)).await;
    assert_eq!(joined.first().map(|r| (r.group, r.object)), Some((2, 0)));
    round_trip(&mut video, &mut member_rx, 10).await;
    assert_eq!(drain(&mut rx, Duration::from_millis(100)).await.len(), 6);

    // Rooms stay closed to a session without a token, for every request.
    let (_alice, _alice_video, _alice_task) = common::media::alice_video(&relay).await;
    let err = client::subscribe(
        &viewer,
        namespace(&["room", "r1", "alice"]).unwrap(),
        "video",
    )
    .await
    .err()
    .expect("anonymous subscription to a room accepted");
    refused_with(&err, 0x1, "anonymous");
    assert!(err.to_string().contains("only moq-test are open"), "{err}");
    let (_w, task) = publish(&viewer, &["room", "r1", "anon"]);
    refused_with(&refusal(task).await, 0x1, "anonymous");
    let (_w, task) = publish(&viewer, &["moq-test2", "x"]);
    refused_with(&refusal(task).await, 0x1, "anonymous");

    // Nobody takes over another session's open namespace (a token does not help either);
    // the first publisher keeps delivering.
    let (_w, task) = publish(&viewer, &["moq-test", "clock"]);
    refused_with(&refusal(task).await, 0x9, "namespace_taken");
    let intruder = relay.client("r1", "carol", PUB).await;
    let (_w, task) = publish(&intruder, &["moq-test", "clock"]);
    refused_with(&refusal(task).await, 0x9, "namespace_taken");
    round_trip(&mut video, &mut rx, 20).await;

    // The prefix holds at most `max_namespaces_per_room` namespaces, across sessions.
    let (_second, _second_task) = publish(&viewer, &["moq-test", "second"]);
    let _ = watch(&publisher, &["moq-test", "second"]).await;
    let (_w, task) = publish(&intruder, &["moq-test", "third"]);
    refused_with(&refusal(task).await, 0x9, "too_many_namespaces");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_open_unless_configured() {
    let relay = Relay::start().await;
    for target in [relay.quic(), relay.webtransport()] {
        let err = client::connect(&target, None)
            .await
            .err()
            .expect("a session without a token was admitted");
        assert!(err.to_string().contains("missing_token"), "{err}");
    }
    let member = relay.client("r1", "bob", PUB).await;
    let (_w, task) = publish(&member, &["moq-test", "clock"]);
    refused_with(&refusal(task).await, 0x1, "forbidden_namespace");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_is_refused_even_where_namespaces_are_open() {
    let relay = Relay::start_with(open_relay_config()).await;
    let forged = relay.token("r1", "bob", SUB).replace('.', "x");
    let err = client::connect(&relay.quic(), Some(&forged))
        .await
        .err()
        .expect("a bad token was taken for no token");
    assert!(err.to_string().contains("malformed_token"), "{err}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_a_few_sessions_without_a_token() {
    let relay = Relay::start_with(open_relay_config()).await;
    let mut held = vec![];
    for _ in 0..roomcast::relay::MAX_ANONYMOUS_PER_ADDRESS {
        held.push(client::connect(&relay.quic(), None).await.unwrap());
    }
    // Closed with the reason as soon as the relay has it (the close may beat SETUP's answer).
    let closed = match client::connect(&relay.quic(), None).await {
        Err(e) => format!("{e:#}"),
        Ok(extra) => tokio::time::timeout(Duration::from_secs(3), extra.session_closed())
            .await
            .expect("the extra anonymous session was kept")
            .to_string(),
    };
    assert!(closed.contains("too_many_sessions"), "{closed}");
    // A token holder from the same address still gets in.
    let member = relay.client("r1", "bob", SUB).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), member.session_closed())
            .await
            .is_err()
    );
    // A place comes back when a session leaves.
    held.pop().unwrap().close();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = client::connect(&relay.quic(), None).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), again.session_closed())
            .await
            .is_err()
    );
    relay.stop().await;
}
