//! Object datagrams (draft-18 §10.3): a track whose publisher sends its objects as QUIC
//! datagrams is relayed as datagrams. Each datagram is an object of its group, kept in the
//! core track as subgroup [`DATAGRAMS`], so late joiners, the cache and FETCH treat it like any
//! object; subscribers get each one as a datagram while its group is the newest (a datagram
//! of a superseded group is not worth sending), never as a stream.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use moq_transport::coding::{Decode, Encode};
use moq_transport::data::{self, DatagramType, ExtensionHeaders, ObjectStatus};
use moq_transport::serve::{DatagramsReader, ServeError};
use tokio::sync::watch;

use super::egress::{GroupEnd, SendError, Subscription, Wanted};
use super::Relay;
use crate::core::namespace::room_of;
use crate::core::registry::FullName;
use crate::core::track::{GroupNext, Object, SubgroupReader, TrackProducer, DATAGRAMS};

/// Copies a datagram track into `producer` until the publisher ends it. A datagram that
/// cannot be kept (out of order: datagrams may be reordered on the way; too large; from a
/// stale group) is dropped alone; a group ends with an end-of-group datagram or when a newer
/// group starts.
pub(super) async fn ingest(
    relay: &Relay,
    mut datagrams: DatagramsReader,
    producer: &Arc<TrackProducer>,
    floor: u64,
    name: &FullName,
) -> Result<(), ServeError> {
    let muted = |relay: &Relay| match (room_of(&name.0), name.0.get(2)) {
        (Some(room), Some(identity)) => relay.access().is_muted(room, identity, &name.1),
        _ => false,
    };
    let mut current: Option<u64> = None;
    while let Some(d) = datagrams.read().await? {
        let group = d.group_id;
        if group < floor {
            continue;
        }
        if current.is_some_and(|c| c < group) {
            // A newer group started: the previous one is complete.
            producer.finish_subgroup(current.unwrap_or_default(), DATAGRAMS);
        }
        current = current.max(Some(group));
        if d.status != ObjectStatus::NormalObject {
            if d.status == ObjectStatus::EndOfGroup {
                producer.finish_subgroup(group, DATAGRAMS);
            }
            continue;
        }
        // Every datagram decodes alone: a mute holds it back at once.
        if muted(relay) || !producer.begin(group) {
            continue;
        }
        let extensions = super::upstream::raw_extensions(&d.extension_headers)?;
        let size = d.payload.len() as u64;
        let object = Object {
            id: d.object_id,
            subgroup: DATAGRAMS,
            extensions,
            payload: d.payload,
        };
        match producer.append(group, object) {
            Ok(true) => {
                relay.metrics().objects_in.inc();
                relay.metrics().bytes_in.inc_by(size);
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(track = %name.1, group, error = %e, "datagram dropped"),
        }
        if d.end_of_group {
            producer.finish_subgroup(group, DATAGRAMS);
        }
    }
    Ok(())
}

/// Sends a group's datagrams to one subscriber while the group is the newest. Returns how it
/// ended (as a group stream would) and whether anything went out.
pub(super) async fn send(
    sub: &Subscription<'_>,
    mut reader: SubgroupReader,
    mut wanted: watch::Receiver<Wanted>,
    serial: u64,
) -> (Result<GroupEnd, SendError>, bool) {
    let mut sent = false;
    loop {
        let w = *wanted.borrow_and_update();
        if w.newest != serial || w.closing {
            return (Ok(GroupEnd::Delivered), sent);
        }
        match reader.step() {
            GroupNext::Object(o) => match send_one(sub, reader.id(), &o).await {
                Ok(()) => {
                    sent = true;
                    sub.metrics.objects_out.inc();
                    sub.metrics.bytes_out.inc_by(o.payload.len() as u64);
                }
                Err(e) => return (Err(e), sent),
            },
            GroupNext::Done => return (Ok(GroupEnd::Delivered), sent),
            GroupNext::Aborted => return (Ok(GroupEnd::Skipped), sent),
            GroupNext::Pending => {
                tokio::select! {
                    _ = reader.changed() => {}
                    _ = wanted.changed() => {}
                }
            }
        }
    }
}

/// Sends one object as an OBJECT_DATAGRAM. A datagram the path cannot take (too large, the
/// peer's buffer full) is lost alone, as datagrams are; only a session error ends anything.
async fn send_one(sub: &Subscription<'_>, group: u64, o: &Object) -> Result<(), SendError> {
    let extension_headers = if o.extensions.is_empty() {
        None
    } else {
        ExtensionHeaders::decode(&mut o.extensions.clone()).ok()
    };
    let datagram = data::Datagram {
        datagram_type: if extension_headers.is_some() {
            DatagramType::ObjectIdPayloadExt
        } else {
            DatagramType::ObjectIdPayload
        },
        track_alias: sub.alias,
        group_id: group,
        object_id: Some(o.id),
        // MoQ priority: lower is more important.
        publisher_priority: Some(255 - sub.priority.load(Ordering::Relaxed)),
        extension_headers,
        status: None,
        payload: Some(o.payload.clone()),
    };
    let mut buf = BytesMut::with_capacity(o.payload.len() + 32);
    datagram.encode(&mut buf)?;
    match sub.transport.send_datagram(buf.freeze()).await {
        Err(e) if e.session_error().is_some() => Err(SendError::Transport(e)),
        _ => Ok(()),
    }
}
