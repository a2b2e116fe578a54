//! The publisher side: PUBLISH_NAMESPACE, and reading a publisher's track into the core.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use moq_transport::coding::{Encode, TrackNamespace};
use moq_transport::data::ObjectStatus;
use moq_transport::serve::{self, ServeError, SubgroupReader, TrackReaderMode};
use moq_transport::session::PublishedNamespace;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::access::RelayEvent;
use super::session::Request;
use super::{request_code, Relay, Upstream};
use crate::auth::{Action, Scope};
use crate::core::budget::Charge;
use crate::core::namespace::{path_of, room_of};
use crate::core::registry::{Cached, FullName, Refusal};
use crate::core::track::{track_in, Object, TrackCursor, TrackHandle, TrackProducer};

/// How long a video group that started before a mute may go on after it (a GOP is 2 s).
const MUTE_GOP_GRACE: Duration = Duration::from_secs(2);

/// How long a relayed track stays subscribed upstream after its last subscriber left.
const LINGER: Duration = Duration::from_secs(2);

/// A namespace as UTF-8 strings, or `None` if a field is not UTF-8.
pub fn namespace_strings(ns: &TrackNamespace) -> Option<Vec<String>> {
    ns.fields
        .iter()
        .map(|f| String::from_utf8(f.value.clone()).ok())
        .collect()
}

/// Handles one PUBLISH_NAMESPACE for as long as it stays published.
pub async fn announce(
    relay: Relay,
    scope: Scope,
    mut published: PublishedNamespace,
    source: Upstream,
    revoked: CancellationToken,
) -> Request {
    let Some(ns) = namespace_strings(&published.info.namespace) else {
        relay.metrics().refused("malformed_namespace");
        let _ = published.reject(request_code::MALFORMED, "malformed_namespace: not UTF-8");
        return Request::Publication;
    };
    if let Err(e) = relay.allows(&scope, Action::Publish, &ns) {
        relay.metrics().refused(e.code());
        tracing::info!(namespace = %path_of(&ns), code = e.code(), "publish refused");
        let _ = published.reject(request_code::UNAUTHORIZED, &e.reason());
        return Request::Publication;
    }
    let limits = relay.inner.limits;
    let published_now = relay.registry().try_publish(
        ns.clone(),
        Some(source),
        limits.max_namespaces_per_room,
        // Every session of the participant together, so several sessions cannot multiply it.
        limits.max_namespaces_per_session,
    );
    let (generation, replaced) = match published_now {
        Ok(published_now) => published_now,
        Err(refusal) => {
            let (label, reason) = publish_refusal(refusal);
            relay.metrics().refused(label);
            tracing::info!(namespace = %path_of(&ns), label, "publish refused");
            let _ = published.reject(request_code::EXCESSIVE_LOAD, reason);
            return Request::Publication;
        }
    };
    if replaced.is_some() {
        tracing::info!(namespace = %path_of(&ns), "publisher replaced by a newer session");
    }
    relay.refresh_gauges();
    let event = |up| publication_event(&relay, &scope, &ns, up);
    if published.ok().is_ok() {
        tracing::debug!(namespace = %path_of(&ns), "namespace published");
        event(true);
        tokio::select! {
            _ = published.closed() => {}
            _ = revoked.cancelled() => {
                tracing::info!(namespace = %path_of(&ns), "publish grant revoked: publication withdrawn");
            }
        }
        event(false);
    }
    relay.registry().unpublish(&ns, generation);
    relay.refresh_gauges();
    Request::Publication
}

/// The metric label and reason phrase of a registry refusal.
pub(super) fn publish_refusal(refusal: Refusal) -> (&'static str, &'static str) {
    match refusal {
        Refusal::Full => (
            "room_full_of_namespaces",
            "too_many_namespaces: the room (or this participant, or this open prefix) has the most published namespaces it may",
        ),
        Refusal::Taken => (
            "namespace_taken",
            "namespace_taken: another session publishes this open namespace",
        ),
    }
}

/// Tells the room that the session's participant started (`true`) or stopped publishing
/// `namespace` (nothing for a namespace outside its room, under an open prefix).
pub(super) fn publication_event(
    relay: &Relay,
    scope: &Scope,
    namespace: &[String],
    published: bool,
) {
    if room_of(namespace) != Some(scope.claims.room.as_str()) {
        return;
    }
    let (room, identity) = (scope.claims.room.clone(), scope.claims.sub.clone());
    relay.access().emit(if published {
        RelayEvent::Published { room, identity }
    } else {
        RelayEvent::Unpublished { room, identity }
    });
}

