//! Live room state: the event log members read (presence, tracks, hands, moderation, chat),
//! the raised-hand queue, and closing rooms that stayed empty past their timeout.
//!
//! Events are readable over HTTP and over the relay: each open room has a server-produced
//! track `room/<id>/_server/events`, one JSON object per event, a new group every
//! [`EVENTS_PER_GROUP`] events, so a member who subscribes gets the recent ones at once.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{delay_queue, DelayQueue};

use bytes::Bytes;

use crate::auth::token::now_secs;
use crate::core::track::{Object, TrackProducer};
use crate::metrics::Metrics;
use crate::relay::access::RelayEvent;
use crate::relay::Relay;
use crate::store::Store;
use crate::webhooks::{self, Webhooks};

/// Events kept per room for readers that poll.
pub const EVENT_LOG: usize = 512;
/// Events per group of the relay events track.
pub const EVENTS_PER_GROUP: u64 = 64;
/// Name of the events track in `room/<id>/_server`.
pub const EVENTS_TRACK: &str = "events";

/// One room event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    pub seq: u64,
    pub at: u64,
    #[serde(rename = "type")]
    pub kind: Cow<'static, str>,
    pub data: serde_json::Value,
}

struct RoomLive {
    events: VecDeque<Event>,
    next_seq: u64,
    hands: Vec<String>,
    track: TrackProducer,
    generation: u64,
}

/// Shared live state of every open room.
#[derive(Clone)]
pub struct Live {
    rooms: Arc<Mutex<HashMap<String, RoomLive>>>,
    metrics: Metrics,
    relay: Relay,
    /// Cluster mode: the other nodes, told of every event and live change made here.
    bus: Arc<std::sync::OnceLock<(crate::cluster::bus::Sender, crate::cluster::Cluster)>>,
    /// The application's endpoints, told of rooms opening and closing here and of the
    /// events of members here.
    hooks: Webhooks,
    /// The node stops ([`Live::finish_all`]): no room opens any more.
    stopped: Arc<AtomicBool>,
}

impl Live {
    pub fn new(metrics: Metrics, relay: Relay, hooks: Webhooks) -> Self {
        let live = Self {
            rooms: Arc::default(),
            metrics,
            relay,
            bus: Arc::default(),
            hooks,
            stopped: Arc::default(),
        };
        // A session that enters a room finds its events track there at once, also on a node
        // its member did not join through (no Arc cycle: the relay holds only a weak handle).
        let (rooms, metrics, hooks, stopped) = (
            Arc::downgrade(&live.rooms),
            live.metrics.clone(),
            live.hooks.clone(),
            live.stopped.clone(),
        );
        live.relay.on_enter(Box::new(move |relay, room| {
            let Some(rooms) = rooms.upgrade() else { return };
            let live = Live {
                rooms,
                metrics: metrics.clone(),
                relay: relay.clone(),
                bus: Arc::default(),
                hooks: hooks.clone(),
                stopped: stopped.clone(),
            };
            let mut rooms = live.lock();
            // Admitted: its token is newer than any closure of the room.
            if !rooms.contains_key(room) && !live.is_stopped() {
                live.open(&mut rooms, room);
                live.metrics.rooms_open.set(rooms.len() as i64);
            }
        }));
        live
    }

