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

use super::{key, now_ms, Cluster};
use crate::core::namespace::SERVER_PARTICIPANT;
use crate::core::registry::NamespaceChange;
use crate::relay::remote::RemoteOrigins;

/// Between two claims of this node's publications.
pub const CLAIM_EVERY: Duration = Duration::from_secs(2);
/// How long a claim outlives the node that made it.
pub const ORIGIN_TTL: Duration = Duration::from_secs(6);
/// How often a remote publication checks that its origin is still the node it reads from.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// A remote publication nobody reads is dropped after this long.
const IDLE: Duration = Duration::from_secs(10);
/// A remote publication whose origin key is gone is dropped after this long (a Redis restart
/// empties the keys until the next claims).
const MISSING: Duration = Duration::from_secs(4);

/// Sets the claim unless another node holds a newer one. 1 if set, 0 if superseded.
const CLAIM: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, ' ', 1, true)
  if sep then
    local node = string.sub(cur, 1, sep - 1)
    local epoch = tonumber(string.sub(cur, sep + 1))
    if node ~= ARGV[1] and epoch and epoch > tonumber(ARGV[2]) then return 0 end
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3])
return 1
";

/// Deletes the key if it still holds ARGV[1].
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

fn origin_key(namespace: &[String]) -> String {
    key(&format!(
        "origin:{}",
        serde_json::to_string(namespace).unwrap_or_default()
    ))
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
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CLAIM_EVERY) => {}
            change = changes.recv() => match change {
                Ok(NamespaceChange::Added(ns)) if !claimable(&ns) => continue,
                Ok(NamespaceChange::Removed(ns)) => {
                    if let Some((_, epoch)) = held.remove(&ns) {
                        release(&cluster, &ns, epoch).await;
                    }
                    continue;
                }
                Ok(NamespaceChange::Added(_)) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            _ = shutdown.cancelled() => break,
        }
        if let Err(e) = claim_all(&cluster, &mut held).await {
            tracing::warn!(error = %e, "origin claims failed; retrying");
        }
    }
    for (ns, (_, epoch)) in held {
        release(&cluster, &ns, epoch).await;
    }
}

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
    if now.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    let mut order = Vec::with_capacity(now.len());
    for (ns, generation) in now {
        let epoch = match held.get(&ns) {
            Some(&(g, epoch)) if g == generation => epoch,
            _ => now_ms(),
        };
        held.insert(ns.clone(), (generation, epoch));
        pipe.cmd("EVAL")
            .arg(CLAIM)
            .arg(1)
            .arg(origin_key(&ns))
            .arg(cluster.node_id())
            .arg(epoch)
            .arg(ORIGIN_TTL.as_millis() as u64);
        order.push((ns, generation));
    }
    let results: Vec<i64> = pipe.query_async(&mut cluster.redis()).await?;
    for ((ns, generation), set) in order.into_iter().zip(results) {
        if set == 0 {
            // A newer publication on another node: this one is replaced, as on one node.
            tracing::info!(namespace = %crate::core::namespace::path_of(&ns), "publisher replaced by a newer session on another node");
            held.remove(&ns);
            cluster.relay().unpublish_remote(&ns, generation);
        }
    }
    Ok(())
}

async fn release(cluster: &Cluster, namespace: &[String], epoch: u64) {
    let value = format!("{} {epoch}", cluster.node_id());
    let released: Result<i64, _> = redis::cmd("EVAL")
        .arg(RELEASE)
        .arg(1)
        .arg(origin_key(namespace))
        .arg(value)
        .query_async(&mut cluster.redis())
        .await;
    if let Err(e) = released {
        // The claim expires by itself within ORIGIN_TTL.
        tracing::debug!(error = %e, "origin release failed");
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
        if relay.relayed_tracks(&namespace) == 0 {
            if now.duration_since(*idle_since.get_or_insert(now)) >= IDLE {
                break "nobody reads it";
            }
        } else {
            idle_since = None;
        }
        match cluster.origin_of(&namespace).await {
            Ok(Some(node)) if node == origin => missing_since = None,
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
