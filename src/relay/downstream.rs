//! The subscriber side: SUBSCRIBE, and the per-subscriber data plane.
//!
//! The crate answers the SUBSCRIBE (SUBSCRIBE_OK with track alias = request id) while serving
//! an empty track of its own; objects go out through [`send`], which reads a core cursor and
//! writes one subgroup stream per group, each group as soon as it starts, newest first. On a
//! narrow path an old group that is still in flight when a newer one has started is reset
//! after [`STALE_GROUP_DEADLINE`], so a subscriber converges on the live edge, loses only
//! whole groups' tails (never a middle, never out of order) and holds at most
//! [`MAX_GROUPS_IN_FLIGHT`] groups.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::buf::Chain;
use bytes::{Buf, Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use moq_transport::coding::Encode;
use moq_transport::data::{StreamHeaderType, SubgroupHeader, SubgroupIdMode};
use moq_transport::serve::{self, ServeError};
use moq_transport::session::transport::{SendStream, Session as MoqTransport};
use moq_transport::session::Subscribed;

use tokio::sync::watch;
use tokio::time::Instant;

use super::session::Request;
use super::upstream::{namespace_strings, start_track};
use super::{request_code, Relay};
use crate::auth::{Action, Scope};
use crate::core::namespace::path_of;
use crate::core::registry::{Acquire, FullName};
use crate::core::track::{GroupNext, GroupReader, NextGroup, Object, TrackCursor, TrackHandle};
use crate::metrics::Metrics;

/// Pause between the last group's acknowledgement and PUBLISH_DONE, so the subscriber has
/// handed the group to its application (PUBLISH_DONE's stream count is the crate's, 0).
const DONE_DELAY: Duration = Duration::from_millis(300);

/// How long to let the crate send PUBLISH_DONE after the track ended.
const DONE_GRACE: Duration = Duration::from_secs(2);

/// Send order for a track's newest group (higher is sent first): audio before everything
/// else, then chat and catalog, then video and screen. Older groups of a track drop 10 below
/// (see [`group_order`]), which keeps every class above the next; every data stream stays
/// below the control streams (see [`crate::transport::data_priority`]).
pub fn stream_priority(track: &str) -> u8 {
    match track {
        "audio" => 220,
        "catalog" | "chat" | "events" => 180,
        _ => 140,
    }
}

/// Handles one SUBSCRIBE until the subscriber leaves, the track ends, or the session's grants
/// (which `grant_changes` signals) no longer allow it: then PUBLISH_DONE UNAUTHORIZED at once.
pub async fn subscribe(
    relay: Relay,
    scope: Scope,
    sub: Subscribed,
    transport: MoqTransport,
    session: u64,
    grant_changes: watch::Receiver<u64>,
) -> Request {
    let (Some(ns), Ok(track)) = (
        namespace_strings(&sub.info.track_namespace),
        String::from_utf8(sub.info.track_name.as_bytes().to_vec()),
    ) else {
        relay.metrics().refused("malformed_name");
        let _ = sub.close(ServeError::Closed(request_code::MALFORMED));
        return Request::Subscription;
    };
    if let Err(denied) = relay.access().admit(&scope.claims) {
        relay.metrics().refused(denied.code());
        let _ = sub.close(ServeError::Closed(request_code::UNAUTHORIZED));
        return Request::Subscription;
    }
    if let Err(e) = relay.allows(&scope, Action::Subscribe, &ns) {
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
        e = disallowed(&relay, &scope, &name.0, grant_changes) => {
            relay.metrics().refused(e.code());
            tracing::info!(session, namespace = %path_of(&name.0), track = %name.1, code = e.code(), "subscription ended: grant revoked");
            // Dropping `send` resets the group streams in flight; PUBLISH_DONE follows.
            if let Ok(w) = keep_open {
                let _ = w.close(ServeError::Closed(request_code::UNAUTHORIZED));
            }
            let _ = tokio::time::timeout(DONE_GRACE, serve).await;
        }
    }
    relay.metrics().subscribers.dec();
    relay.registry().release_track(&name, &handle);
    relay.refresh_gauges();
    Request::Subscription
}

/// Resolves, with the reason, once a change of the session's grants disallows `ns`. A
/// revoked token (kick, ban) has no grants, so it ends every media subscription; the room's
/// events stay until the session closes, so the news of the removal still reaches it.
async fn disallowed(
    relay: &Relay,
    scope: &Scope,
    ns: &[String],
    mut changes: watch::Receiver<u64>,
) -> crate::auth::AuthError {
    loop {
        if changes.changed().await.is_err() {
            // The session is ending; its own teardown ends the subscription.
            return std::future::pending().await;
        }
        if let Err(e) = relay.allows(scope, Action::Subscribe, ns) {
            return e;
        }
    }
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

/// How long an older group may still be in flight (unwritten or unacknowledged) once a newer
/// group of the same track started; then its stream is reset so the subscriber converges on
/// the live edge instead of queueing behind the past.
pub const STALE_GROUP_DEADLINE: Duration = Duration::from_millis(500);

/// Groups of one subscription in flight at once; starting one more resets the oldest.
pub const MAX_GROUPS_IN_FLIGHT: usize = 4;

/// RESET_STREAM code for a group abandoned because a newer one superseded it.
const RESET_STALE: u32 = 0x1;

/// Which groups of a subscription are still wanted: the newest one's serial, and the serial
/// below which groups must stop at once (over [`MAX_GROUPS_IN_FLIGHT`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Wanted {
    newest: u64,
    cut_below: u64,
}

/// How one group stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupEnd {
    /// Every object written and acknowledged (or the group was empty).
    Delivered,
    /// Reset by us: superseded and past its deadline, or over the in-flight bound.
    Reset,
    /// The subscriber stopped the stream (STOP_SENDING); only this group is lost.
    Refused,
}