/// Subscribes upstream to `name` through `source` and starts copying its objects into a new
/// core track. Returns a first cursor once the publisher accepted the subscription.
pub async fn start_track(
    relay: &Relay,
    source: Upstream,
    name: &FullName,
    ended: CancellationToken,
) -> Result<(TrackCursor, TrackHandle), ServeError> {
    let ns = TrackNamespace::try_from(name.0.clone())
        .map_err(|_| ServeError::not_found_full("bad namespace", "Track not found"))?;
    let (writer, reader) = serve::Track::new(ns, name.1.as_str()).produce();
    let mut subscriber = source.subscriber.clone();
    let upstream = subscriber.subscribe_open(writer).await?;
    // Groups before the publisher's current one are history: a late joiner must start at
    // the current group's first object, so older groups are not relayed.
    let announced = upstream
        .subscribe_ok()
        .and_then(|ok| ok.params.largest_object().ok().flatten())
        .map(|l| (l.group_id, l.object_id));
    let floor = announced.map_or(0, |(group, _)| group);
    let limits = relay.inner.limits;
    let budget = source.budget.child("track", limits.track_cache_bytes);
    let (producer, handle) = track_in(limits.track(), Some(budget));
    // Where the publisher was when it answered: the largest location until objects arrive.
    producer.announce_largest(announced);
    let cursor = handle.cursor();
    let relay = relay.clone();
    let label = path_of(&name.0) + "/" + &name.1;
    let name = name.clone();
    let cached = handle.clone();
    let upstreams = relay
        .metrics()
        .upstream_subscriptions
        .get_or_create(&crate::metrics::SourceLabel {
            source: if source.remote { "node" } else { "session" },
        })
        .clone();
    upstreams.inc();
    relay.inner.tasks.clone().spawn(async move {
        let producer = Arc::new(producer);
        tokio::select! {
            _ = ended.cancelled() => tracing::debug!(track = %label, "publication ended"),
            r = ingest(&relay, reader, producer.clone(), floor, &name) => {
                if let Err(e) = r {
                    tracing::info!(track = %label, error = %e, "upstream track ended");
                }
            }
            _ = unused(&relay, &name, &cached, &producer) => tracing::debug!(track = %label, "no subscribers left"),
        }
        drop(upstream);
        upstreams.dec();
    });
    Ok((cursor, handle))
}

/// Resolves once nobody has subscribed to the track for [`LINGER`] (it is then forgotten by
/// the registry in the same step, so no newcomer can pick up a track whose upstream ends).
async fn unused(relay: &Relay, name: &FullName, handle: &TrackHandle, producer: &TrackProducer) {
    loop {
        producer.no_readers().await;
        tokio::time::sleep(LINGER).await;
        match relay.registry().forget_unused(name, handle) {
            Cached::Forgotten => return,
            Cached::InUse => {}
            Cached::NotCached if producer.reader_count() == 0 => return,
            Cached::NotCached => {}
        }
    }
}

pub(super) async fn ingest(
    relay: &Relay,
    reader: serve::TrackReader,
    producer: Arc<TrackProducer>,
    floor: u64,
    name: &FullName,
) -> Result<(), ServeError> {
    let mut subgroups = match reader.mode().await? {
        TrackReaderMode::Subgroups(s) => s,
        TrackReaderMode::Datagrams(d) => {
            return super::datagrams::ingest(relay, d, &producer, floor, name).await;
        }
        _ => {
            return Err(ServeError::NotImplemented(
                "only subgroup streams and object datagrams are relayed".into(),
            ))
        }
    };
    // One task per group stream (as many as the publisher may open streams); a group that
    // fails costs that group only, never the track.
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            next = subgroups.next() => match next? {
                Some(sg) if sg.group_id < floor => tracing::trace!(group = sg.group_id, "history group skipped"),
                Some(sg) => {
                    streams.spawn(ingest_subgroup(relay.clone(), sg, producer.clone(), name.clone()));
                }
                None => break,
            },
            Some(_) = streams.join_next() => {}
        }
    }
    while streams.join_next().await.is_some() {}
    Ok(())
}

