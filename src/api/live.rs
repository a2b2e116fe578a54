//! Live room state: the event log members read (presence, tracks, hands, moderation), the
//! raised-hand queue, and closing rooms that stayed empty past their timeout.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::auth::token::now_secs;
use crate::metrics::Metrics;
use crate::relay::access::RelayEvent;
use crate::relay::Relay;
use crate::store::Store;

/// Events kept per room for readers that poll.
pub const EVENT_LOG: usize = 512;

/// One room event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    pub seq: u64,
    pub at: u64,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub data: serde_json::Value,
}

#[derive(Default)]
struct RoomLive {
    events: VecDeque<Event>,
    next_seq: u64,
    hands: Vec<String>,
}

/// Shared live state of every open room.
#[derive(Clone, Default)]
pub struct Live {
    rooms: Arc<Mutex<HashMap<String, RoomLive>>>,
    metrics: Metrics,
}

impl Live {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            rooms: Arc::default(),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, RoomLive>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an event to an open room's log (opening it if needed).
    pub fn push(&self, room: &str, kind: &'static str, data: serde_json::Value) {
        let mut rooms = self.lock();
        let opened = !rooms.contains_key(room);
        let live = rooms.entry(room.to_owned()).or_default();
        let seq = live.next_seq;
        live.next_seq += 1;
        live.events.push_back(Event {
            seq,
            at: now_secs(),
            kind,
            data,
        });
        while live.events.len() > EVENT_LOG {
            live.events.pop_front();
        }
        let open = rooms.len();
        drop(rooms);
        if opened {
            self.metrics.rooms_open.set(open as i64);
        }
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
        let live = rooms.entry(room.to_owned()).or_default();
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

    /// Forgets a room's live state.
    pub fn close(&self, room: &str) {
        let mut rooms = self.lock();
        rooms.remove(room);
        let open = rooms.len();
        drop(rooms);
        self.metrics.rooms_open.set(open as i64);
    }
}

/// Turns relay events into room events and closes rooms left empty past their timeout.
pub async fn run(live: Live, relay: Relay, store: Store, shutdown: CancellationToken) {
    let mut events = relay.access().events();
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = shutdown.cancelled() => return,
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
                let timeout = match store.room(&room).await {
                    Ok(Some(r)) => Duration::from_secs(r.empty_timeout_secs.max(0) as u64),
                    _ => Duration::ZERO,
                };
                let (live, relay, shutdown) = (live.clone(), relay.clone(), shutdown.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(timeout) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    if relay.access().session_count(&room) == 0 {
                        tracing::info!(room = %room, "empty room closed");
                        live.push(
                            &room,
                            "room_closing",
                            serde_json::json!({"reason": "empty"}),
                        );
                        relay.close_room(&room, "room_closed: empty");
                        live.close(&room);
                    }
                });
            }
        }
    }
}