/// Writes the track to the subscriber, one stream per group, until the track closes.
///
/// Each group is sent by its own future as soon as it starts, at a higher QUIC priority than
/// older groups of the track, so the newest group never waits behind an old one; an older
/// group still in flight [`STALE_GROUP_DEADLINE`] after a newer one started is reset. A stream
/// the subscriber refuses costs that group only. Only a session error ends the subscription.
pub async fn send(
    mut cursor: TrackCursor,
    transport: &MoqTransport,
    alias: u64,
    priority: u8,
    metrics: &Metrics,
) -> Result<(), SendError> {
    let (wanted, _) = watch::channel(Wanted::default());
    let mut writers = FuturesUnordered::new();
    let mut in_flight: VecDeque<u64> = VecDeque::new();
    let mut serial = 0u64;
    loop {
        match cursor.next_group() {
            NextGroup::Group { reader, skipped } => {
                if skipped > 0 {
                    metrics.dropped_groups.inc_by(skipped);
                }
                serial += 1;
                in_flight.push_back(serial);
                let cut_below = if in_flight.len() > MAX_GROUPS_IN_FLIGHT {
                    in_flight[in_flight.len() - MAX_GROUPS_IN_FLIGHT]
                } else {
                    0
                };
                wanted.send_replace(Wanted {
                    newest: serial,
                    cut_below,
                });
                let rx = wanted.subscribe();
                writers.push(send_group(
                    transport, alias, priority, reader, rx, serial, metrics,
                ));
                continue;
            }
            NextGroup::Pending => {}
            NextGroup::Closed => break,
        }
        tokio::select! {
            _ = cursor.changed() => {}
            Some((serial, end)) = writers.next() => {
                in_flight.retain(|s| *s != serial);
                count(metrics, end?);
            }
        }
    }
    // The track ended: let the last groups land before PUBLISH_DONE follows on the control
    // stream, so the subscriber does not end the subscription under them.
    let drain = async {
        while let Some((_, end)) = writers.next().await {
            count(metrics, end?);
        }
        Ok::<_, SendError>(())
    };
    if let Ok(r) = tokio::time::timeout(DONE_GRACE, drain).await {
        r?;
        tokio::time::sleep(DONE_DELAY).await;
    }
    Ok(())
}

fn count(metrics: &Metrics, end: GroupEnd) {
    match end {
        GroupEnd::Delivered => {}
        GroupEnd::Reset => {
            metrics.groups_reset.inc();
        }
        GroupEnd::Refused => {
            metrics.groups_refused.inc();
        }
    }
}

/// The QUIC send order of a group: the newest group of a track goes first, older ones of the
/// same track after it, and every class keeps its place (audio, then chat and events, then
/// video) whatever the age.
fn group_order(priority: u8, newest: bool) -> u8 {
    if newest {
        priority
    } else {
        priority.saturating_sub(10)
    }
}

/// Sends one group on its own stream. Returns the group's serial and how it ended.
async fn send_group(
    transport: &MoqTransport,
    alias: u64,
    priority: u8,
    mut reader: GroupReader,
    mut wanted: watch::Receiver<Wanted>,
    serial: u64,
    metrics: &Metrics,
) -> (u64, Result<GroupEnd, SendError>) {
    (
        serial,
        group_stream(
            transport,
            alias,
            priority,
            &mut reader,
            &mut wanted,
            serial,
            metrics,
        )
        .await,
    )
}

