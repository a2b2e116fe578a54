//! PUBLISH (draft-18 §10.4): a publisher pushes one track without waiting for a SUBSCRIBE.
//! Allowed where PUBLISH_NAMESPACE is; the track is cached and served to subscribers as if the
//! relay had subscribed to it. A namespace the session has not announced is published by the
//! PUBLISH itself for as long as it lasts, under the same limits.

use std::sync::Arc;

use moq_transport::session::PublishReceived;
use tokio_util::sync::CancellationToken;

use super::session::Request;
use super::upstream::{ingest, namespace_strings, publication_event, publish_refusal};
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
    // The namespace: this session's own PUBLISH_NAMESPACE, one a PUBLISH of its made (shared,
    // counted), or published now by this PUBLISH (replacing an older session's, as a
    // PUBLISH_NAMESPACE does).
    let limits = relay.inner.limits;
    let (generation, shared) = {
        let mut refs = relay
            .inner
            .publish_refs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut registry = relay.registry();
        let own = registry
            .publication(&ns)
            .filter(|(_, s)| {
                s.as_ref()
                    .is_some_and(|s| Arc::ptr_eq(&s.budget, &source.budget))
            })
            .map(|(generation, _)| generation);
        match own {
            Some(generation) => match refs.get_mut(&ns) {
                Some((g, n)) if *g == generation => {
                    *n += 1;
                    (generation, true)
                }
                _ => (generation, false),
            },
            None => match registry.try_publish(
                ns.clone(),
                Some(source.clone()),
                limits.max_namespaces_per_room,
                limits.max_namespaces_per_session,
            ) {
                Ok((generation, _)) => {
                    refs.insert(ns.clone(), (generation, 1));
                    (generation, true)
                }
                Err(refusal) => {
                    drop((registry, refs));
                    let (label, reason) = publish_refusal(refusal);
                    relay.metrics().refused(label);
                    return refuse(published, request_code::EXCESSIVE_LOAD, reason.into());
                }
            },
        }
    };
    let first = shared
        && relay
            .inner
            .publish_refs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ns)
            .is_some_and(|(_, n)| *n == 1);
    let name: FullName = (ns.clone(), track);
    let budget = source.budget.child("track", limits.track_cache_bytes);
    let (producer, handle) = track_in(limits.track(), Some(budget));
    producer.announce_largest(
        published
            .largest_location()
            .map(|l| (l.group_id, l.object_id)),
    );
    // From here on, however the task ends (also aborted with its session), the track and a
    // namespace this PUBLISH holds are let go.
    let _guard = Guard {
        relay: &relay,
        scope: &scope,
        name: name.clone(),
        handle: handle.clone(),
        generation,
        shared,
    };
    if first {
        publication_event(&relay, &scope, &ns, true);
    }
    let Ok(reader) = published.take_reader() else {
        return refuse(
            published,
            request_code::INTERNAL,
            "internal: no track reader".into(),
        );
    };
    if !relay
        .registry()
        .pin_track(name.clone(), generation, handle.clone())
        || published.accept(true).is_err()
    {
        return Request::Publication;
    }
    relay.refresh_gauges();
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
    Request::Publication
}

/// Lets go of a PUBLISH's cached track and, with the last PUBLISH holding it, of a
/// namespace PUBLISH published.
struct Guard<'a> {
    relay: &'a Relay,
    scope: &'a Scope,
    name: FullName,
    handle: crate::core::track::TrackHandle,
    generation: u64,
    /// The namespace is held by PUBLISHes (counted in `publish_refs`).
    shared: bool,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let relay = self.relay;
        relay.registry().unpin_track(&self.name, &self.handle);
        if self.shared {
            let last = {
                let mut refs = relay
                    .inner
                    .publish_refs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                match refs.get_mut(&self.name.0) {
                    Some((g, n)) if *g == self.generation => {
                        *n -= 1;
                        let last = *n == 0;
                        if last {
                            refs.remove(&self.name.0);
                        }
                        last
                    }
                    _ => false,
                }
            };
            if last && relay.registry().unpublish(&self.name.0, self.generation) {
                publication_event(relay, self.scope, &self.name.0, false);
            }
        }
        relay.refresh_gauges();
    }
}
