//! The room event bus between nodes: a Redis Stream (`roomcast:bus`, trimmed to about
//! [`STREAM_LEN`] entries) that carries every live change a node makes (moderation, token
//! revocations, room closures, room events such as presence and chat) to the other nodes,
//! which apply it to their own sessions at once.
//!
//! PostgreSQL stays the record: what the bus carries is already stored. A node that lost Redis
//! reloads the moderation state from the store when it reads the bus again, so a change it
//! missed still holds (events for members, presence and chat, missed meanwhile are not
//! replayed; chat history is in the store).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{key, Cluster};
use crate::api::live::Live;
use crate::auth::Grants;
use crate::relay::access::Closure;
use crate::relay::Relay;
use crate::store::Store;

/// About how many entries the stream keeps.
const STREAM_LEN: usize = 10_000;
/// Moderation changes queued for sending (room events have a queue of their own, so a flood
/// of events never pushes a ban out); past it they are dropped (logged), never blocking the
/// API.
const QUEUE: usize = 4096;
/// Entries sent in one round trip.
const SEND_BATCH: usize = 64;
/// Tries of a batch Redis refuses (then it is dropped, logged).
const SEND_TRIES: u32 = 3;
/// Entries read at once.
const BATCH: usize = 256;
/// How long one blocking read waits for entries.
const BLOCK: Duration = Duration::from_secs(2);
/// Most bytes of one entry accepted from the stream.
const MAX_ENTRY: usize = 256 * 1024;

/// One change, as it travels between nodes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// A grant override set (`Some`) or lifted (`None`).
    Grants {
        room: String,
        identity: String,
        grants: Option<Grants>,
    },
    Muted {
        room: String,
        identity: String,
        track: String,
        muted: bool,
    },
    Banned {
        room: String,
        identity: String,
    },
    Unbanned {
        room: String,
        identity: String,
    },
    /// Kicked or banned: these tokens are revoked, the identity's sessions in the room lose
    /// their grants at once and close with `reason` shortly after.
    Removed {
        room: String,
        identity: String,
        tokens: Vec<(String, u64)>,
        reason: String,
    },
    /// Tokens ended (a logout, a password change): their sessions close with `reason`.
    TokensEnded {
        tokens: Vec<(String, u64)>,
        reason: String,
    },
    RoomClosed {
        room: String,
        reason: String,
        at: u64,
        deleted: bool,
    },
    /// A participant's namespace was published on `node` (its origin now): nodes with members
    /// in the room read it at once, so their discovery lists it.
    Published {
        namespace: Vec<String>,
        node: String,
    },
    /// A participant's namespace stopped on `node`: nodes reading it from there drop it now
    /// (rather than when its claim is seen gone).
    Unpublished {
        namespace: Vec<String>,
        node: String,
    },
    /// A room event (presence, chat, hands, moderation notices) for the members.
    Event {
        room: String,
        kind: String,
        data: serde_json::Value,
    },
}

/// Sends changes to the other nodes.
#[derive(Clone)]
pub struct Sender {
    changes: mpsc::Sender<Change>,
    events: mpsc::Sender<Change>,
}

impl Sender {
    /// Queues `change` for the other nodes; never waits.
    pub fn send(&self, change: Change) {
        let event = matches!(change, Change::Event { .. });
        let queue = if event { &self.events } else { &self.changes };
        if queue.try_send(change).is_err() {
            if event {
                tracing::debug!("cluster bus: event queue full, event not forwarded");
            } else {
                tracing::warn!("cluster bus: change queue full; the other nodes get this change from the store when they reload");
            }
        }
    }
}

/// Starts the bus: a writer of this node's changes and a reader applying the others'.
pub(super) fn start(
    cluster: &Cluster,
    store: Store,
    live: Live,
    shutdown: CancellationToken,
) -> anyhow::Result<Sender> {
    let (changes, changes_rx) = mpsc::channel(QUEUE);
    let (events, events_rx) = mpsc::channel(QUEUE);
    // A connection of its own for the blocking reads (they would hold up the shared one).
    let client = redis::Client::open(cluster.inner.settings.redis_url.as_str())?;
    tokio::spawn(write(
        cluster.clone(),
        changes_rx,
        events_rx,
        shutdown.clone(),
    ));
    tokio::spawn(read(cluster.clone(), client, store, live, shutdown));
    Ok(Sender { changes, events })
}

