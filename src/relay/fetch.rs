//! FETCH (draft-18 §10.12): standalone and joining fetches of past objects, answered from
//! the relay's cache of retained groups when it holds the whole range, and forwarded to the
//! publisher otherwise.

use std::sync::Arc;
use std::time::Duration;

use moq_transport::coding::{Decode, KeyValuePairs, Location, ReasonPhrase};
use moq_transport::data::{ExtensionHeaders, FetchRecord, FetchRecordObject};
use moq_transport::message::{GroupOrder, RequestError, RequestErrorCode, StandaloneFetch};
use moq_transport::session::{FetchOkInfo, FetchRequested};

use super::session::Request;
use super::{request_code, Refused, Relay};
use crate::auth::Scope;
use crate::core::budget::Budget;
use crate::core::namespace::{path_of, room_of};
use crate::core::track::TrackHandle;

/// How long a forwarded FETCH may take from request to the end of its body.
const PROXY_TIMEOUT: Duration = Duration::from_secs(30);

/// Priority written on objects served from the cache (the relay does not keep the
/// publisher's; the draft's default).
const CACHED_PRIORITY: u8 = 128;

/// Handles one FETCH until its response is written or refused. A response from the cache is
/// charged to `budget` (the requesting session's share of the cache) while it is written, so
/// a client that fetches and does not read holds its own allowance, nobody else's.
pub async fn fetch(
    relay: Relay,
    scope: Scope,
    req: FetchRequested,
    budget: Arc<Budget>,
) -> Request {
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
    if let Err(r) = answer(&relay, &scope, req, resolved, &budget).await {
        relay.metrics().refused(r.label);
        tracing::debug!(code = r.code, reason = %r.reason, "fetch refused");
    }
    Request::Subscription
}

/// Answers `req` with REQUEST_ERROR `code` and `reason`, and says why, for the caller to count.
fn refuse(
    req: FetchRequested,
    code: u64,
    reason: String,
    label: &'static str,
) -> Result<(), Refused> {
    let _ = req.reject_with(RequestError {
        id: 0, // the crate writes the request's own
        error_code: code,
        retry_interval: 0,
        reason: ReasonPhrase::new(&reason),
    });
    Err(Refused {
        code,
        reason,
        label,
    })
}

async fn answer(
    relay: &Relay,
    scope: &Scope,
    req: FetchRequested,
    range: StandaloneFetch,
    budget: &Arc<Budget>,
) -> Result<(), Refused> {
    let name = match relay.readable_track(scope, &range.track_namespace, &range.track_name) {
        Ok(name) => name,
        Err(r) => return refuse(req, r.code, r.reason, r.label),
    };
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
            request_code::DOES_NOT_EXIST,
            format!("does_not_exist: nobody publishes {}", path_of(&name.0)),
            "does_not_exist",
        );
    };
    // A muted participant's track is not asked for upstream: its publisher still sends what
    // the relay withholds from everyone.
    let muted = match (room_of(&name.0), name.0.get(2)) {
        (Some(room), Some(who)) => relay.access().is_muted(room, who, &name.1),
        _ => false,
    };
    if let Some(handle) = &cached {
        let held = handle.held(from, to);
        // The relay's own tracks have nobody upstream to ask: the cache is all there is.
        if held.complete || source.is_none() || muted {
            let write_timeout = relay.inner.limits.write_timeout;
            return from_cache(
                req,
                handle,
                held.groups,
                (from, end, to),
                budget,
                write_timeout,
            )
            .await;
        }
    }
    if muted {
        return refuse(
            req,
            request_code::UNAUTHORIZED,
            format!("muted: {} is muted in this room", name.1),
            "muted",
        );
    }
    let Some(upstream) = source else {
        return refuse(
            req,
            request_code::DOES_NOT_EXIST,
            format!(
                "does_not_exist: no track {} in {}",
                name.1,
                path_of(&name.0)
            ),
            "does_not_exist",
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
            request_code::INTERNAL,
            format!("upstream: the publisher could not be asked: {e}"),
            "upstream",
        ),
    }
}

/// Writes the cached objects of the range: FETCH_OK with where the response really ends,
/// then every object in the requested group order. The objects' bytes are charged to the
/// requester's `budget` until the response is written; each write gets `write_timeout`.
async fn from_cache(
    req: FetchRequested,
    handle: &TrackHandle,
    mut groups: Vec<(u64, Vec<crate::core::track::Object>)>,
    (from, end, to): ((u64, u64), Location, (u64, u64)),
    budget: &Arc<Budget>,
    write_timeout: Duration,
) -> Result<(), Refused> {
    let Some(largest) = handle.largest_held().filter(|l| *l >= from) else {
        return refuse(
            req,
            request_code::INVALID_RANGE,
            "invalid_range: the relay holds no object at or after the start".to_owned(),
            "invalid_range",
        );
    };
    let size: usize = groups
        .iter()
        .flat_map(|(_, objects)| objects)
        .map(|o| o.payload.len() + o.extensions.len())
        .sum();
    let mut charge = budget.charge();
    if let Err(exhausted) = charge.add(size) {
        return refuse(
            req,
            request_code::EXCESSIVE_LOAD,
            format!("fetch_too_large: {size} bytes: {exhausted}"),
            "fetch_too_large",
        );
    }
    let end_location = if to <= largest {
        end
    } else {
        match largest.1.checked_add(1) {
            Some(next) => Location::new(largest.0, next),
            None => Location::new(largest.0.saturating_add(1), 0),
        }
    };
    if req.group_order() == Some(GroupOrder::Descending) {
        groups.reverse();
    }
    let info = FetchOkInfo {
        // Not claimed: the relay cannot tell a track that ended from a publisher that left.
        end_of_track: false,
        end_location,
        params: KeyValuePairs::default(),
        track_extensions: Default::default(),
    };
    // After FETCH_OK there is no REQUEST_ERROR to send: the stream is reset (the writer
    // dropped) and the refusal is only counted.
    let internal = |e: moq_transport::session::SessionError| Refused {
        code: request_code::INTERNAL,
        reason: format!("internal: {e}"),
        label: "internal",
    };
    let stalled = || Refused {
        code: request_code::TIMEOUT,
        reason: "too_far_behind: the fetch was not read in time".to_owned(),
        label: "too_far_behind",
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
                // A datagram is flagged as one (no subgroup id).
                subgroup_id: (o.subgroup != crate::core::track::DATAGRAMS).then_some(o.subgroup),
                object_id: o.id,
                publisher_priority: CACHED_PRIORITY,
                extension_headers,
                payload_length: o.payload.len() as u64,
            });
            let wrote = tokio::time::timeout(write_timeout, async {
                writer.write_record(&record).await?;
                writer.write_payload(&o.payload).await
            })
            .await;
            match wrote {
                Ok(r) => r.map_err(internal)?,
                // Dropping the writer resets the stream.
                Err(_) => return Err(stalled()),
            }
        }
    }
    let r = writer.finish().await.map_err(internal);
    drop(charge);
    r
}
