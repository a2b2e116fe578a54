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
/// Changes queued for sending; past it they are dropped (and counted in the log), never
/// blocking the API.
const QUEUE: usize = 4096;
/// Entries read at once.
const BATCH: usize = 256;
/// How long one blocking read waits for entries.
const BLOCK: Duration = Duration::from_secs(2);
/// Most bytes of one entry accepted from the stream.
const MAX_ENTRY: usize = 256 * 1024;
/// Grace before a removed participant's sessions close (as on the node that removed them).
const REMOVAL_GRACE: Duration = Duration::from_millis(500);

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
    tx: mpsc::Sender<Change>,
}

impl Sender {
    /// Queues `change` for the other nodes; never waits.
    pub fn send(&self, change: Change) {
        if self.tx.try_send(change).is_err() {
            tracing::warn!(
                "cluster bus queue full: a change reaches other nodes only from the store"
            );
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
    let (tx, rx) = mpsc::channel(QUEUE);
    // A connection of its own for the blocking reads (they would hold up the shared one).
    let client = redis::Client::open(cluster.inner.settings.redis_url.as_str())?;
    tokio::spawn(write(cluster.clone(), rx, shutdown.clone()));
    tokio::spawn(read(cluster.clone(), client, store, live, shutdown));
    Ok(Sender { tx })
}

async fn write(cluster: Cluster, mut rx: mpsc::Receiver<Change>, shutdown: CancellationToken) {
    loop {
        let change = tokio::select! {
            c = rx.recv() => match c { Some(c) => c, None => return },
            _ = shutdown.cancelled() => return,
        };
        let Ok(json) = serde_json::to_string(&change) else {
            continue;
        };
        let sent: Result<String, _> = redis::cmd("XADD")
            .arg(key("bus"))
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_LEN)
            .arg("*")
            .arg("node")
            .arg(cluster.node_id())
            .arg("change")
            .arg(json)
            .query_async(&mut cluster.redis())
            .await;
        if let Err(e) = sent {
            // Stored already: the other nodes pick it up when they reload from the store.
            tracing::warn!(error = %e, "cluster bus: change not sent");
        }
    }
}

type Entries = Vec<(String, Vec<(String, Vec<(String, Vec<u8>)>)>)>;

async fn read(
    cluster: Cluster,
    client: redis::Client,
    store: Store,
    live: Live,
    shutdown: CancellationToken,
) {
    // New entries only: what happened before this node started is in the store.
    let mut last = "$".to_owned();
    let mut conn = None;
    // Entries may have been missed (Redis was out of reach): reload from the store.
    let mut gap = false;
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
                Ok(c) => {
                    if std::mem::take(&mut gap) {
                        // Back after a gap: whatever was missed holds from the store.
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
            .arg(&last);
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
                continue;
            }
            Err(_) => {
                (conn, gap) = (None, true);
                continue;
            }
        };
        for (_, items) in entries {
            for (id, fields) in items {
                last = id;
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
                    Some(change) => apply(cluster.relay(), &live, change),
                    None => tracing::warn!("cluster bus: entry not understood, skipped"),
                }
            }
        }
    }
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
            access.revoke(tokens);
            access.revoke_sessions(&room, &identity);
            let relay = relay.clone();
            tokio::spawn(async move {
                tokio::time::sleep(REMOVAL_GRACE).await;
                relay.access().close_sessions(&room, &identity, &reason);
            });
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
            relay.close_room(&room, &reason, Closure { at, deleted });
            live.close(&room);
        }
        Change::Event { room, kind, data } => live.push_forwarded(&room, kind, data),
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