    fn open<'a>(&self, rooms: &'a mut HashMap<String, RoomLive>, room: &str) -> &'a mut RoomLive {
        rooms.entry(room.to_owned()).or_insert_with(|| {
            self.hooks
                .send(webhooks::kind::ROOM_STARTED, room, &serde_json::json!({}));
            let (track, generation) = self.relay.publish_local(room, EVENTS_TRACK);
            RoomLive {
                events: VecDeque::new(),
                next_seq: 0,
                hands: vec![],
                track,
                generation,
            }
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, RoomLive>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an event may open the room's live state: not once the room was closed (only
    /// a new join, [`Live::ensure_open`], or a session admitted since, opens it again; the
    /// session's `joined` may be handled before its entry opened the room).
    fn may_open(&self, rooms: &HashMap<String, RoomLive>, room: &str) -> bool {
        rooms.contains_key(room)
            || (!self.is_stopped()
                && (!self.relay.access().has_closure(room)
                    || self.relay.access().session_count(room) > 0))
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Appends an event to the room's log (opening it if needed, unless it was closed).
    /// Membership and track events also go to the webhooks (from the node they happen on).
    pub fn push(&self, room: &str, kind: &'static str, data: serde_json::Value) {
        let hook = match kind {
            "joined" => Some(webhooks::kind::PARTICIPANT_JOINED),
            "left" => Some(webhooks::kind::PARTICIPANT_LEFT),
            "track_published" => Some(webhooks::kind::TRACK_PUBLISHED),
            "track_unpublished" => Some(webhooks::kind::TRACK_UNPUBLISHED),
            _ => None,
        };
        self.tell(crate::cluster::bus::Change::Event {
            room: room.to_owned(),
            kind: kind.to_owned(),
            data: data.clone(),
        });
        self.append(room, Cow::Borrowed(kind), data, hook);
    }

    /// Cluster mode: every event pushed and live change made here from now on goes to the
    /// other nodes too (set once).
    pub fn connect_bus(&self, bus: crate::cluster::bus::Sender, cluster: crate::cluster::Cluster) {
        let _ = self.bus.set((bus, cluster));
    }

    /// Whether members are in `room` on another node of the cluster.
    pub async fn busy_elsewhere(&self, room: &str) -> bool {
        match self.bus.get() {
            Some((_, cluster)) => cluster.busy_elsewhere(room).await,
            None => false,
        }
    }

    /// Tells the other nodes of a live change made here (nothing outside cluster mode).
    pub fn tell(&self, change: crate::cluster::bus::Change) {
        if let Some((bus, _)) = self.bus.get() {
            bus.send(change);
        }
    }

    /// An event another node pushed: appended here, not forwarded. The raised-hand queue
    /// follows the hands raised and lowered there, so every node has the room's one queue.
    pub fn push_forwarded(&self, room: &str, kind: String, data: serde_json::Value) {
        if let Some(who) = data["identity"].as_str() {
            match kind.as_str() {
                "hand_raised" => {
                    self.set_hand(room, who, true);
                }
                "hand_lowered" | "left" => {
                    self.set_hand(room, who, false);
                }
                _ => {}
            }
        }
        self.append(room, Cow::Owned(kind), data, None);
    }

    /// Appends an event; `hook`, if given, goes to the webhooks under the same lock, so they
    /// get a room's events in the room's order (after `room_started`, if this opens it).
    fn append(
        &self,
        room: &str,
        kind: Cow<'static, str>,
        data: serde_json::Value,
        hook: Option<&'static str>,
    ) {
        let mut rooms = self.lock();
        // A leaving member or an ended publication never reopens a room (the members of a
        // room being closed leave after it closed): the application is still told.
        let ending = matches!(kind.as_ref(), "left" | "track_unpublished");
        if !self.may_open(&rooms, room) || (ending && !rooms.contains_key(room)) {
            if let Some(hook) = hook {
                self.hooks.send(hook, room, &data);
            }
            tracing::debug!(room, kind = %kind, "event for a closed room dropped");
            return;
        }
        let opened = !rooms.contains_key(room);
        let live = self.open(&mut rooms, room);
        let seq = live.next_seq;
        live.next_seq += 1;
        let event = Event {
            seq,
            at: now_secs(),
            kind,
            data,
        };
        let payload = serde_json::to_vec(&event).unwrap_or_default();
        let group = seq / EVENTS_PER_GROUP;
        let object = Object {
            subgroup: 0,
            id: seq % EVENTS_PER_GROUP,
            extensions: Bytes::new(),
            payload: Bytes::from(payload),
        };
        if let Err(e) = live.track.append(group, object) {
            tracing::warn!(room, error = %e, "event not relayed");
        }
        if object_is_last(seq) {
            live.track.finish_group(group);
        }
        if let Some(hook) = hook {
            self.hooks.send(hook, room, &event.data);
        }
        live.events.push_back(event);
        while live.events.len() > EVENT_LOG {
            live.events.pop_front();
        }
        let open = rooms.len();
        drop(rooms);
        if opened {
            self.metrics.rooms_open.set(open as i64);
        }
    }

    /// Opens the room's live state (and its relay events track) if it is not open, for a
    /// member who just joined. With nobody connected yet, the room's empty timer restarts and
    /// lasts at least [`JOIN_GRACE`], so the joiner can connect before it closes.
    pub fn ensure_open(&self, room: &str) {
        let mut rooms = self.lock();
        if !rooms.contains_key(room) && !self.is_stopped() {
            self.open(&mut rooms, room);
            self.metrics.rooms_open.set(rooms.len() as i64);
        }
        drop(rooms);
        if self.relay.access().session_count(room) == 0 {
            self.relay.access().emit(RelayEvent::AwaitingJoiner {
                room: room.to_owned(),
            });
        }
    }

    /// Sequence number the room's next event will get.
    pub fn next_seq(&self, room: &str) -> u64 {
        self.lock().get(room).map_or(0, |l| l.next_seq)
    }

    /// Events with `seq >= from`.
    pub fn events(&self, room: &str, from: u64) -> Vec<Event> {
        self.lock()
            .get(room)
            .map(|l| l.events.iter().filter(|e| e.seq >= from).cloned().collect())
            .unwrap_or_default()
    }

    pub fn is_open(&self, room: &str) -> bool {
        self.lock().contains_key(room)
    }

    /// Raises or lowers `who`'s hand; returns whether anything changed.
    pub fn set_hand(&self, room: &str, who: &str, raised: bool) -> bool {
        let mut rooms = self.lock();
        // Lowering a hand never opens a room (a member leaving a room that closed).
        if !self.may_open(&rooms, room) || (!raised && !rooms.contains_key(room)) {
            return false;
        }
        let live = self.open(&mut rooms, room);
        let present = live.hands.iter().any(|h| h == who);
        match (raised, present) {
            (true, false) => live.hands.push(who.to_owned()),
            (false, true) => live.hands.retain(|h| h != who),
            _ => return false,
        }
        true
    }

    /// The raised-hand queue, first raised first.
    pub fn hands(&self, room: &str) -> Vec<String> {
        self.lock()
            .get(room)
            .map(|l| l.hands.clone())
            .unwrap_or_default()
    }

    /// The node stops: every room open here is forgotten and the webhooks are told it
    /// finished (`reason` `node_stopped`); a session's leaving after this reopens none.
    pub fn finish_all(&self) {
        let mut rooms = self.lock();
        self.stopped.store(true, Ordering::Release);
        for room in rooms.keys() {
            self.hooks.send(
                webhooks::kind::ROOM_FINISHED,
                room,
                &serde_json::json!({"reason": "node_stopped"}),
            );
        }
        rooms.clear();
        drop(rooms);
        self.metrics.rooms_open.set(0);
    }

    /// Forgets a room's live state.
    pub fn close(&self, room: &str) {
        let mut rooms = self.lock();
        let closed = rooms.remove(room);
        if closed.is_some() {
            // Under the lock, as `room_started` is: a reopening comes after it.
            self.hooks
                .send(webhooks::kind::ROOM_FINISHED, room, &serde_json::json!({}));
        }
        let open = rooms.len();
        drop(rooms);
        if let Some(live) = closed {
            self.relay.unpublish_local(room, live.generation);
        }
        self.metrics.rooms_open.set(open as i64);
    }
}

fn object_is_last(seq: u64) -> bool {
    seq % EVENTS_PER_GROUP == EVENTS_PER_GROUP - 1
}

/// Turns relay events into room events and closes rooms left empty past their timeout: one
/// timer per room, started when its last session ends and cancelled when someone joins.
pub async fn run(live: Live, relay: Relay, store: Store, shutdown: CancellationToken) {
    let mut events = relay.access().events();
    let mut timers: DelayQueue<String> = DelayQueue::new();
    let mut keys: HashMap<String, delay_queue::Key> = HashMap::new();
    loop {
        let event = tokio::select! {
            // A stop first: events still queued then open no room (see `finish_all`).
            biased;
            _ = shutdown.cancelled() => return,
            e = events.recv() => e,
            Some(expired) = std::future::poll_fn(|cx| timers.poll_expired(cx)) => {
                let room = expired.into_inner();
                keys.remove(&room);
                if relay.access().session_count(&room) == 0 && live.busy_elsewhere(&room).await {
                    // Members on other nodes: look again after the room's timeout (at least
                    // a few seconds: the nodes write their presence every 2 s).
                    arm(&relay, &store, &mut timers, &mut keys, room, Duration::from_secs(5)).await;
                } else if relay.access().session_count(&room) == 0 {
                    tracing::info!(room = %room, "empty room closed");
                    live.push(&room, "room_closing", serde_json::json!({"reason": "empty"}));
                    if let Err(e) = super::closing::close_room(&relay, &store, &live, &room, "room_closed: empty", false).await {
                        tracing::warn!(room = %room, error = ?e, "room closure not stored");
                    }
                }
                continue;
            }
        };
        let event = match event {
            Ok(e) => e,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "room event feed lagged");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        match event {
            RelayEvent::Joined { room, identity } => {
                if let Some(key) = keys.remove(&room) {
                    timers.remove(&key);
                }
                live.push(&room, "joined", serde_json::json!({"identity": identity}))
            }
            RelayEvent::Left { room, identity } => {
                live.set_hand(&room, &identity, false);
                live.push(&room, "left", serde_json::json!({"identity": identity}))
            }
            RelayEvent::Published { room, identity } => live.push(
                &room,
                "track_published",
                serde_json::json!({"identity": identity}),
            ),
            RelayEvent::Unpublished { room, identity } => live.push(
                &room,
                "track_unpublished",
                serde_json::json!({"identity": identity}),
            ),
            RelayEvent::Empty { room } => {
                arm(&relay, &store, &mut timers, &mut keys, room, Duration::ZERO).await
            }
            RelayEvent::AwaitingJoiner { room } => {
                arm(&relay, &store, &mut timers, &mut keys, room, JOIN_GRACE).await
            }
        }
    }
}

/// How long a room someone joined waits for them to connect, at least, before it may close.
const JOIN_GRACE: Duration = Duration::from_secs(30);

/// Empty timeout of a room whose settings cannot be read.
const DEFAULT_EMPTY_TIMEOUT: Duration = Duration::from_secs(300);

/// Starts (or restarts) the room's one empty timer: its `empty_timeout_secs`, at least `floor`.
async fn arm(
    relay: &Relay,
    store: &Store,
    timers: &mut DelayQueue<String>,
    keys: &mut HashMap<String, delay_queue::Key>,
    room: String,
    floor: Duration,
) {
    let timeout = match store.room(&room).await {
        Ok(Some(r)) => Duration::from_secs(r.empty_timeout_secs.max(0) as u64),
        // A room the store does not know (tokens from `roomcast token` or an
        // application): it has no lifetime to manage here.
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(room = %room, error = %e, "room not read; default empty timeout");
            DEFAULT_EMPTY_TIMEOUT
        }
    }
    .max(floor);
    // A session may have started while the store answered.
    if relay.access().session_count(&room) > 0 {
        return;
    }
    match keys.get(&room) {
        Some(key) => timers.reset(key, timeout),
        None => {
            let key = timers.insert(room.clone(), timeout);
            keys.insert(room, key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> Live {
        let relay = Relay::new(
            crate::auth::TokenIssuer::new(b"a test secret that is long enough"),
            Metrics::default(),
            crate::config::Limits::default(),
            vec![],
            tokio_util::sync::CancellationToken::new(),
        );
        Live::new(Metrics::default(), relay, Webhooks::default())
    }

    #[tokio::test]
    async fn after_finish_all_no_event_reopens_a_room() {
        let live = live();
        live.ensure_open("r");
        assert!(live.is_open("r"));
        live.finish_all();
        assert!(!live.is_open("r"));
        // What a stop's closed sessions and late requests cause: none opens the room again.
        live.set_hand("r", "bob", false);
        live.push("r", "left", serde_json::json!({"identity": "bob"}));
        live.push("r", "joined", serde_json::json!({"identity": "carol"}));
        live.set_hand("r", "carol", true);
        live.ensure_open("r");
        assert!(!live.is_open("r"));
    }

    #[tokio::test]
    async fn lowering_a_hand_never_opens_a_room() {
        let live = live();
        assert!(!live.set_hand("r", "bob", false));
        assert!(!live.is_open("r"));
    }
}
