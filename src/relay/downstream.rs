//! The subscriber side: SUBSCRIBE, checked and answered, then served by [`super::egress`].
//!
//! The crate answers the SUBSCRIBE (SUBSCRIBE_OK with track alias = request id) while serving
//! an empty track of its own; objects go out through [`send`], which reads a core cursor and
//! writes a stream per subgroup of each group. REQUEST_UPDATEs steer it ([`Steer`]).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use moq_transport::coding::Location;
use moq_transport::message::{FilterType, SubscriptionFilter};
use moq_transport::serve::{self, ServeError};
use moq_transport::session::transport::Session as MoqTransport;
use moq_transport::session::{SubscribeInfo, Subscribed, SubscriptionUpdate, TrackStatusRequested};
use tokio::sync::watch;

use super::egress::{send, Finished, SendError, Steer};
use super::session::Request;
use super::upstream::start_track;
use super::{request_code, Relay};
use crate::auth::{Action, Scope};
use crate::core::namespace::path_of;
use crate::core::registry::{Acquire, FullName};
use crate::core::track::{TrackCursor, TrackHandle, Window};

/// PUBLISH_DONE status for a subscription whose filter reached its end group.
const PUBLISH_DONE_SUBSCRIPTION_ENDED: u64 = 0x3;
/// PUBLISH_DONE status for a subscription ended because the subscriber stopped taking data.
const PUBLISH_DONE_TOO_FAR_BEHIND: u64 = 0x5;

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
    // REQUEST_UPDATEs (forward, priority, filter) are taken from the start (one that came
    // while the track is being opened is applied then); each is answered with the largest
    // location the relay holds at that moment.
    let track = Arc::new(OnceLock::<TrackHandle>::new());
    let updates = {
        let track = track.clone();
        sub.updates(move || {
            track
                .get()?
                .largest()
                .map(|(group_id, object_id)| Location {
                    group_id,
                    object_id,
                })
        })
    };
    let name = match relay.readable_track(&scope, &sub.info.track_namespace, &sub.info.track_name) {
        Ok(name) => name,
        Err(r) => {
            relay.metrics().refused(r.label);
            tracing::info!(session, code = r.label, reason = %r.reason, "subscribe refused");
            let _ = sub.close(request_code::refusal(r.code, r.reason));
            return Request::Subscription;
        }
    };
    let (cursor, handle) = match open(&relay, &name, !scope.peer).await {
        Ok(pair) => pair,
        Err(e) => {
            relay.metrics().refused("does_not_exist");
            let _ = sub.close(e);
            return Request::Subscription;
        }
    };
    // Released however the subscription ends, also when the session's teardown aborts this
    // task (it used to skip the release: the gauge and the track's count drifted up).
    let held = Held::new(&relay, &name, handle);
    let _ = track.set(held.handle.clone());
    // SUBSCRIBE_OK tells where the track is now (the relay serves the crate an empty track:
    // its egress writes the groups itself); the filter is resolved against the same place.
    let largest = held.handle.largest();
    let cursor = match window(&sub.info, largest) {
        Ok(w) if w == Window::default() => cursor,
        Ok(w) => held.handle.cursor_in(w),
        Err(e) => {
            relay.metrics().refused("invalid_range");
            let _ = sub.close(e);
            return Request::Subscription;
        }
    };
    let largest = largest.map(|(group_id, object_id)| Location {
        group_id,
        object_id,
    });
    let forward = sub.info.forward;

    let alias = sub.info.id;
    let (writer, reader) = serve::Track::new(
        sub.info.track_namespace.clone(),
        sub.info.track_name.clone(),
    )
    .produce();
    let keep_open = writer.subgroups();
    let streams = sub.stream_counter();
    let class = stream_priority(&name.1);
    let (steer_tx, steer) = watch::channel(Steer {
        forward,
        priority: shifted(class, sub.info.subscriber_priority),
        retarget: None,
    });
    let serve = sub.serve_with_largest_location(reader, largest);
    tokio::pin!(serve);
    let delivery = async {
        tokio::select! {
            r = send(cursor, &transport, alias, steer, relay.metrics(), relay.inner.limits.write_timeout, streams) => r,
            never = steered(updates, steer_tx, class) => match never {},
        }
    };
    tokio::select! {
        r = &mut serve => tracing::debug!(session, result = ?r.err(), "subscription ended by subscriber"),
        r = delivery => {
            let status = match r {
                Ok(Finished::Range) => Some((
                    PUBLISH_DONE_SUBSCRIPTION_ENDED,
                    "subscription_ended: the filter's end group was delivered",
                )),
                Err(SendError::Stalled(after)) => {
                    relay.metrics().refused("too_far_behind");
                    tracing::info!(session, namespace = %path_of(&name.0), track = %name.1, ?after, "subscription ended: subscriber stalled");
                    Some((
                        PUBLISH_DONE_TOO_FAR_BEHIND,
                        "too_far_behind: the subscriber did not read for too long",
                    ))
                }
                Err(e) => {
                    tracing::debug!(session, error = %e, "subscriber stream failed");
                    None
                }
                Ok(Finished::Track) => None,
            };
            match (keep_open, status) {
                (Ok(w), Some((code, reason))) => {
                    let _ = w.close(request_code::refusal(code, reason));
                }
                (keep_open, _) => drop(keep_open),
            }
            let _ = tokio::time::timeout(DONE_GRACE, serve).await;
        }
        e = disallowed(&relay, &scope, &name.0, grant_changes) => {
            relay.metrics().refused(e.code());
            tracing::info!(session, namespace = %path_of(&name.0), track = %name.1, code = e.code(), "subscription ended: grant revoked");
            // Dropping `send` resets the group streams in flight; PUBLISH_DONE follows.
            if let Ok(w) = keep_open {
                let _ = w.close(request_code::refusal(
                    request_code::UNAUTHORIZED,
                    e.reason(),
                ));
            }
            let _ = tokio::time::timeout(DONE_GRACE, serve).await;
        }
    }
    Request::Subscription
}

