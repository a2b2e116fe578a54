//! The node registry: each node writes its entry every second with a 3 s expiry, so a node
//! that dies drops out within 3 s; placement picks the least loaded live node.

use std::time::Duration;

use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use super::{key, now_ms, Cluster, NodeInfo};

/// Between two heartbeats.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long an entry outlives its last heartbeat.
pub const NODE_TTL: Duration = Duration::from_secs(3);
/// Most nodes a listing reads.
const MAX_NODES: isize = 1000;

impl Cluster {
    /// Writes this node's entry (with its load now) and its place in the node set.
    pub(super) async fn heartbeat(&self) -> anyhow::Result<()> {
        let me = {
            let mut me = self.inner.me.lock().unwrap_or_else(|e| e.into_inner());
            me.load = self.relay().session_count() as u64;
            // Renewed or replaced certificates are pinned by the others from the next beat.
            let facts = self.inner.certs.facts();
            (me.cert_sha256, me.cert_pin) = (facts.sha256, facts.pin);
            me.clone()
        };
        let expires = now_ms() + NODE_TTL.as_millis() as u64;
        let _: () = redis::pipe()
            .cmd("SET")
            .arg(key(&format!("node:{}", me.id)))
            .arg(serde_json::to_string(&me)?)
            .arg("PX")
            .arg(NODE_TTL.as_millis() as u64)
            .ignore()
            .cmd("ZADD")
            .arg(key("nodes"))
            .arg(expires)
            .arg(&me.id)
            .ignore()
            // Entries long expired leave the set (their keys are gone already).
            .cmd("ZREMRANGEBYSCORE")
            .arg(key("nodes"))
            .arg("-inf")
            .arg(now_ms().saturating_sub(60_000))
            .ignore()
            .query_async(&mut self.redis())
            .await?;
        // The other nodes' WebTransport origins, for the pages this node serves.
        self.nodes().await?;
        Ok(())
    }

    /// The live nodes (this one included), sorted by id: those whose entry has not expired
    /// (by Redis's clock; the set's scores only let entries long gone be cleaned up).
    pub async fn nodes(&self) -> anyhow::Result<Vec<NodeInfo>> {
        let mut redis = self.redis();
        let ids: Vec<String> = redis.zrange(key("nodes"), 0, MAX_NODES - 1).await?;
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let keys: Vec<String> = ids.iter().map(|id| key(&format!("node:{id}"))).collect();
        let entries: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut redis)
            .await?;
        let mut nodes: Vec<NodeInfo> = entries
            .into_iter()
            .flatten()
            .filter_map(|e| serde_json::from_str(&e).ok())
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        *self
            .inner
            .web_origins
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = web_origins(&nodes);
        Ok(nodes)
    }

    /// The WebTransport origins of the nodes last listed, as sources for a page's
    /// `connect-src` (` https://host:port` each): a page may connect to the node it is placed
    /// on. Kept fresh by every listing (the heartbeat lists the nodes each second).
    pub fn web_origins(&self) -> String {
        self.inner
            .web_origins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The live entry of node `id`.
    pub async fn node(&self, id: &str) -> anyhow::Result<Option<NodeInfo>> {
        let entry: Option<String> = self.redis().get(key(&format!("node:{id}"))).await?;
        Ok(entry.and_then(|e| serde_json::from_str(&e).ok()))
    }

    /// Where a client should connect: the least loaded live node in `region` (this node's
    /// region when none is asked), else the least loaded anywhere; this node when Redis does
    /// not answer.
    pub async fn place(&self, region: Option<&str>) -> NodeInfo {
        let nodes = match self.nodes().await {
            Ok(nodes) if !nodes.is_empty() => nodes,
            Ok(_) => return self.me(),
            Err(e) => {
                tracing::warn!(error = %e, "placement without Redis: this node");
                return self.me();
            }
        };
        pick(&nodes, region.unwrap_or(self.region())).unwrap_or_else(|| self.me())
    }
}

/// ` https://host:port` for each node's WebTransport URL (https only, each once).
fn web_origins(nodes: &[NodeInfo]) -> String {
    let mut origins: Vec<String> = nodes
        .iter()
        .filter_map(|n| url::Url::parse(&n.webtransport_url).ok())
        .filter(|u| u.scheme() == "https")
        .map(|u| u.origin().ascii_serialization())
        .collect();
    origins.sort();
    origins.dedup();
    origins.iter().map(|o| format!(" {o}")).collect()
}

/// The least loaded of `nodes` in `region`, else of all (ties to the lowest id).
pub fn pick(nodes: &[NodeInfo], region: &str) -> Option<NodeInfo> {
    let least = |it: &mut dyn Iterator<Item = &NodeInfo>| {
        it.min_by(|a, b| a.load.cmp(&b.load).then_with(|| a.id.cmp(&b.id)))
            .cloned()
    };
    least(&mut nodes.iter().filter(|n| n.region == region)).or_else(|| least(&mut nodes.iter()))
}

/// Writes the heartbeat every [`HEARTBEAT`] until `shutdown`, then removes the entry.
pub(super) async fn beat(cluster: Cluster, shutdown: CancellationToken) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = shutdown.cancelled() => break,
        }
        match cluster.heartbeat().await {
            Ok(()) if failing => {
                tracing::info!("Redis answers again: node registered");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %e, "node heartbeat failed; retrying every second");
                failing = true;
            }
            Err(_) => {}
        }
    }
    // Leaving: other nodes stop placing clients here at once.
    let id = cluster.node_id().to_owned();
    let mut redis = cluster.redis();
    let _: Result<(), _> = redis::pipe()
        .del(key(&format!("node:{id}")))
        .ignore()
        .zrem(key("nodes"), &id)
        .ignore()
        .query_async(&mut redis)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, region: &str, load: u64) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            region: region.into(),
            quic_url: String::new(),
            webtransport_url: String::new(),
            cert_sha256: String::new(),
            cert_pin: false,
            load,
        }
    }

    #[test]
    fn pages_may_connect_to_every_nodes_webtransport_origin_only() {
        let mut nodes = vec![node("a", "eu", 0), node("b", "eu", 0), node("c", "us", 0)];
        nodes[0].webtransport_url = "https://a.example:4433/".into();
        nodes[1].webtransport_url = "https://a.example:4433/x".into();
        nodes[2].webtransport_url = "http://c.example/".into();
        assert_eq!(web_origins(&nodes), " https://a.example:4433");
        nodes[2].webtransport_url = "https://c.example:443/".into();
        assert_eq!(
            web_origins(&nodes),
            " https://a.example:4433 https://c.example"
        );
    }

    #[test]
    fn placement_prefers_the_region_then_the_least_loaded() {
        let nodes = [
            node("a", "eu", 5),
            node("b", "eu", 2),
            node("c", "us", 0),
            node("d", "eu", 2),
        ];
        assert_eq!(pick(&nodes, "eu").unwrap().id, "b");
        assert_eq!(pick(&nodes, "us").unwrap().id, "c");
        // No node in the region: the least loaded anywhere.
        assert_eq!(pick(&nodes, "ap").unwrap().id, "c");
        assert_eq!(pick(&[], "eu"), None);
    }
}
