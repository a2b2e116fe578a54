//! Which node each participant's namespace is published on (its origin), and reading a
//! namespace from its origin.
//!
//! `roomcast:origin:<namespace as JSON>` holds `"<node> <epoch_ms>"`: the node and when the
//! publication there started. Every node claims its own publications every
//! [`CLAIM_EVERY`] with a [`ORIGIN_TTL`] expiry (so after a Redis restart, or a node's death,
//! nothing stale outlives the TTL); a claim loses to a newer publication on another node, as a
//! newer session replaces an older one on one node.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::{key, Cluster};
use crate::core::namespace::SERVER_PARTICIPANT;
use crate::core::registry::NamespaceChange;
use crate::relay::remote::RemoteOrigins;

/// Between two claims of this node's publications.
pub const CLAIM_EVERY: Duration = Duration::from_secs(2);
/// How long a claim outlives the node that made it.
pub const ORIGIN_TTL: Duration = Duration::from_secs(6);
/// How often a remote publication checks that its origin is still the node it reads from.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// A remote publication nobody reads, in a room with no members on this node, is dropped
/// after this long.
const IDLE: Duration = Duration::from_secs(10);
/// A remote publication whose origin key is gone is dropped after this long (a Redis restart
/// empties the keys until the next claims).
const MISSING: Duration = Duration::from_secs(4);

/// Sets the claim of node ARGV[1] for a publication that started at epoch ARGV[2] (0: a new
/// one, which starts now by Redis's clock, so the nodes' clocks never decide), unless another
/// node holds a newer one (equal epochs: the greater node id). Returns the epoch, 0 if
/// superseded.
const CLAIM: &str = r"
local epoch = tonumber(ARGV[2])
if epoch == 0 then
  local t = redis.call('TIME')
  epoch = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, ' ', 1, true)
  if sep then
    local node = string.sub(cur, 1, sep - 1)
    local theirs = tonumber(string.sub(cur, sep + 1))
    if node ~= ARGV[1] and theirs and (theirs > epoch or (theirs == epoch and node > ARGV[1])) then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. epoch, 'PX', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[4], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return epoch
";

/// Deletes the key if it still holds ARGV[1], and the namespace ARGV[2] from the room's index.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('HDEL', KEYS[2], ARGV[2])
  return redis.call('DEL', KEYS[1])
end
return 0
";

fn origin_key(namespace: &[String]) -> String {
    key(&format!(
        "origin:{}",
        serde_json::to_string(namespace).unwrap_or_default()
    ))
}

/// The room's index of published namespaces (namespace JSON -> node), for discovery: expires
/// with the last claim in the room; entries are checked against the origin keys.
fn room_index_key(room: &str) -> String {
    key(&format!("roomns:{room}"))
}

/// Whether a namespace is a participant's (`room/<id>/<who>/...`, not the relay's own
/// `_server`, which every node produces for itself).
fn claimable(namespace: &[String]) -> bool {
    namespace.len() >= 3 && namespace[0] == "room" && namespace[2] != SERVER_PARTICIPANT
}

/// A namespace's claimed origin: (node, epoch).
fn parse(value: &str) -> Option<(String, u64)> {
    let (node, epoch) = value.split_once(' ')?;
    Some((node.to_owned(), epoch.parse().ok()?))
}

impl Cluster {
    /// The node `namespace` is published on now, if any.
    pub async fn origin_of(&self, namespace: &[String]) -> anyhow::Result<Option<String>> {
        let value: Option<String> = self.redis().get(origin_key(namespace)).await?;
        Ok(value.as_deref().and_then(parse).map(|(node, _)| node))
    }
}

/// Claims this node's publications: at once when one starts, again every [`CLAIM_EVERY`];
/// releases them when they end and when the node stops.
pub(super) async fn claim(cluster: Cluster, shutdown: CancellationToken) {
    let mut changes = cluster.relay().namespace_changes();
    // Each publication's epoch, by the generation it was taken for.
    let mut held: HashMap<Vec<String>, (u64, u64)> = HashMap::new();
    // One schedule, whatever the changes in between (they never put the claims off).
    let mut every = tokio::time::interval(CLAIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Which publications to claim now: all, or the one that just started.
        let only = tokio::select! {
            _ = every.tick() => None,
            change = changes.recv() => match change {
                Ok(NamespaceChange::Added(ns)) if claimable(&ns) => Some(ns),
                Ok(NamespaceChange::Added(_)) => continue,
                Ok(NamespaceChange::Removed(ns)) => {
                    if let Some((_, epoch)) = held.remove(&ns) {
                        release(&cluster, &ns, epoch).await;
                    }
                    continue;
                }
                Err(RecvError::Lagged(_)) => None,
                Err(RecvError::Closed) => return,
            },
            _ = shutdown.cancelled() => break,
        };
        let claimed = match only {
            Some(ns) => claim_one(&cluster, &mut held, ns).await,
            None => claim_all(&cluster, &mut held).await,
        };
        if let Err(e) = claimed {
            tracing::warn!(error = %e, "origin claims failed; retrying");
        }
    }
    for (ns, (_, epoch)) in held {
        release(&cluster, &ns, epoch).await;
    }
}