async fn group_stream(
    transport: &MoqTransport,
    alias: u64,
    priority: u8,
    reader: &mut GroupReader,
    wanted: &mut watch::Receiver<Wanted>,
    serial: u64,
    metrics: &Metrics,
) -> Result<GroupEnd, SendError> {
    // The stream opens with the group's first object (the header says whether it is 0).
    let first = loop {
        match reader.step() {
            GroupNext::Object(o) => break o,
            GroupNext::Done => return Ok(GroupEnd::Delivered),
            GroupNext::Pending => {
                tokio::select! {
                    _ = reader.changed() => {}
                    _ = wanted.changed() => {
                        if wanted.borrow().newest != serial {
                            // Superseded before it had anything to send.
                            return Ok(GroupEnd::Reset);
                        }
                    }
                }
            }
        }
    };
    let mut stream = match open_group(transport, alias, reader.id(), &first, priority).await {
        Ok(s) => s,
        Err(e) => return refused_or(e),
    };
    let mut buf: Option<Chain<Bytes, Bytes>> = Some(encode_object(&mut stream, &first)?);
    let mut payload_len = first.payload.len();
    let mut deadline: Option<Instant> = None;
    let mut finished = false;
    loop {
        let w = *wanted.borrow_and_update();
        if serial < w.cut_below {
            stream.stream.reset(RESET_STALE);
            return Ok(GroupEnd::Reset);
        }
        if w.newest != serial && deadline.is_none() {
            stream.stream.set_priority(group_order(priority, false));
            deadline = Some(Instant::now() + STALE_GROUP_DEADLINE);
        }
        if buf.is_none() && !finished {
            match reader.step() {
                GroupNext::Object(o) => {
                    payload_len = o.payload.len();
                    buf = Some(encode_object(&mut stream, &o)?);
                }
                GroupNext::Done => {
                    // Finishing twice is harmless; an error means the peer stopped it.
                    let _ = stream.stream.finish();
                    finished = true;
                }
                GroupNext::Pending => {}
            }
        }
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                stream.stream.reset(RESET_STALE);
                return Ok(GroupEnd::Reset);
            }
            _ = wanted.changed() => {}
            r = progress(&mut stream.stream, &mut buf, finished) => match r {
                Progress::Wrote(Err(e)) => return refused_or(e),
                Progress::Wrote(Ok(())) => {
                    if buf.is_none() {
                        tracing::trace!(alias, group = stream.group, object = stream.last_object, "object sent");
                        metrics.objects_out.inc();
                        metrics.bytes_out.inc_by(payload_len as u64);
                    }
                }
                Progress::Closed(Ok(None)) => return Ok(GroupEnd::Delivered),
                Progress::Closed(Ok(Some(_))) => return Ok(GroupEnd::Refused),
                Progress::Closed(Err(e)) => return refused_or(e.into()),
            },
            _ = reader.changed(), if buf.is_none() && !finished => {}
        }
    }
}

/// What [`progress`] did.
enum Progress {
    Wrote(Result<(), SendError>),
    Closed(Result<Option<u8>, moq_transport::session::transport::Error>),
}

/// Writes some of `buf` (cleared once all is written); with nothing to write on a finished
/// stream, waits until the subscriber has it all (or stopped it). Otherwise pending forever.
async fn progress(
    stream: &mut SendStream,
    buf: &mut Option<Chain<Bytes, Bytes>>,
    finished: bool,
) -> Progress {
    match buf {
        Some(b) => {
            let r = stream.write_buf(b).await;
            if !b.has_remaining() {
                *buf = None;
            }
            Progress::Wrote(r.map(drop).map_err(SendError::from))
        }
        None if finished => Progress::Closed(stream.closed().await),
        None => std::future::pending().await,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// A stream-level error (the subscriber stopped or reset this stream) costs the group; any
/// other error ends the subscription.
fn refused_or(e: SendError) -> Result<GroupEnd, SendError> {
    match &e {
        SendError::Transport(t) if t.stream_error().is_some() && t.session_error().is_none() => {
            Ok(GroupEnd::Refused)
        }
        _ => Err(e),
    }
}

struct GroupStream {
    stream: SendStream,
    group: u64,
    last_object: u64,
}

async fn open_group(
    transport: &MoqTransport,
    alias: u64,
    group: u64,
    first: &Object,
    priority: u8,
) -> Result<GroupStream, SendError> {
    let mut stream = transport.open_uni().await?;
    stream.set_priority(group_order(priority, true));
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
    let mut buf = buf.freeze();
    while buf.has_remaining() {
        stream.write_buf(&mut buf).await?;
    }
    Ok(GroupStream {
        stream,
        group,
        last_object: first.id,
    })
}

/// The wire form of `object` on its group's stream: object id delta, extensions, length,
/// then the payload (shared, not copied).
fn encode_object(g: &mut GroupStream, object: &Object) -> Result<Chain<Bytes, Bytes>, SendError> {
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
    Ok(head.freeze().chain(object.payload.clone()))
}
