//! Peer sessions: one raw QUIC MoQ session from this node to each other node it reads from,
//! authenticated with a credential signed with the cluster secret and pinned to the other
//! node's certificate as the node registry gives it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth::TokenIssuer;
use crate::client::{Client, Target};
use crate::relay::remote::PeerClaims;

use super::NodeInfo;

/// How long connecting to another node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A peer session with nothing heard for this long is closed.
const PEER_IDLE: Duration = Duration::from_secs(4);
/// Lifetime of a credential (checked when the session starts).
const CREDENTIAL_TTL: Duration = Duration::from_secs(60);

type Slot = Arc<tokio::sync::Mutex<Option<(String, Arc<Client>)>>>;

/// This node's sessions to the others, one per node.
pub struct Peers {
    node_id: String,
    issuer: TokenIssuer,
    /// By node id: the session and the certificate pin it was made with. Bounded by the
    /// number of nodes (entries are made only for nodes in the registry).
    slots: Mutex<HashMap<String, Slot>>,
}

impl Peers {
    pub fn new(node_id: String, issuer: TokenIssuer) -> Self {
        Self {
            node_id,
            issuer,
            slots: Mutex::default(),
        }
    }

    /// The session to `node`, connecting (once, however many ask at the same time) if there
    /// is none, it closed, or the node's certificate changed.
    pub async fn session(&self, node: &NodeInfo) -> anyhow::Result<Arc<Client>> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(node.id.clone())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some((pin, client)) = slot.as_ref() {
            if *pin == node.cert_sha256 && client.connection().close_reason().is_none() {
                return Ok(client.clone());
            }
        }
        let target = Target {
            url: node
                .quic_url
                .parse()
                .map_err(|e| anyhow::anyhow!("node {}: quic_url: {e}", node.id))?,
            cert_sha256: node.cert_sha256.clone(),
        };
        let credential = self
            .issuer
            .mint_as(&PeerClaims::new(&self.node_id, CREDENTIAL_TTL))?;
        // A node that dies unannounced is noticed within PEER_IDLE (keep-alives every second).
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(1)));
        transport.max_idle_timeout(PEER_IDLE.try_into().ok());
        let options = crate::client::Options {
            transport: Some(Arc::new(transport)),
            ..Default::default()
        };
        let client = tokio::time::timeout(
            CONNECT_TIMEOUT,
            crate::client::connect_with(&target, Some(&credential), &options),
        )
        .await
        .map_err(|_| anyhow::anyhow!("node {} does not answer", node.id))??;
        tracing::info!(node = %node.id, "peer session open");
        let client = Arc::new(client);
        *slot = Some((node.cert_sha256.clone(), client.clone()));
        Ok(client)
    }
}