/// Answers TRACK_STATUS as a SUBSCRIBE that sends nothing: the same checks and refusals,
/// then TRACK_STATUS_OK with the largest location known, after subscribing upstream if
/// nobody relays the track yet (so the answer is the publisher's).
pub async fn track_status(relay: Relay, scope: Scope, mut req: TrackStatusRequested) -> Request {
    let msg = &req.request_msg;
    let name = match relay.readable_track(&scope, &msg.track_namespace, &msg.track_name) {
        Ok(name) => name,
        Err(r) => {
            relay.metrics().refused(r.label);
            let _ = req.respond_error(r.code, &r.reason);
            return Request::Subscription;
        }
    };
    match open(&relay, &name, !scope.peer).await {
        Ok((_cursor, handle)) => {
            let held = Held::new(&relay, &name, handle);
            let largest = held.handle.largest().map(|(group_id, object_id)| Location {
                group_id,
                object_id,
            });
            drop(held);
            let _ = req.respond_ok_with_largest(largest);
        }
        Err(ServeError::Refused { code, reason }) => {
            relay.metrics().refused("does_not_exist");
            let _ = req.respond_error(code, &reason);
        }
        Err(ServeError::Timeout) => {
            let _ = req.respond_error(
                request_code::TIMEOUT,
                "timeout: the publisher did not answer in time",
            );
        }
        Err(e) => {
            let _ = req.respond_error(request_code::INTERNAL, &format!("internal: {e}"));
        }
    }
    Request::Subscription
}