/// Claims the publication of `ns` that just started here (unless read from another node).
async fn claim_one(
    cluster: &Cluster,
    held: &mut HashMap<Vec<String>, (u64, u64)>,
    ns: Vec<String>,
) -> anyhow::Result<()> {
    let now = match cluster.relay().publication_here(&ns) {
        Some((generation, false)) => HashMap::from([(ns, generation)]),
        _ => return Ok(()),
    };
    claim_these(cluster, held, now).await
}

/// Claims every publication of this node, and releases those that ended unseen.
async fn claim_all(
    cluster: &Cluster,
    held: &mut HashMap<Vec<String>, (u64, u64)>,
) -> anyhow::Result<()> {
    let now: HashMap<Vec<String>, u64> = cluster
        .relay()
        .local_publications()
        .into_iter()
        .filter(|(ns, _)| claimable(ns))
        .collect();
    // Ended without a Removed seen (a lagging listener): release those.
    let gone: Vec<_> = held
        .keys()
        .filter(|ns| !now.contains_key(*ns))
        .cloned()
        .collect();
    for ns in gone {
        if let Some((_, epoch)) = held.remove(&ns) {
            release(cluster, &ns, epoch).await;
        }
    }
    claim_these(cluster, held, now).await
}

/// Most claims sent in one pipeline (each answered within the command timeout).
const CLAIMS_PER_PIPELINE: usize = 256;

async fn claim_these(
    cluster: &Cluster,
    held: &mut HashMap<Vec<String>, (u64, u64)>,
    now: HashMap<Vec<String>, u64>,
) -> anyhow::Result<()> {
    let now: Vec<(Vec<String>, u64)> = now.into_iter().collect();
    for chunk in now.chunks(CLAIMS_PER_PIPELINE) {
        let mut pipe = redis::pipe();
        for (ns, generation) in chunk {
            // The same publication keeps its epoch; a new one gets Redis's time.
            let epoch = match held.get(ns) {
                Some(&(g, epoch)) if g == *generation => epoch,
                _ => 0,
            };
            pipe.cmd("EVAL")
                .arg(CLAIM)
                .arg(2)
                .arg(origin_key(ns))
                .arg(room_index_key(&ns[1]))
                .arg(cluster.node_id())
                .arg(epoch)
                .arg(ORIGIN_TTL.as_millis() as u64)
                .arg(serde_json::to_string(ns).unwrap_or_default());
        }
        let results: Vec<u64> = pipe.query_async(&mut cluster.redis()).await?;
        for ((ns, generation), epoch) in chunk.iter().zip(results) {
            if epoch == 0 {
                // A newer publication on another node: this one is replaced, as on one node.
                tracing::info!(namespace = %crate::core::namespace::path_of(ns), "publisher replaced by a newer session on another node");
                held.remove(ns);
                cluster.relay().unpublish_remote(ns, *generation);
            } else {
                if held.insert(ns.clone(), (*generation, epoch)).is_none() {
                    cluster.tell(crate::cluster::bus::Change::Published {
                        namespace: ns.clone(),
                        node: cluster.node_id().to_owned(),
                    });
                }
            }
        }
    }
    Ok(())
}

async fn release(cluster: &Cluster, namespace: &[String], epoch: u64) {
    let value = format!("{} {epoch}", cluster.node_id());
    let released: Result<i64, _> = redis::cmd("EVAL")
        .arg(RELEASE)
        .arg(2)
        .arg(origin_key(namespace))
        .arg(room_index_key(&namespace[1]))
        .arg(value)
        .arg(serde_json::to_string(namespace).unwrap_or_default())
        .query_async(&mut cluster.redis())
        .await;
    match released {
        Ok(1) => cluster.tell(crate::cluster::bus::Change::Unpublished {
            namespace: namespace.to_vec(),
            node: cluster.node_id().to_owned(),
        }),
        Ok(_) => {}
        // The claim expires by itself within ORIGIN_TTL.
        Err(e) => tracing::debug!(error = %e, "origin release failed"),
    }
}

/// The relay's way to the cluster's origins.
pub(super) struct Attach(pub Cluster);

impl RemoteOrigins for Attach {
    fn attach(&self, namespace: Vec<String>) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        let cluster = self.0.clone();
        Box::pin(async move {
            match attach(&cluster, namespace).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::info!(error = %e, "remote namespace not reachable");
                    false
                }
            }
        })
    }
}

