//! Namespaces whose publisher is on another node of a cluster, and the peer sessions other
//! nodes read this node's publishers through. The cluster (`crate::cluster`) implements
//! [`RemoteOrigins`]; the relay only asks it, so the relay knows nothing of Redis.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use moq_transport::session::Subscriber;
use serde::{Deserialize, Serialize};

use super::{Relay, Upstream};
use crate::auth::{AuthError, TokenIssuer};

/// Finds a namespace's origin on another node.
pub trait RemoteOrigins: Send + Sync + 'static {
    /// Makes `namespace`, which no session of this node publishes, readable here if another
    /// node is its origin (by [`Relay::publish_remote`]); true if it now is.
    fn attach(&self, namespace: Vec<String>) -> Pin<Box<dyn Future<Output = bool> + Send>>;
}

/// Told when a session enters a room.
pub type OnEnter = Box<dyn Fn(&Relay, &str) + Send + Sync>;

/// What a node's credential says (signed with the cluster secret, never the token secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerClaims {
    /// The node that connects.
    pub node: String,
    /// Always [`PEER_KIND`]: a credential is for node-to-node sessions only.
    pub kind: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
}

/// The kind of node credentials.
pub const PEER_KIND: &str = "roomcast-node";

impl PeerClaims {
    pub fn new(node: &str, lifetime: std::time::Duration) -> Self {
        let now = crate::auth::token::now_secs();
        Self {
            node: node.to_owned(),
            kind: PEER_KIND.to_owned(),
            iat: now,
            nbf: now,
            exp: now + lifetime.as_secs(),
        }
    }
}

impl Relay {
    /// Cluster mode: `origins` finds remote namespaces, `peers` verifies node credentials.
    /// Set once, before the listeners accept sessions.
    pub fn set_cluster(&self, origins: Arc<dyn RemoteOrigins>, peers: TokenIssuer) {
        let _ = self.inner.remote.set(origins);
        let _ = self.inner.peer_issuer.set(peers);
    }

    /// Calls `f` when a session enters a room (after its admission), before it can make a
    /// request: the room's live state opens in step with it. Set once.
    pub fn on_enter(&self, f: OnEnter) {
        let _ = self.inner.on_enter.set(f);
    }

    pub(crate) fn entered(&self, room: &str) {
        if let Some(f) = self.inner.on_enter.get() {
            f(self, room);
        }
    }

    /// The node a credential names, if it is one this cluster signed.
    pub(crate) fn verify_peer(&self, token: &str) -> Option<Result<String, AuthError>> {
        let issuer = self.inner.peer_issuer.get()?;
        Some(
            issuer
                .verify_as::<PeerClaims>(token)
                .and_then(|c| match c.kind == PEER_KIND {
                    true => Ok(c.node),
                    false => Err(AuthError::Malformed("not a node credential".into())),
                }),
        )
    }

    /// Asks the cluster for `namespace`'s origin elsewhere; false without a cluster.
    pub(crate) async fn attach_remote(&self, namespace: &[String]) -> bool {
        match self.inner.remote.get() {
            Some(origins) => origins.attach(namespace.to_vec()).await,
            None => false,
        }
    }

    /// Publishes `namespace` as read from another node through `subscriber` (a peer session),
    /// unless a publication of it exists. Returns its generation.
    pub fn publish_remote(&self, namespace: Vec<String>, subscriber: Subscriber) -> Option<u64> {
        let limits = self.inner.limits;
        let budget = self
            .inner
            .cache
            .child("session", limits.session_cache_bytes);
        let mut registry = self.registry();
        if registry.publication(&namespace).is_some() {
            return None;
        }
        let source = Upstream {
            subscriber,
            budget,
            remote: true,
        };
        let (generation, _) = registry.publish(namespace, Some(source));
        drop(registry);
        self.refresh_gauges();
        Some(generation)
    }

    /// Ends publication `generation` of `namespace`: one read from another node (its origin
    /// moved or went, or nobody reads it), or one of this node's that a newer publication on
    /// another node replaced.
    pub fn unpublish_remote(&self, namespace: &[String], generation: u64) {
        self.registry().unpublish(namespace, generation);
        self.refresh_gauges();
    }

    /// The generation of `namespace`'s publication here, if any.
    pub fn generation_of(&self, namespace: &[String]) -> Option<u64> {
        self.registry().generation_of(namespace)
    }

    /// Namespaces published and unpublished here, as they change.
    pub fn namespace_changes(
        &self,
    ) -> tokio::sync::broadcast::Receiver<crate::core::registry::NamespaceChange> {
        self.registry().changes()
    }

    /// Tracks relayed from `namespace` now.
    pub fn relayed_tracks(&self, namespace: &[String]) -> usize {
        self.registry().tracks_in(namespace)
    }

    /// Namespaces published on this node (by its sessions, or bridged by the relay itself),
    /// not read from another, with their generations: what this node is the origin of (the
    /// caller leaves out the relay's own `_server` namespaces).
    pub fn local_publications(&self) -> Vec<(Vec<String>, u64)> {
        self.registry()
            .publications_where(|s| s.as_ref().is_none_or(|u| !u.remote))
    }

    /// Whether the publication of `namespace` is read from another node.
    pub(crate) fn is_remote(&self, namespace: &[String]) -> bool {
        self.publication_here(namespace)
            .is_some_and(|(_, remote)| remote)
    }

    /// The generation of `namespace`'s publication here, and whether it is read from another
    /// node (one look at the registry for both).
    pub(crate) fn publication_here(&self, namespace: &[String]) -> Option<(u64, bool)> {
        self.registry()
            .publication(namespace)
            .map(|(g, s)| (g, s.is_some_and(|u| u.remote)))
    }
}
