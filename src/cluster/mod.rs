//! Cluster mode: several relay nodes share PostgreSQL (durable data, through the same store)
//! and Redis (live, expiring state), and one room spans nodes.
//!
//! Redis holds, under `roomcast:`:
//! - `node:<id>`: each node's [`NodeInfo`] (URLs, region, certificate pin, load), written
//!   every second with a 3 s expiry, and `nodes`, a sorted set of node ids by expiry;
//! - `origin:<namespace>`: which node a participant's namespace is published on
//!   ([`origins`]), refreshed every 2 s with a 6 s expiry; a newer publication wins.
//!
//! Media between nodes travels over MoQ itself: a node with a subscriber for a namespace whose
//! origin is another node opens one peer session to that node ([`peers`]) and subscribes
//! once per track; the relay's own fan-out does the rest. Peer sessions authenticate with a
//! credential signed with the cluster secret and may only read what the node's own sessions
//! publish, so media never travels on from a node that is not its origin (no loops).

pub mod bus;
pub mod nodes;
pub mod origins;
pub mod peers;
pub mod presence;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::auth::TokenIssuer;
use crate::relay::Relay;

/// Prefix of every key roomcast writes in Redis.
pub const PREFIX: &str = "roomcast:";

/// How long one Redis command may take before it counts as failed.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// Cluster settings (from `redis_url`, `node_id`, ... in the configuration).
#[derive(Clone)]
pub struct ClusterSettings {
    pub redis_url: String,
    pub node_id: String,
    pub region: String,
    /// Public raw QUIC URL; default from the QUIC listener.
    pub quic_url: Option<Url>,
    /// Public WebTransport URL; default from the WebTransport listener.
    pub webtransport_url: Option<Url>,
    /// Signs node credentials (never the token secret).
    pub secret: String,
}

impl std::fmt::Debug for ClusterSettings {
    // The Redis URL may hold a password, the secret is one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("node_id", &self.node_id)
            .field("region", &self.region)
            .field("quic_url", &self.quic_url)
            .field("webtransport_url", &self.webtransport_url)
            .finish_non_exhaustive()
    }
}

/// What a node tells the others (and placement tells clients) about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub region: String,
    pub quic_url: String,
    pub webtransport_url: String,
    /// Hex SHA-256 of the node's certificate: other nodes pin it.
    pub cert_sha256: String,
    /// Whether browsers pin `cert_sha256` (a self-signed certificate, as `/api/info` says)
    /// rather than verify the certificate against their CAs.
    #[serde(default)]
    pub cert_pin: bool,
    /// Sessions on the node.
    pub load: u64,
}

/// A running cluster membership. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ClusterSettings,
    redis: ConnectionManager,
    relay: Relay,
    peers: peers::Peers,
    /// This node's entry (its load and certificate change).
    me: std::sync::Mutex<NodeInfo>,
    certs: crate::transport::certs::Certificates,
    /// The event bus, once started.
    bus: std::sync::OnceLock<bus::Sender>,
    /// The live nodes' WebTransport origins as CSP sources (` https://host:port` each).
    web_origins: std::sync::Mutex<String>,
}

impl Cluster {
    /// Connects to Redis, registers this node and starts its heartbeat and origin claims;
    /// `me` is this node's entry with its URLs filled in. Fails if Redis does not answer.
    pub async fn start(
        settings: ClusterSettings,
        me: NodeInfo,
        certs: crate::transport::certs::Certificates,
        relay: Relay,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Cluster> {
        let client = redis::Client::open(settings.redis_url.as_str())
            .map_err(|e| anyhow::anyhow!("redis_url: {e}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_max_delay(Duration::from_secs(1));
        let redis = tokio::time::timeout(
            REDIS_TIMEOUT * 5,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| anyhow::anyhow!("Redis at redis_url does not answer"))?
        .map_err(|e| anyhow::anyhow!("Redis at redis_url: {e}"))?;
        let issuer = TokenIssuer::new(settings.secret.as_bytes());
        let cluster = Cluster {
            inner: Arc::new(Inner {
                peers: peers::Peers::new(settings.node_id.clone(), issuer.clone()),
                settings,
                redis,
                relay: relay.clone(),
                me: std::sync::Mutex::new(me),
                certs,
                bus: std::sync::OnceLock::new(),
                web_origins: std::sync::Mutex::new(String::new()),
            }),
        };
        // The first heartbeat before any session is accepted: placement may name this node.
        cluster.heartbeat().await?;
        relay.set_cluster(Arc::new(origins::Attach(cluster.clone())), issuer);
        tokio::spawn(nodes::beat(cluster.clone(), shutdown.clone()));
        tokio::spawn(origins::claim(cluster.clone(), shutdown.clone()));
        tokio::spawn(presence::publish(cluster.clone(), shutdown));
        Ok(cluster)
    }

    /// Starts the event bus: changes `live` is told of go to the other nodes, theirs are
    /// applied here.
    pub fn start_bus(
        &self,
        store: crate::store::Store,
        live: crate::api::live::Live,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let sender = bus::start(self, store, live.clone(), shutdown.clone())?;
        let _ = self.inner.bus.set(sender.clone());
        live.connect_bus(sender, self.clone());
        tokio::spawn(discovery(self.clone(), shutdown));
        Ok(())
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.settings.node_id
    }

    /// This node's region.
    pub fn region(&self) -> &str {
        &self.inner.settings.region
    }

    /// This node's entry as it was last written.
    pub fn me(&self) -> NodeInfo {
        self.inner
            .me
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether Redis answers a PING.
    pub async fn ping(&self) -> bool {
        redis::cmd("PING")
            .query_async::<String>(&mut self.redis())
            .await
            .is_ok()
    }

    fn redis(&self) -> ConnectionManager {
        self.inner.redis.clone()
    }

    fn relay(&self) -> &Relay {
        &self.inner.relay
    }
}

impl Cluster {
    /// Tells the other nodes (once the bus runs).
    fn tell(&self, change: bus::Change) {
        if let Some(bus) = self.inner.bus.get() {
            bus.send(change);
        }
    }
}

/// Discovery across nodes: when a member enters a room here, the room's namespaces published
/// on other nodes are read here too, so SUBSCRIBE_NAMESPACE lists them (new ones come by the
/// bus, `Change::Published`).
async fn discovery(cluster: Cluster, shutdown: CancellationToken) {
    use crate::relay::access::RelayEvent;
    use tokio::sync::broadcast::error::RecvError;
    let mut events = cluster.relay().access().events();
    loop {
        let room = tokio::select! {
            e = events.recv() => match e {
                Ok(RelayEvent::Joined { room, .. }) => room,
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let cluster = cluster.clone();
        tokio::spawn(async move { cluster.attach_room(&room).await });
    }
}

/// The Redis key `name` under [`PREFIX`].
fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
