//! Who is present in each room on each node: `roomcast:presence:<room>:<node>` holds the
//! identities with a session there (JSON), written every [`REFRESH`] with a [`TTL`] expiry.
//! A room is empty only when it is empty on every live node, and full when the nodes
//! together hold its maximum.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::{key, Cluster};
use crate::relay::access::RelayEvent;

/// Between two writes of this node's presence.
pub const REFRESH: Duration = Duration::from_secs(2);
/// How long a node's presence outlives its last write.
pub const TTL: Duration = Duration::from_secs(6);

fn presence_key(room: &str, node: &str) -> String {
    key(&format!("presence:{room}:{node}"))
}

impl Cluster {
    /// Identities present in `room` on the other live nodes.
    pub async fn present_elsewhere(&self, room: &str) -> anyhow::Result<Vec<String>> {
        let keys: Vec<String> = self
            .nodes()
            .await?
            .iter()
            .filter(|n| n.id != self.node_id())
            .map(|n| presence_key(room, &n.id))
            .collect();
        if keys.is_empty() {
            return Ok(vec![]);
        }
        let lists: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.redis())
            .await?;
        let present: BTreeSet<String> = lists
            .into_iter()
            .flatten()
            .filter_map(|l| serde_json::from_str::<Vec<String>>(&l).ok())
            .flatten()
            .collect();
        Ok(present.into_iter().collect())
    }

    /// Whether anyone is in `room` on another node; yes when Redis does not answer (a room
    /// is not closed on a guess).
    pub async fn busy_elsewhere(&self, room: &str) -> bool {
        match self.present_elsewhere(room).await {
            Ok(present) => !present.is_empty(),
            Err(e) => {
                tracing::warn!(room, error = %e, "presence elsewhere unknown; room kept open");
                true
            }
        }
    }
}

/// Writes this node's presence every [`REFRESH`], and at once when someone enters a room (so
/// another node about to close the room as empty sees them); a room that emptied here is
/// removed.
pub(super) async fn publish(cluster: Cluster, shutdown: CancellationToken) {
    let mut written: HashSet<String> = HashSet::new();
    let mut events = cluster.relay().access().events();
    let mut every = tokio::time::interval(REFRESH);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            e = events.recv() => match e {
                Ok(RelayEvent::Joined { .. }) | Err(RecvError::Lagged(_)) => {}
                Ok(_) => continue,
                Err(RecvError::Closed) => break,
            },
            _ = shutdown.cancelled() => break,
        }
        let rooms = cluster.relay().access().presence();
        let mut pipe = redis::pipe();
        for (room, who) in &rooms {
            pipe.cmd("SET")
                .arg(presence_key(room, cluster.node_id()))
                .arg(serde_json::to_string(who).unwrap_or_default())
                .arg("PX")
                .arg(TTL.as_millis() as u64)
                .ignore();
        }
        let emptied: Vec<String> = written
            .iter()
            .filter(|r| !rooms.contains_key(*r))
            .cloned()
            .collect();
        for room in &emptied {
            pipe.del(presence_key(room, cluster.node_id())).ignore();
        }
        if rooms.is_empty() && emptied.is_empty() {
            continue;
        }
        match pipe.query_async::<()>(&mut cluster.redis()).await {
            Ok(()) => written = rooms.into_keys().collect(),
            Err(e) => tracing::debug!(error = %e, "presence not written"),
        }
    }
    let mut pipe = redis::pipe();
    for room in &written {
        pipe.del(presence_key(room, cluster.node_id())).ignore();
    }
    let _ = pipe.query_async::<()>(&mut cluster.redis()).await;
}