/// Copies one subgroup stream into the track: whole, or (stream reset, malformed object, over
/// budget) aborted, which drops its whole group for every subscriber and keeps the track.
async fn ingest_subgroup(
    relay: Relay,
    sg: SubgroupReader,
    producer: Arc<TrackProducer>,
    name: FullName,
) {
    let (group, subgroup) = (sg.group_id, sg.subgroup_id);
    match copy_subgroup(&relay, sg, &producer, &name).await {
        Ok(true) => producer.finish_subgroup(group, subgroup),
        Ok(false) => tracing::trace!(group, "stale group ignored"),
        Err(e) => {
            producer.abort_group(group);
            relay.metrics().groups_aborted.inc();
            tracing::debug!(track = %name.1, group, error = %e, "group aborted");
        }
    }
    relay
        .metrics()
        .cache_bytes
        .set(relay.inner.cache.used() as i64);
}

/// True if the group was copied whole, false if it was stale (older than the retained ones).
async fn copy_subgroup(
    relay: &Relay,
    mut sg: SubgroupReader,
    producer: &TrackProducer,
    name: &FullName,
) -> Result<bool, ServeError> {
    let (group, subgroup) = (sg.group_id, sg.subgroup_id);
    if subgroup == crate::core::track::DATAGRAMS {
        return Err(ServeError::Internal(
            "subgroup id 2^64-1 is the relay's own mark for datagrams".into(),
        ));
    }
    if !producer.begin(group) {
        return Ok(false);
    }
    let max = relay.inner.limits.max_object_bytes;
    // A mute holds audio back at once (every audio object decodes alone) and video or screen
    // from the next group on: a group that started unmuted is relayed whole, so no
    // subscriber is left with half a GOP, and one that started muted is not relayed at all.
    // A publisher that never starts a new group gets [`MUTE_GOP_GRACE`], then its group's
    // tail is dropped.
    let muted = |relay: &Relay| match (room_of(&name.0), name.0.get(2)) {
        (Some(room), Some(identity)) => relay.access().is_muted(room, identity, &name.1),
        _ => false,
    };
    let per_object = name.1 == "audio";
    let group_muted = !per_object && muted(relay);
    let mut muted_since: Option<Instant> = None;
    while let Some(mut obj) = sg.next().await? {
        match obj.status {
            ObjectStatus::NormalObject => {}
            ObjectStatus::EndOfGroup | ObjectStatus::EndOfTrack => break,
        }
        if obj.size > max {
            return Err(ServeError::Internal(format!(
                "object of {} bytes exceeds {max}",
                obj.size
            )));
        }
        // What is still arriving counts against the publisher's budget too.
        let mut arriving = producer.charge();
        let payload = read_object(&mut obj, arriving.as_mut()).await?;
        drop(arriving);
        let held_back = if per_object {
            muted(relay)
        } else if group_muted {
            true
        } else if muted(relay) {
            muted_since.get_or_insert_with(Instant::now).elapsed() > MUTE_GOP_GRACE
        } else {
            muted_since = None;
            false
        };
        if held_back {
            continue;
        }
        let extensions = raw_extensions(&obj.extension_headers)?;
        let size = payload.len() as u64;
        let object = Object {
            id: obj.object_id,
            subgroup,
            extensions,
            payload,
        };
        match producer.append_arrived(group, object, Some(std::time::Instant::now())) {
            Ok(true) => {
                relay.metrics().objects_in.inc();
                relay.metrics().bytes_in.inc_by(size);
            }
            Ok(false) => tracing::trace!(group, "stale object ignored"),
            Err(e) => return Err(ServeError::Internal(e.to_string())),
        }
    }
    Ok(true)
}

/// An object's extension headers as the raw bytes the relay keeps and forwards.
pub(super) fn raw_extensions(
    headers: &moq_transport::data::ExtensionHeaders,
) -> Result<Bytes, ServeError> {
    if headers.is_empty() {
        return Ok(Bytes::new());
    }
    let mut b = BytesMut::new();
    headers
        .encode(&mut b)
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    Ok(b.freeze())
}

/// Reads an object's payload as it arrives, charging each chunk to `charge`.
async fn read_object(
    obj: &mut serve::SubgroupObjectReader,
    mut charge: Option<&mut Charge>,
) -> Result<Bytes, ServeError> {
    let mut chunks: Vec<Bytes> = vec![];
    while let Some(chunk) = obj.read().await? {
        if let Some(c) = charge.as_mut() {
            c.add(chunk.len())
                .map_err(|e| ServeError::Internal(e.to_string()))?;
        }
        chunks.push(chunk);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.remove(0),
        _ => {
            let mut all = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for c in chunks {
                all.extend_from_slice(&c);
            }
            all.freeze()
        }
    })
}
