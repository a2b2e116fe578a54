//! The subscriber side: SUBSCRIBE, and the per-subscriber data plane.
//!
//! The crate answers the SUBSCRIBE (SUBSCRIBE_OK with track alias = request id) while serving
//! an empty track of its own; objects go out through [`send`], which reads a core cursor and
//! writes one subgroup stream per group. A subscriber that cannot keep up finishes the group
//! it is on and then jumps to the newest group, so it only ever loses whole groups and holds at
//! most one group in memory.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use moq_transport::coding::Encode;
use moq_transport::data::{StreamHeaderType, SubgroupHeader, SubgroupIdMode};
use moq_transport::serve::{self, ServeError};
use moq_transport::session::transport::{SendStream, Session as MoqTransport};
use moq_transport::session::Subscribed;

use super::session::Request;
use super::upstream::{namespace_strings, start_track};
use super::{request_code, Relay};
use crate::auth::{Action, Scope};
use crate::core::namespace::path_of;
use crate::core::registry::{Acquire, FullName};
use crate::core::track::{Next, Object, TrackCursor, TrackHandle};
use crate::metrics::Metrics;

/// Pause between the last group's acknowledgement and PUBLISH_DONE, so the subscriber has
/// handed the group to its application (PUBLISH_DONE's stream count is the crate's, 0).
const DONE_DELAY: Duration = Duration::from_millis(300);

/// How long to let the crate send PUBLISH_DONE after the track ended.
const DONE_GRACE: Duration = Duration::from_secs(2);

/// QUIC stream priority for a track (higher is sent first): audio before everything else,
/// then chat and catalog, then video and screen.
pub fn stream_priority(track: &str) -> u8 {
    match track {
        "audio" => 200,
        "catalog" | "chat" | "events" => 150,
        _ => 100,
    }
}

/// Handles one SUBSCRIBE until the subscriber leaves or the track ends.
pub async fn subscribe(
    relay: Relay,
    scope: Scope,
    sub: Subscribed,
    transport: MoqTransport,
    session: u64,
) -> Request {
    let (Some(ns), Ok(track)) = (
        namespace_strings(&sub.info.track_namespace),
        String::from_utf8(sub.info.track_name.as_bytes().to_vec()),
    ) else {
        relay.metrics().refused("malformed_name");
        let _ = sub.close(ServeError::Closed(request_code::MALFORMED));
        return Request::Subscription;
    };
    let grants = relay.access().grants(&scope.claims);
    if let Err(e) = scope.check(&grants, Action::Subscribe, &ns) {
        relay.metrics().refused(e.code());
        tracing::info!(session, namespace = %path_of(&ns), code = e.code(), reason = %e, "subscribe refused");
        let _ = sub.close(ServeError::Closed(request_code::UNAUTHORIZED));
        return Request::Subscription;
    }
    let name: FullName = (ns, track);
    let (cursor, handle) = match open(&relay, &name).await {
        Ok(pair) => pair,
        Err(e) => {
            relay.metrics().refused("does_not_exist");
            let _ = sub.close(e);
            return Request::Subscription;
        }
    };
    relay.metrics().subscribers.inc();
    relay.refresh_gauges();

    let alias = sub.info.id;
    let (writer, reader) = serve::Track::new(
        sub.info.track_namespace.clone(),
        sub.info.track_name.clone(),
    )
    .produce();
    let keep_open = writer.subgroups();
    let serve = sub.serve(reader);
    tokio::pin!(serve);
    let priority = stream_priority(&name.1);
    tokio::select! {
        r = &mut serve => tracing::debug!(session, result = ?r.err(), "subscription ended by subscriber"),
        r = send(cursor, &transport, alias, priority, relay.metrics()) => {
            if let Err(e) = r {
                tracing::debug!(session, error = %e, "subscriber stream failed");
            }
            drop(keep_open);
            let _ = tokio::time::timeout(DONE_GRACE, serve).await;
        }
    }
    relay.metrics().subscribers.dec();
    relay.registry().release_track(&name, &handle);
    relay.refresh_gauges();
    Request::Subscription
}

/// How long a subscriber waits for another one's upstream subscription to the same track.
const PENDING_WAIT: Duration = Duration::from_secs(5);