impl Cluster {
    /// Reads here every namespace published on other nodes in `room` (for discovery by this
    /// node's members).
    pub(super) async fn attach_room(&self, room: &str) {
        let index: Result<Vec<(String, String)>, _> = redis::cmd("HGETALL")
            .arg(room_index_key(room))
            .query_async(&mut self.redis())
            .await;
        let Ok(index) = index else { return };
        for (ns, node) in index.into_iter().take(MAX_ROOM_INDEX) {
            if node == self.node_id() {
                continue;
            }
            let Ok(ns) = serde_json::from_str::<Vec<String>>(&ns) else {
                continue;
            };
            if ns.get(1).map(String::as_str) != Some(room) {
                continue;
            }
            if let Err(e) = attach(self, ns).await {
                tracing::debug!(error = %e, "remote namespace not attached");
            }
        }
    }

    /// Reads `namespace` here from `node`, its new origin, if this node has members in its
    /// room (who discover it).
    pub(super) async fn attach_published(&self, namespace: Vec<String>, node: &str) {
        let present = namespace
            .get(1)
            .is_some_and(|room| self.relay().access().session_count(room) > 0);
        if present && node != self.node_id() {
            if let Err(e) = attach(self, namespace).await {
                tracing::debug!(error = %e, "remote namespace not attached");
            }
        }
    }
}

impl Cluster {
    /// Drops the remote publication of `namespace` if it was read from `node` and no other
    /// node claimed it since.
    pub(super) async fn detach(&self, namespace: &[String], node: &str) {
        let relay = self.relay();
        let Some((generation, true)) = relay.publication_here(namespace) else {
            return;
        };
        match self.origin_of(namespace).await {
            Ok(Some(origin)) if origin != node => {}
            _ => relay.unpublish_remote(namespace, generation),
        }
    }
}

/// Most namespaces of one room read from the index at once.
const MAX_ROOM_INDEX: usize = 1024;

/// Publishes `namespace` here as read from its origin node, if another node is its origin.
async fn attach(cluster: &Cluster, namespace: Vec<String>) -> anyhow::Result<bool> {
    if !claimable(&namespace) {
        return Ok(false);
    }
    let Some(origin) = cluster.origin_of(&namespace).await? else {
        return Ok(false);
    };
    if origin == cluster.node_id() {
        return Ok(false);
    }
    let Some(node) = cluster.node(&origin).await? else {
        return Ok(false);
    };
    let peer = cluster.inner.peers.session(&node).await?;
    let Some(generation) = cluster
        .relay()
        .publish_remote(namespace.clone(), peer.subscriber.clone())
    else {
        // Published meanwhile (another subscriber's attach, or a session here).
        return Ok(true);
    };
    tracing::debug!(namespace = %crate::core::namespace::path_of(&namespace), origin, "reading a namespace from its origin");
    tokio::spawn(watch(cluster.clone(), namespace, generation, origin, peer));
    Ok(true)
}

/// Keeps a remote publication while its origin stays `origin`, its peer session lives and
/// somebody reads it.
async fn watch(
    cluster: Cluster,
    namespace: Vec<String>,
    generation: u64,
    origin: String,
    peer: Arc<crate::client::Client>,
) {
    let relay = cluster.relay().clone();
    let mut idle_since = None;
    let mut missing_since = None;
    let reason = loop {
        tokio::select! {
            _ = tokio::time::sleep(WATCH_EVERY) => {}
            _ = peer.closed() => break "peer session closed",
        }
        if relay.generation_of(&namespace) != Some(generation) {
            return;
        }
        let now = tokio::time::Instant::now();
        // Kept while read, or while this node has members in the room (they discover it).
        let members = relay.access().session_count(&namespace[1]) > 0;
        if relay.relayed_tracks(&namespace) == 0 && !members {
            if now.duration_since(*idle_since.get_or_insert(now)) >= IDLE {
                break "nobody reads it";
            }
        } else {
            idle_since = None;
        }
        match cluster.origin_of(&namespace).await {
            Ok(Some(node)) if node == origin => {
                missing_since = None;
                // Its node gone from the registry (dead for 3 s): nothing will come from it.
                if let Ok(None) = cluster.node(&origin).await {
                    break "origin node gone";
                }
            }
            Ok(Some(_)) => break "origin moved",
            Ok(None) => {
                if now.duration_since(*missing_since.get_or_insert(now)) >= MISSING {
                    break "origin gone";
                }
            }
            // Redis down: media already flowing keeps flowing.
            Err(_) => {}
        }
    };
    tracing::debug!(namespace = %crate::core::namespace::path_of(&namespace), reason, "remote namespace dropped");
    relay.unpublish_remote(&namespace, generation);
}
