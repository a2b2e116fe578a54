//! FETCH (draft-18 §10.12): standalone and joining fetches of past objects, answered from
//! the relay's cache of retained groups when it holds the whole range, and forwarded to the
//! publisher otherwise.

use std::time::Duration;

use moq_transport::coding::{Decode, KeyValuePairs, Location};
use moq_transport::data::{ExtensionHeaders, FetchRecord, FetchRecordObject};
use moq_transport::message::{GroupOrder, RequestErrorCode, StandaloneFetch};
use moq_transport::session::{FetchOkInfo, FetchRequested};

use super::session::Request;
use super::upstream::namespace_strings;
use super::Relay;
use crate::auth::{Action, Scope};
use crate::core::namespace::path_of;
use crate::core::registry::FullName;
use crate::core::track::TrackHandle;

/// How long a forwarded FETCH may take from request to the end of its body.
const PROXY_TIMEOUT: Duration = Duration::from_secs(30);

/// Priority written on objects served from the cache (the relay does not keep the
/// publisher's; the draft's default).
const CACHED_PRIORITY: u8 = 128;

/// Handles one FETCH until its response is written or refused.
pub async fn fetch(relay: Relay, scope: Scope, req: FetchRequested) -> Request {
    // A joining FETCH waits for its subscription's SUBSCRIBE_OK: bounded like an upstream
    // request. The crate answers the joining errors itself (`None`).
    let resolved =
        match tokio::time::timeout(relay.inner.limits.upstream_timeout, req.resolve()).await {
            Ok(Ok(Some(range))) => range,
            Ok(Ok(None)) => return Request::Subscription,
            Ok(Err(e)) => {
                let _ = req.reject(RequestErrorCode::InternalError, &format!("internal: {e}"));
                return Request::Subscription;
            }
            Err(_) => {
                let _ = req.reject(
                    RequestErrorCode::Timeout,
                    "timeout: the joined subscription was not answered in time",
                );
                return Request::Subscription;
            }
        };
    if let Err((code, reason)) = answer(&relay, &scope, req, resolved).await {
        relay
            .metrics()
            .refused(reason.split(':').next().unwrap_or("fetch"));
        tracing::debug!(code = ?code, %reason, "fetch refused");
    }
    Request::Subscription
}

type Refusal = (RequestErrorCode, String);

async fn answer(
    relay: &Relay,
    scope: &Scope,
    req: FetchRequested,
    range: StandaloneFetch,
) -> Result<(), Refusal> {
    let refuse = |req: FetchRequested, code, reason: String| {
        let _ = req.reject(code, &reason);
        Err((code, reason))
    };
    let (Some(ns), Ok(track)) = (
        namespace_strings(&range.track_namespace),
        String::from_utf8(range.track_name.as_bytes().to_vec()),
    ) else {
        return refuse(
            req,
            RequestErrorCode::MalformedTrack,
            "malformed_name: namespace or track name is not UTF-8".into(),
        );
    };
    if let Err(denied) = relay.access().admit(&scope.claims) {
        return refuse(
            req,
            RequestErrorCode::Unauthorized,
            denied.reason().to_owned(),
        );
    }
    if let Err(e) = relay.allows(scope, Action::Subscribe, &ns) {
        return refuse(req, RequestErrorCode::Unauthorized, e.reason());
    }
    let name: FullName = (ns, track);
    let from = (
        range.start_location.group_id,
        range.start_location.object_id,
    );
    // The wire's End Location is the last object plus one, or {group, 0} for a whole group.
    let end = range.end_location;
    let to = match end.object_id {
        0 => (end.group_id, u64::MAX),
        o => (end.group_id, o - 1),
    };
    let found = relay.registry().find_track(&name);
    let Some((cached, source)) = found else {
        return refuse(
            req,
            RequestErrorCode::DoesNotExist,
            format!("does_not_exist: nobody publishes {}", path_of(&name.0)),
        );
    };
    if let Some(handle) = &cached {
        let held = handle.held(from, to);
        // The relay's own tracks have nobody upstream to ask: the cache is all there is.
        if held.complete || source.is_none() {
            return from_cache(req, handle, held.groups, from, end, to).await;
        }
    }
    let Some(upstream) = source else {
        return refuse(
            req,
            RequestErrorCode::DoesNotExist,
            format!(
                "does_not_exist: no track {} in {}",
                name.1,
                path_of(&name.0)
            ),
        );
    };
    let mut subscriber = upstream.subscriber.clone();
    match subscriber.fetch(range, KeyValuePairs::default()).await {
        // Upstream refusals (REQUEST_ERROR) and the body are passed on by the crate.
        Ok(fetch) => {
            if let Err(e) = req.proxy(fetch, PROXY_TIMEOUT).await {
                tracing::debug!(error = %e, "forwarded fetch ended early");
            }
            Ok(())
        }
        Err(e) => refuse(
            req,
            RequestErrorCode::InternalError,
            format!("upstream: the publisher could not be asked: {e}"),
        ),
    }
}

/// Writes the cached objects of the range: FETCH_OK with where the response really ends,
/// then every object in the requested group order.
async fn from_cache(
    req: FetchRequested,
    handle: &TrackHandle,
    mut groups: Vec<(u64, Vec<crate::core::track::Object>)>,
    from: (u64, u64),
    end: Location,
    to: (u64, u64),
) -> Result<(), Refusal> {
    let Some(largest) = handle.largest().filter(|l| *l >= from) else {
        let reason = "invalid_range: the track has no object at or after the start".to_owned();
        let _ = req.reject(RequestErrorCode::InvalidRange, &reason);
        return Err((RequestErrorCode::InvalidRange, reason));
    };
    let end_location = if to <= largest {
        end
    } else {
        Location::new(largest.0, largest.1 + 1)
    };
    if req.group_order() == Some(GroupOrder::Descending) {
        groups.reverse();
    }
    let info = FetchOkInfo {
        end_of_track: handle.is_closed() && to >= largest,
        end_location,
        params: KeyValuePairs::default(),
        track_extensions: Default::default(),
    };
    let internal = |e: moq_transport::session::SessionError| {
        (RequestErrorCode::InternalError, format!("internal: {e}"))
    };
    let mut writer = req.respond(info).await.map_err(internal)?;
    for (group, objects) in groups {
        for o in objects {
            let extension_headers = if o.extensions.is_empty() {
                ExtensionHeaders::default()
            } else {
                ExtensionHeaders::decode(&mut o.extensions.clone()).unwrap_or_default()
            };
            let record = FetchRecord::Object(FetchRecordObject {
                group_id: group,
                subgroup_id: Some(0),
                object_id: o.id,
                publisher_priority: CACHED_PRIORITY,
                extension_headers,
                payload_length: o.payload.len() as u64,
            });
            writer.write_record(&record).await.map_err(internal)?;
            writer.write_payload(&o.payload).await.map_err(internal)?;
        }
    }
    writer.finish().await.map_err(internal)
}