/// A cursor on the relayed track, subscribing upstream if nobody relays it yet.
async fn open(relay: &Relay, name: &FullName) -> Result<(TrackCursor, TrackHandle), ServeError> {
    let deadline = tokio::time::Instant::now() + PENDING_WAIT;
    let mut acquired = relay.registry().acquire_track(name);
    while matches!(acquired, Acquire::Pending) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        acquired = relay.registry().acquire_track(name);
    }
    match acquired {
        Acquire::Pending => Err(ServeError::Timeout),
        Acquire::Existing(handle) => Ok((handle.cursor(), handle)),
        Acquire::NoPublisher => Err(ServeError::not_found_full(
            "no publisher",
            format!("does_not_exist: nobody publishes {}", path_of(&name.0)),
        )),
        Acquire::Subscribe { source: None, .. } => {
            relay.registry().abort_pending(name);
            Err(ServeError::not_found_full(
                "no such server track",
                format!(
                    "does_not_exist: no track {} in {}",
                    name.1,
                    path_of(&name.0)
                ),
            ))
        }
        Acquire::Subscribe {
            source: Some(source),
            generation,
            ended,
        } => {
            let (cursor, handle) = match start_track(relay, source, name, ended).await {
                Ok(pair) => pair,
                Err(e) => {
                    relay.registry().abort_pending(name);
                    return Err(e);
                }
            };
            let inserted = relay
                .registry()
                .insert_track(name.clone(), generation, handle);
            match inserted {
                Ok(handle) => Ok((cursor, handle)),
                // Another subscriber won the race; ours lingers and ends unused.
                Err(existing) => Ok((existing.cursor(), existing)),
            }
        }
    }
}

/// Why sending to a subscriber stopped.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("transport: {0}")]
    Transport(#[from] moq_transport::session::transport::Error),
    #[error("encode: {0}")]
    Encode(#[from] moq_transport::coding::EncodeError),
}

struct GroupStream {
    stream: SendStream,
    group: u64,
    last_object: u64,
}

/// Writes the track to the subscriber, one stream per group, until the track closes.
pub async fn send(
    mut cursor: TrackCursor,
    transport: &MoqTransport,
    alias: u64,
    priority: u8,
    metrics: &Metrics,
) -> Result<(), SendError> {
    let mut current: Option<GroupStream> = None;
    loop {
        match cursor.step() {
            Next::Object {
                group,
                object,
                skipped,
            } => {
                if skipped > 0 {
                    metrics.dropped_groups.inc_by(skipped);
                }
                let g = match &mut current {
                    Some(g) if g.group == group => g,
                    _ => {
                        if let Some(mut old) = current.take() {
                            let _ = old.stream.finish();
                        }
                        current
                            .insert(open_group(transport, alias, group, &object, priority).await?)
                    }
                };
                write_object(g, &object).await?;
                tracing::trace!(alias, group, object = object.id, "object sent");
                metrics.objects_out.inc();
                metrics.bytes_out.inc_by(object.payload.len() as u64);
            }
            Next::GroupDone { .. } => {
                if let Some(mut g) = current.take() {
                    let _ = g.stream.finish();
                }
            }
            Next::Pending => cursor.changed().await,
            Next::Closed => {
                if let Some(mut g) = current.take() {
                    let _ = g.stream.finish();
                    // PUBLISH_DONE follows on the control stream; let the last group land
                    // first so the subscriber does not end the subscription under it.
                    let _ = tokio::time::timeout(DONE_GRACE, g.stream.closed()).await;
                    tokio::time::sleep(DONE_DELAY).await;
                }
                return Ok(());
            }
        }
    }
}

async fn open_group(
    transport: &MoqTransport,
    alias: u64,
    group: u64,
    first: &Object,
    priority: u8,
) -> Result<GroupStream, SendError> {
    let mut stream = transport.open_uni().await?;
    stream.set_priority(priority);
    let header = SubgroupHeader {
        header_type: StreamHeaderType::subgroup(
            SubgroupIdMode::Explicit,
            true,
            false,
            false,
            first.id == 0,
        ),
        track_alias: alias,
        group_id: group,
        subgroup_id: Some(0),
        // MoQ priority: lower is more important.
        publisher_priority: 255 - priority,
    };
    let mut buf = BytesMut::new();
    header.encode(&mut buf)?;
    write_all(&mut stream, buf.freeze()).await?;
    Ok(GroupStream {
        stream,
        group,
        last_object: first.id,
    })
}

async fn write_object(g: &mut GroupStream, object: &Object) -> Result<(), SendError> {
    let first = g.last_object == object.id;
    let delta = if first {
        object.id
    } else {
        object.id.saturating_sub(g.last_object + 1)
    };
    g.last_object = object.id;
    let mut head = BytesMut::with_capacity(24);
    delta.encode(&mut head)?;
    if object.extensions.is_empty() {
        0u64.encode(&mut head)?;
    } else {
        head.extend_from_slice(&object.extensions);
    }
    object.payload.len().encode(&mut head)?;
    if object.payload.is_empty() {
        // Status NORMAL: a genuine empty object.
        0u64.encode(&mut head)?;
    }
    write_all(&mut g.stream, head.freeze().chain(object.payload.clone())).await
}

async fn write_all<B: Buf>(stream: &mut SendStream, mut buf: B) -> Result<(), SendError> {
    while buf.has_remaining() {
        stream.write_buf(&mut buf).await?;
    }
    Ok(())
}
