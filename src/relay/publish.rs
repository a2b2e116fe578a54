//! PUBLISH (draft-18 §10.4): a publisher pushes one track without waiting for a SUBSCRIBE.
//! Allowed where PUBLISH_NAMESPACE is; the track is cached and served to subscribers as if the
//! relay had subscribed to it. A namespace the session has not announced is published by the
//! PUBLISH itself for as long as it lasts, under the same limits.

use std::sync::Arc;

use moq_transport::session::PublishReceived;
use tokio_util::sync::CancellationToken;

use super::access::RelayEvent;
use super::session::Request;
use super::upstream::{ingest, namespace_strings};
use super::{request_code, Relay, Upstream};
use crate::auth::{Action, Scope};
use crate::core::namespace::path_of;
use crate::core::registry::FullName;
use crate::core::track::track_in;

/// Handles one PUBLISH until the publisher ends it, the session ends, or the publish grant is
/// revoked.
pub async fn publish(
    relay: Relay,
    scope: Scope,
    mut published: PublishReceived,
    source: Upstream,
    revoked: CancellationToken,
) -> Request {
    let refuse = |p: PublishReceived, code, reason: String| {
        p.close(request_code::refusal(code, reason));
        Request::Publication
    };
    let (Some(ns), Ok(track)) = (
        namespace_strings(published.namespace()),
        String::from_utf8(published.name().as_bytes().to_vec()),
    ) else {
        relay.metrics().refused("malformed_name");
        return refuse(
            published,
            request_code::MALFORMED,
            "malformed_name: namespace or track name is not UTF-8".into(),
        );
    };
    if let Err(e) = relay.allows(&scope, Action::Publish, &ns) {
        relay.metrics().refused(e.code());
        return refuse(published, request_code::UNAUTHORIZED, e.reason());
    }
    // This session's own announcement of the namespace, or a publication of its own.
    let own = relay
        .registry()
        .publication(&ns)
        .filter(|(_, s)| {
            s.as_ref()
                .is_some_and(|s| Arc::ptr_eq(&s.budget, &source.budget))
        })
        .map(|(generation, _)| generation);
    let (generation, announced) = match own {
        Some(generation) => (generation, false),
        None => {
            let limits = relay.inner.limits;
            let r = relay.registry().try_publish(
                ns.clone(),
                Some(source.clone()),
                limits.max_namespaces_per_room,
                limits.max_namespaces_per_session,
            );
            match r {
                Ok((generation, _)) => (generation, true),
                Err(_) => {
                    relay.metrics().refused("room_full_of_namespaces");
                    return refuse(
                        published,
                        request_code::EXCESSIVE_LOAD,
                        "too_many_namespaces: the room (or this participant) has the most published namespaces it may".into(),
                    );
                }
            }
        }
    };
    let name: FullName = (ns.clone(), track);
    let limits = relay.inner.limits;
    let budget = source.budget.child("track", limits.track_cache_bytes);
    let (producer, handle) = track_in(limits.track(), Some(budget));
    producer.announce_largest(
        published
            .largest_location()
            .map(|l| (l.group_id, l.object_id)),
    );
    let reader = match published.take_reader() {
        Ok(reader) => reader,
        Err(e) => {
            if announced {
                relay.registry().unpublish(&ns, generation);
            }
            return refuse(published, request_code::INTERNAL, format!("internal: {e}"));
        }
    };
    if !relay
        .registry()
        .pin_track(name.clone(), generation, handle.clone())
        || published.accept(true).is_err()
    {
        relay.registry().unpin_track(&name, &handle);
        if announced {
            relay.registry().unpublish(&ns, generation);
        }
        return Request::Publication;
    }
    relay.refresh_gauges();
    let event = |up| {
        let (room, identity) = (scope.claims.room.clone(), scope.claims.sub.clone());
        relay.access().emit(if up {
            RelayEvent::Published { room, identity }
        } else {
            RelayEvent::Unpublished { room, identity }
        });
    };
    if announced {
        event(true);
    }
    tracing::debug!(track = %format!("{}/{}", path_of(&name.0), name.1), "track published (PUBLISH)");
    tokio::select! {
        r = ingest(&relay, reader, Arc::new(producer), 0, &name) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "published track ended");
            }
        }
        _ = published.closed() => {}
        _ = revoked.cancelled() => {}
    }
    relay.registry().unpin_track(&name, &handle);
    if announced {
        relay.registry().unpublish(&ns, generation);
        event(false);
    }
    relay.refresh_gauges();
    Request::Publication
}