/// Sends queued changes in batches, moderation first.
async fn write(
    cluster: Cluster,
    mut changes: mpsc::Receiver<Change>,
    mut events: mpsc::Receiver<Change>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            biased;
            c = changes.recv() => c,
            e = events.recv() => e,
            _ = shutdown.cancelled() => return,
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < SEND_BATCH {
            match changes.try_recv().or_else(|_| events.try_recv()) {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        for change in &batch {
            let Ok(json) = serde_json::to_string(change) else {
                continue;
            };
            pipe.cmd("XADD")
                .arg(key("bus"))
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_LEN)
                .arg("*")
                .arg("node")
                .arg(cluster.node_id())
                .arg("change")
                .arg(json)
                .ignore();
        }
        for attempt in 1..=SEND_TRIES {
            match pipe.query_async::<()>(&mut cluster.redis()).await {
                Ok(()) => break,
                Err(e) if attempt == SEND_TRIES => {
                    // Stored already: the other nodes get the moderation state when they
                    // reload from the store (after they lost Redis, or restart).
                    tracing::warn!(error = %e, changes = batch.len(), "cluster bus: changes not sent");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}

/// Stream entries as Redis sends them: (id, [(field, value)]).
type Items = Vec<(String, Vec<(String, Vec<u8>)>)>;
/// An XREAD answer: (stream, entries).
type Entries = Vec<(String, Items)>;

async fn read(
    cluster: Cluster,
    client: redis::Client,
    store: Store,
    live: Live,
    shutdown: CancellationToken,
) {
    // Where to read from: the stream's end when first connected (what happened before is
    // in the store, reloaded then), then each entry read.
    let mut last: Option<String> = None;
    let mut conn = None;
    // Entries may have been missed (Redis was out of reach, or this node just started):
    // reload from the store once connected.
    let mut gap = true;
    // A blocking read waits up to BLOCK for an answer (the crate's default is 500 ms).
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(BLOCK * 2));
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(mut c) => {
                    if last.is_none() {
                        match stream_end(&mut c).await {
                            Ok(end) => last = Some(end),
                            Err(e) => {
                                tracing::debug!(error = %e, "cluster bus: stream end unknown");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                continue;
                            }
                        }
                    }
                    if std::mem::take(&mut gap) {
                        // Whatever was missed holds from the store.
                        resync(cluster.relay(), &store).await;
                    }
                    conn.insert(c)
                }
                Err(e) => {
                    gap = true;
                    tracing::debug!(error = %e, "cluster bus: Redis not reachable");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            },
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(key("bus"))
            .arg(last.as_deref().unwrap_or("$"));
        let read = cmd.query_async::<Option<Entries>>(c);
        let entries = tokio::select! {
            r = tokio::time::timeout(BLOCK * 2, read) => r,
            _ = shutdown.cancelled() => return,
        };
        let entries = match entries {
            Ok(Ok(entries)) => entries.unwrap_or_default(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cluster bus: read failed; reconnecting");
                (conn, gap) = (None, true);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => {
                (conn, gap) = (None, true);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for (_, items) in entries {
            for (id, fields) in items {
                last = Some(id);
                let field = |name: &str| {
                    fields
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.as_slice())
                };
                if field("node") == Some(cluster.node_id().as_bytes()) {
                    continue;
                }
                let change = field("change")
                    .filter(|c| c.len() <= MAX_ENTRY)
                    .and_then(|c| serde_json::from_slice::<Change>(c).ok());
                match change {
                    Some(Change::Published { namespace, node }) => {
                        let cluster = cluster.clone();
                        tokio::spawn(async move {
                            cluster.attach_published(namespace, &node).await;
                        });
                    }
                    Some(Change::Unpublished { namespace, node }) => {
                        let cluster = cluster.clone();
                        tokio::spawn(async move { cluster.detach(&namespace, &node).await });
                    }
                    Some(change) => apply(cluster.relay(), &live, change),
                    None => tracing::warn!("cluster bus: entry not understood, skipped"),
                }
            }
        }
    }
}

/// The id of the stream's last entry (`0-0` when it is empty).
async fn stream_end(conn: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<String> {
    let last: Items = redis::cmd("XREVRANGE")
        .arg(key("bus"))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(last
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_owned(), |(id, _)| id))
}

/// Applies another node's change to this node's sessions.
pub fn apply(relay: &Relay, live: &Live, change: Change) {
    let access = relay.access();
    match change {
        Change::Grants {
            room,
            identity,
            grants,
        } => access.set_grants(&room, &identity, grants),
        Change::Muted {
            room,
            identity,
            track,
            muted,
        } => access.set_muted(&room, &identity, &track, muted),
        Change::Banned { room, identity } => {
            access.ban(&room, &identity);
            access.forget(&room, &identity);
        }
        Change::Unbanned { room, identity } => access.unban(&room, &identity),
        Change::Removed {
            room,
            identity,
            tokens,
            reason,
        } => {
            relay.remove_identity(&room, &identity, tokens, &reason);
        }
        Change::TokensEnded { tokens, reason } => {
            access.end_tokens(&tokens, &reason);
        }
        Change::RoomClosed {
            room,
            reason,
            at,
            deleted,
        } => {
            // The store's revocations follow as TokensEnded.
            // (A session of this node with a token of the closure's second is refused here
            // until a restart: known limit, docs/cluster.md.)
            relay.close_room(&room, &reason, Closure { at, deleted }, &[]);
            live.close(&room);
        }
        Change::Event { room, kind, data } => live.push_forwarded(&room, kind, data),
        // Needs the cluster: handled by the reader.
        Change::Published { .. } | Change::Unpublished { .. } => {}
    }
}

/// Reloads the moderation state from the store (after a gap in reading the bus).
pub async fn resync(relay: &Relay, store: &Store) {
    if let Err(e) = crate::server::load_moderation(relay, store).await {
        tracing::warn!(error = %e, "moderation state not reloaded from the store");
    } else {
        tracing::info!("cluster bus: moderation state reloaded from the store");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_travel_as_tagged_json() {
        let c = Change::Removed {
            room: "r".into(),
            identity: "bob".into(),
            tokens: vec![("j".into(), 9)],
            reason: "kicked: x".into(),
        };
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains("\"op\":\"removed\""), "{text}");
        assert_eq!(serde_json::from_str::<Change>(&text).unwrap(), c);
        assert!(serde_json::from_str::<Change>("{\"op\":\"format_disk\"}").is_err());
    }
}
