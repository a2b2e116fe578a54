//! A cluster of `roomcast serve` processes on loopback, with a real `redis-server` and
//! PostgreSQL of the test's own: what `tests/cluster.rs` and `tests/cluster_faults.rs` run.

use std::time::Duration;

use roomcast::auth::{Claims, Grant, Grants, TokenIssuer};
use roomcast::client::{self, Client};

use super::process::{serve, Child};
use super::services::{Postgres, Redis};

/// The token secret every node shares (tokens minted by one verify on all).
pub const TOKEN_SECRET: &str = "cluster-test-token-secret-0123456789abcdef";
/// The secret nodes authenticate to each other with.
pub const CLUSTER_SECRET: &str = "cluster-test-node-secret-0123456789abcdef";

/// Redis, PostgreSQL and a directory for the nodes' certificates and data.
pub struct Services {
    pub redis: Redis,
    pub pg: Postgres,
    dir: std::path::PathBuf,
}

impl Services {
    pub fn start() -> Self {
        let redis = Redis::start();
        let pg = Postgres::start();
        pg.create_db("cluster");
        let dir = std::env::temp_dir().join(format!("roomcast-cluster-{}", uuid::Uuid::new_v4()));
        Services { redis, pg, dir }
    }

    /// Starts node `id` of `region` as a process (one after the other: the first runs the
    /// migrations).
    pub async fn node(&self, id: &str, region: &str) -> Child {
        self.node_with(id, region, &[]).await
    }

    /// [`Services::node`] with more flags.
    pub async fn node_with(&self, id: &str, region: &str, extra: &[&str]) -> Child {
        let (redis, database) = (self.redis.url(), self.pg.url("cluster"));
        let mut args = vec![
            "--redis-url",
            &redis,
            "--database-url",
            &database,
            "--node-id",
            id,
            "--node-region",
            region,
            "--cluster-secret",
            CLUSTER_SECRET,
            "--token-secret",
            TOKEN_SECRET,
        ];
        args.extend_from_slice(extra);
        serve(&self.dir.join(id), &args).await
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A media token for `who` in `room`, valid on every node.
pub fn token(room: &str, who: &str, grants: &[Grant]) -> String {
    TokenIssuer::new(TOKEN_SECRET.as_bytes())
        .mint(&Claims::new(
            who,
            room,
            grants.iter().copied().collect::<Grants>(),
            Duration::from_secs(600),
        ))
        .unwrap()
}

/// A raw-QUIC session of `who` in `room` on `node`.
pub async fn client(node: &Child, room: &str, who: &str, grants: &[Grant]) -> Client {
    client::connect(&node.quic, Some(&token(room, who, grants)))
        .await
        .unwrap()
}