/// The window a SUBSCRIBE's filter asks for, resolved against `largest`, the largest location
/// the relay holds (draft-18 §5.1.2), or INVALID_RANGE when it cannot be met. No filter: the
/// relay's live start (the newest group from its first object, so video starts at a
/// keyframe). Largest Object starts after the largest object, Next Group Start at the next
/// group, both at {0, 0} on a track with nothing yet. The wire carries an AbsoluteRange's end
/// as a delta from the start group (the crate names the field `end_group_id`).
fn window(info: &SubscribeInfo, largest: Option<(u64, u64)>) -> Result<Window, ServeError> {
    let Some(filter) = &info.filter else {
        return Ok(Window::default());
    };
    let explicit = || {
        filter
            .start_location
            .map(|l| (l.group_id, l.object_id))
            .unwrap_or((0, 0))
    };
    let (start, end_group) = match filter.filter_type {
        FilterType::LargestObject => (
            largest.map_or((0, 0), |(g, o)| (g, o.saturating_add(1))),
            None,
        ),
        FilterType::NextGroupStart => (
            largest.map_or((0, 0), |(g, _)| (g.saturating_add(1), 0)),
            None,
        ),
        FilterType::AbsoluteStart => (explicit(), None),
        FilterType::AbsoluteRange => {
            let start = explicit();
            let delta = filter.end_group_id.unwrap_or(0);
            let Some(end) = start.0.checked_add(delta) else {
                return Err(request_code::refusal(
                    request_code::INVALID_RANGE,
                    "invalid_range: the end group is past 2^64 - 1",
                ));
            };
            if let Some((newest, _)) = largest.filter(|(g, _)| *g > end) {
                return Err(request_code::refusal(
                    request_code::INVALID_RANGE,
                    format!("invalid_range: group {end} ended before this request (the track is at group {newest}); FETCH is for the past"),
                ));
            }
            (start, Some(end))
        }
    };
    Ok(Window {
        start: Some(start),
        end_group,
    })
}

/// The send order of a subscription's newest group: its track's class
/// ([`stream_priority`]) shifted by at most 4 by the subscriber priority (0 is the most
/// urgent, 128 the default), so a subscriber orders its subscriptions within a class without
/// putting video above audio.
pub fn shifted(class: u8, subscriber_priority: u8) -> u8 {
    let shift = (128 - i16::from(subscriber_priority)) / 32;
    u8::try_from((i16::from(class) + shift).clamp(0, 255)).unwrap_or(class)
}

/// Turns the subscriber's merged REQUEST_UPDATEs into steering for the egress; never ends
/// (while the subscription lasts, updates may come).
async fn steered(
    mut updates: watch::Receiver<SubscriptionUpdate>,
    steer: watch::Sender<Steer>,
    class: u8,
) -> std::convert::Infallible {
    loop {
        if updates.changed().await.is_err() {
            return std::future::pending().await;
        }
        let u = updates.borrow_and_update().clone();
        steer.send_modify(|s| {
            if let Some(forward) = u.forward {
                s.forward = forward;
            }
            if let Some(p) = u.subscriber_priority {
                s.priority = shifted(class, p);
            }
            if let Some(f) = &u.filter {
                s.retarget = Some(retarget(f));
            }
        });
    }
}

/// The window ends a filter in a REQUEST_UPDATE moves to: an absolute start (later starts
/// only; see [`TrackCursor::retarget`]) and the end group, which Largest Object and Next
/// Group Start leave open.
fn retarget(filter: &SubscriptionFilter) -> Window {
    let start = filter
        .start_location
        .map(|l| (l.group_id, l.object_id))
        .unwrap_or((0, 0));
    let (start, end_group) = match filter.filter_type {
        FilterType::LargestObject | FilterType::NextGroupStart => (None, None),
        FilterType::AbsoluteStart => (Some(start), None),
        FilterType::AbsoluteRange => (
            Some(start),
            Some(start.0.saturating_add(filter.end_group_id.unwrap_or(0))),
        ),
    };
    Window { start, end_group }
}

/// One subscriber's hold on a relayed track, released on drop.
struct Held<'a> {
    relay: &'a Relay,
    name: &'a FullName,
    handle: TrackHandle,
}

