//! WHIP over real HTTP: every refusal with its status and code, and a session (created from
//! an offer a real WebRTC stack made, str0m's) ended by DELETE, a kick, a revoked publish
//! grant, its token's expiry, a newer session, or silence. Media is in tests/whip_media.rs and
//! tests/browser/whip.test.mjs.

mod common;

use std::time::{Duration, Instant};

use common::http::{json, raw, Response};
use common::whip::{location, nobody_publishes, offer, post_offer, publishing, refused};
use common::{eventually, Relay};
use roomcast::auth::{token::now_secs, Claims, Grant};
use roomcast::config::Config;
use serde_json::json as j;
use str0m::media::{Direction, MediaKind};
use str0m::Rtc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_whip_request_gets_its_status_and_reason() {
    let relay = Relay::start().await;
    let publish = relay.token("r1", "obs", &[Grant::Publish]);
    let good = offer(false);

    refused(
        &post_offer(&relay, "r1", None, &good).await,
        401,
        "missing_token",
    );
    refused(
        &post_offer(&relay, "r1", Some("garbage"), &good).await,
        401,
        "malformed_token",
    );
    let expired = relay.token_for(Claims {
        exp: now_secs() - 3600,
        iat: now_secs() - 7200,
        ..Claims::new(
            "obs",
            "r1",
            [Grant::Publish].into(),
            Duration::from_secs(60),
        )
    });
    refused(
        &post_offer(&relay, "r1", Some(&expired), &good).await,
        401,
        "token_expired",
    );
    let viewer = relay.token("r1", "viewer", &[Grant::Subscribe]);
    refused(
        &post_offer(&relay, "r1", Some(&viewer), &good).await,
        403,
        "missing_grant",
    );
    refused(
        &post_offer(&relay, "r2", Some(&publish), &good).await,
        403,
        "wrong_room",
    );
    relay.server.relay.access().ban("r1", "mallory");
    let banned = relay.token("r1", "mallory", &[Grant::Publish]);
    refused(
        &post_offer(&relay, "r1", Some(&banned), &good).await,
        403,
        "banned",
    );
    let r = raw(
        relay.http(),
        "POST",
        "/whip/r1",
        Some(&publish),
        "application/json",
        good.as_bytes(),
    )
    .await;
    refused(&r, 415, "not_sdp");
    refused(
        &post_offer(&relay, "r1", Some(&publish), "hello, I am not SDP").await,
        400,
        "malformed_sdp",
    );
    // SDP that parses but that no WebRTC peer could use.
    let broken = good.replace("a=fingerprint", "a=fingerprinx");
    let r = post_offer(&relay, "r1", Some(&publish), &broken).await;
    refused(&r, 400, "rejected_offer");
    assert!(String::from_utf8_lossy(&r.body).contains("fingerprint"));
    refused(
        &post_offer(&relay, "r1", Some(&publish), &offer(true)).await,
        406,
        "unsupported_codec",
    );
    let huge = format!("{good}{}", "a=x-padding\r\n".repeat(4000));
    let r = post_offer(&relay, "r1", Some(&publish), &huge).await;
    assert_eq!(r.status, 413, "an offer over the size limit");
    let r = raw(
        relay.http(),
        "DELETE",
        "/whip/r1/0123456789abcdef0123456789abcdef",
        Some(&publish),
        "",
        b"",
    )
    .await;
    refused(&r, 404, "unknown_session");
    let r = raw(
        relay.http(),
        "PATCH",
        "/whip/r1/x",
        Some(&publish),
        "application/trickle-ice-sdpfrag",
        b"a=end-of-candidates\r\n",
    )
    .await;
    refused(&r, 405, "trickle_not_supported");
    let r = raw(relay.http(), "OPTIONS", "/whip/r1", None, "", b"").await;
    assert_eq!(r.status, 204);
    let h = r.headers.to_ascii_lowercase();
    assert!(
        h.contains("access-control-allow-methods: post, delete, options"),
        "{h}"
    );
    assert!(
        h.contains("access-control-allow-headers: authorization, content-type"),
        "{h}"
    );

    // Nothing was published by any of them.
    assert!(relay.server.relay.publishers("r1").is_empty());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_session_ends_with_delete_a_kick_or_a_revoked_grant() {
    let relay = Relay::start_with(Config {
        whip_ice_servers: vec!["stun:stun.example.net:3478".into()],
        ..Default::default()
    })
    .await;
    // Through the API, as an application would: a host, a room, a member who joins.
    let host = relay.user("host").await;
    let id = relay.room(&host, j!({"name": "ingest"})).await;
    let obs = relay.user("obs").await;
    let media = |r: Response| r.json()["token"].as_str().unwrap().to_owned();
    let token = media(relay.join(&obs, &id, j!({})).await);

    // Created: the answer, its resource, an ETag, the ICE servers; the member publishes.
    let r = post_offer(&relay, &id, Some(&token), &offer(false)).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let answer = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        answer.contains("a=ice-lite") && answer.contains("VP8/90000"),
        "{answer}"
    );
    assert!(
        answer.contains(&format!(" {} typ host", relay.server.whip_addr.port())),
        "{answer}"
    );
    let h = r.headers.to_ascii_lowercase();
    assert!(h.contains("etag: \""), "{h}");
    assert!(
        h.contains("link: <stun:stun.example.net:3478>; rel=\"ice-server\""),
        "{h}"
    );
    assert!(publishing(&relay, &id, "obs"));
    let first = location(&r);
    let delete = |path: String, token: String| {
        let http = relay.http();
        async move {
            raw(http, "DELETE", &path, Some(&token), "", b"")
                .await
                .status
        }
    };
    // Someone else's token cannot end it.
    let other = relay.user("other").await;
    let other_token = media(relay.join(&other, &id, j!({})).await);
    assert_eq!(delete(first.clone(), other_token).await, 404);
    assert_eq!(delete(first.clone(), token.clone()).await, 200);
    assert!(nobody_publishes(&relay, &id, Duration::from_secs(2)).await);

    // A kick ends an open session (and its token).
    let r = post_offer(&relay, &id, Some(&token), &offer(false)).await;
    assert_eq!(r.status, 201);
    let second = location(&r);
    let r = json(
        relay.http(),
        "POST",
        &format!("/api/rooms/{id}/participants/obs/kick"),
        Some(&host),
        j!(null),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        nobody_publishes(&relay, &id, Duration::from_secs(1)).await,
        "kicked: unpublished within a second"
    );
    assert_eq!(
        delete(second, token.clone()).await,
        403,
        "the kicked token is refused"
    );

    // A revoked publish grant ends the next one within a second.
    let token = media(relay.join(&obs, &id, j!({})).await);
    let r = post_offer(&relay, &id, Some(&token), &offer(false)).await;
    assert_eq!(r.status, 201);
    let third = location(&r);
    let r = json(
        relay.http(),
        "POST",
        &format!("/api/rooms/{id}/participants/obs/grants"),
        Some(&host),
        j!({"publish": false}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        nobody_publishes(&relay, &id, Duration::from_secs(1)).await,
        "revoked: unpublished within a second"
    );
    assert_eq!(delete(third, token).await, 404, "the session is gone");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_session_that_never_connects_is_ended_after_the_idle_timeout() {
    let relay = Relay::start_with(Config {
        whip_idle_timeout_ms: Some(500),
        max_whip_sessions: Some(1),
        ..Default::default()
    })
    .await;
    let token = relay.token("r1", "obs", &[Grant::Publish]);
    let r = post_offer(&relay, "r1", Some(&token), &offer(false)).await;
    assert_eq!(r.status, 201);
    let first = location(&r);
    // The one place is taken while it waits for ICE.
    let other = relay.token("r1", "cam2", &[Grant::Publish]);
    refused(
        &post_offer(&relay, "r1", Some(&other), &offer(false)).await,
        503,
        "too_many_sessions",
    );
    // No ICE, no media: ended, unpublished, its place free again.
    assert!(
        nobody_publishes(&relay, "r1", Duration::from_secs(3)).await,
        "the silent session was not ended"
    );
    let r = raw(relay.http(), "DELETE", &first, Some(&token), "", b"").await;
    refused(&r, 404, "unknown_session");
    assert_eq!(
        post_offer(&relay, "r1", Some(&other), &offer(false))
            .await
            .status,
        201
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_session_ends_with_its_token_or_a_newer_session_and_offers_stay_simple() {
    let relay = Relay::start().await;
    // A token about to expire: the session ends with it (as a MoQ session does).
    let short = relay.token_for(Claims::new(
        "brief",
        "r1",
        [Grant::Publish].into(),
        Duration::from_secs(2),
    ));
    let r = post_offer(&relay, "r1", Some(&short), &offer(false)).await;
    assert_eq!(r.status, 201);
    assert!(publishing(&relay, "r1", "brief"));
    assert!(
        eventually(Duration::from_secs(5), || !publishing(
            &relay, "r1", "brief"
        ))
        .await,
        "the session outlived its token"
    );

    // A newer session of the same participant replaces the older, which ends.
    let token = relay.token("r1", "cam", &[Grant::Publish]);
    let first = location(&post_offer(&relay, "r1", Some(&token), &offer(false)).await);
    let second = location(&post_offer(&relay, "r1", Some(&token), &offer(false)).await);
    // Within a housekeeping tick (250 ms) the older one is gone: deleting it finds nothing.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = raw(relay.http(), "DELETE", &first, Some(&token), "", b"").await;
    refused(&r, 404, "unknown_session");
    assert!(publishing(&relay, "r1", "cam"), "the newer one publishes");
    assert_eq!(
        raw(relay.http(), "DELETE", &second, Some(&token), "", b"")
            .await
            .status,
        200
    );

    // Two video sections (or simulcast) in one offer are refused.
    let mut rtc = Rtc::builder().build(Instant::now());
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (two, _pending) = change.apply().unwrap();
    let r = post_offer(&relay, "r1", Some(&token), &two.to_sdp_string()).await;
    refused(&r, 400, "rejected_offer");
    relay.stop().await;
}