impl<'a> Held<'a> {
    fn new(relay: &'a Relay, name: &'a FullName, handle: TrackHandle) -> Self {
        relay.metrics().subscribers.inc();
        relay.refresh_gauges();
        Self {
            relay,
            name,
            handle,
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.relay.metrics().subscribers.dec();
        self.relay.registry().release_track(self.name, &self.handle);
        self.relay.refresh_gauges();
    }
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

/// Clears a pending upstream subscription if its setup is abandoned (the subscriber left, the
/// publisher timed out or refused): the next subscriber then tries afresh instead of waiting.
struct PendingMark<'a> {
    relay: &'a Relay,
    name: &'a FullName,
    generation: u64,
}

impl PendingMark<'_> {
    /// The setup succeeded: the mark is cleared by [`crate::core::registry::Registry::insert_track`].
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for PendingMark<'_> {
    fn drop(&mut self) {
        self.relay
            .registry()
            .abort_pending(self.name, self.generation);
    }
}

/// A cursor on the relayed track, subscribing upstream if nobody relays it yet. Waiting for
/// another subscriber's upstream subscription, and the upstream subscription itself, take at
/// most `upstream_timeout` (then REQUEST_ERROR 0x2 TIMEOUT). With `attach`, a namespace no
/// session here publishes is looked for on the cluster's other nodes first.
async fn open(
    relay: &Relay,
    name: &FullName,
    attach: bool,
) -> Result<(TrackCursor, TrackHandle), ServeError> {
    let timeout = relay.inner.limits.upstream_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut attached = !attach;
    let acquired = loop {
        let acquired = relay.registry().acquire_track(name);
        let mut waiting = match acquired {
            Acquire::Pending(waiting) => waiting,
            Acquire::NoPublisher if !attached => {
                attached = true;
                let found = tokio::time::timeout_at(deadline, relay.attach_remote(&name.0));
                if found.await.unwrap_or(false) {
                    continue;
                }
                break Acquire::NoPublisher;
            }
            acquired => break acquired,
        };
        // Woken when the other setup ends, whichever way; then look again.
        if tokio::time::timeout_at(deadline, waiting.changed())
            .await
            .is_err()
        {
            return Err(ServeError::Timeout);
        }
    };
    // A node reads only this node's own publishers, also if the namespace became remote while
    // this request waited (one hop: media never travels on).
    if !attach && relay.is_remote(&name.0) {
        if let Acquire::Subscribe { generation, .. } = &acquired {
            relay.registry().abort_pending(name, *generation);
        }
        return Err(request_code::refusal(
            request_code::DOES_NOT_EXIST,
            format!(
                "does_not_exist: {} is not published on this node",
                path_of(&name.0)
            ),
        ));
    }
    match acquired {
        Acquire::Pending(_) => Err(ServeError::Timeout),
        Acquire::Existing(handle) => Ok((handle.cursor(), handle)),
        Acquire::NoPublisher => Err(request_code::refusal(
            request_code::DOES_NOT_EXIST,
            format!("does_not_exist: nobody publishes {}", path_of(&name.0)),
        )),
        Acquire::Subscribe {
            source: None,
            generation,
            ..
        } => {
            relay.registry().abort_pending(name, generation);
            Err(request_code::refusal(
                request_code::DOES_NOT_EXIST,
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
            let mark = PendingMark {
                relay,
                name,
                generation,
            };
            // A full allowance of its own: it may take over after waiting on another's.
            let started =
                tokio::time::timeout(timeout, start_track(relay, source, name, ended)).await;
            let (cursor, handle) = match started {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    relay.metrics().refused("upstream_timeout");
                    tracing::info!(namespace = %path_of(&name.0), track = %name.1, "publisher did not answer SUBSCRIBE in time");
                    return Err(ServeError::Timeout);
                }
            };
            mark.disarm();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriber_priority_orders_within_a_class_never_across() {
        let (audio, chat, video) = (
            stream_priority("audio"),
            stream_priority("chat"),
            stream_priority("video"),
        );
        assert_eq!(shifted(video, 128), video);
        assert!(shifted(video, 0) > shifted(video, 128));
        assert!(shifted(video, 128) > shifted(video, 255));
        // Older groups drop 10 below their newest: classes stay apart whatever the priorities.
        assert!(shifted(audio, 255).saturating_sub(10) > shifted(chat, 0));
        assert!(shifted(chat, 255).saturating_sub(10) > shifted(video, 0));
    }
}
