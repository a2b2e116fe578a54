//! Starting and stopping a whole relay: TLS, QUIC endpoints, HTTP, sessions.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::live::Live;
use crate::api::{self, ApiState, Info};
use crate::auth::{secret, TokenIssuer};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::relay::Relay;
use crate::store::Store;
use crate::transport::certs::{self, Certificates, Source};
use crate::transport::{quic, webtransport};

/// Pending accepted connections before SETUP; a bound on handshakes in flight.
const ACCEPT_QUEUE: usize = 256;

/// A running relay.
pub struct Server {
    pub webtransport_addr: SocketAddr,
    pub quic_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// UDP address of WHIP media.
    pub whip_addr: SocketAddr,
    /// SHA-256 of the certificate at start ([`Server::certs`] has the current one).
    pub cert_sha256: String,
    pub certs: Certificates,
    pub issuer: TokenIssuer,
    pub metrics: Metrics,
    pub relay: Relay,
    shutdown: CancellationToken,
    done: JoinHandle<()>,
    graceful: GracefulStop,
}

/// What stops a running server as an operator's signal asks (see [`GracefulStop::run`]).
#[derive(Clone)]
pub struct GracefulStop {
    readiness: api::ops::Started,
    relay: Relay,
    live: Live,
    shutdown: CancellationToken,
    delay: std::time::Duration,
    drain: std::time::Duration,
}

impl GracefulStop {
    /// `/ready` says `stopping` for `stop_delay_ms` while sessions still come in (a load
    /// balancer takes the node out), then every session gets GOAWAY and `drain_ms` to leave,
    /// then the webhooks hear that the rooms open here finished and everything stops.
    /// `interrupt` finishing (a second signal) cuts the delay and the drain short.
    pub async fn run(self, interrupt: impl std::future::Future<Output = ()>) {
        let stopping = async {
            if !self.delay.is_zero() {
                self.readiness.stopping();
                tracing::info!(delay = ?self.delay, "stopping: /ready answers 503 before the GOAWAY");
                tokio::time::sleep(self.delay).await;
            }
            tracing::info!(sessions = self.relay.session_count(), drain = ?self.drain, "stopping: GOAWAY to every session");
            self.relay.drain(self.drain).await;
        };
        tokio::select! {
            _ = stopping => {}
            _ = interrupt => {}
        }
        tracing::info!("shutting down");
        self.live.finish_all();
        self.shutdown.cancel();
    }
}

impl Server {
    /// Binds every listener and starts serving.
    pub async fn start(settings: Settings) -> anyhow::Result<Server> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let certs = Certificates::load(match &settings.tls {
            Some((cert, key)) => Source::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            None => Source::Dev(settings.cert_dir.clone()),
        })?;
        let secret = secret::load_or_create(settings.token_secret.as_deref(), &settings.data_dir)?;
        let store = match &settings.database_url {
            Some(url) => Store::connect_postgres(url, 16)
                .await
                .map_err(|e| anyhow::anyhow!("PostgreSQL store: {e}"))?,
            None => Store::open(&settings.data_dir).await?,
        };
        bootstrap_admin(
            &store,
            settings.admin_password.as_deref(),
            (settings.log_format == crate::config::LogFormat::Json).then_some(&settings.data_dir),
        )
        .await?;
        let issuer = TokenIssuer::new(&secret);
        let metrics = Metrics::default();
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();

        let tuning = crate::transport::QuicTuning::new(settings.congestion, &settings.limits);
        let wt = webtransport::bind(settings.webtransport_listen, &certs, &tuning)?;
        let quic = quic::bind(settings.quic_listen, &certs, &tuning)?;
        let https = Arc::new(crate::transport::tls::server_config(
            &certs,
            &[b"http/1.1"],
        )?);
        let http = api::bind(settings.http_listen).await?;
        let webtransport_addr = wt.local_addr()?;
        let quic_addr = quic.local_addr()?;
        let http_addr = http.local_addr()?;

        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        // A WebTransport CONNECT with a token that does not verify is answered 403.
        let connect_check: webtransport::ConnectCheck = {
            let (issuer, metrics) = (issuer.clone(), metrics.clone());
            Arc::new(move |token| match issuer.verify(token) {
                Ok(_) => true,
                Err(e) => {
                    metrics.auth_failure(e.code());
                    false
                }
            })
        };
        tasks.spawn(webtransport::accept(
            wt,
            tx.clone(),
            tasks.clone(),
            shutdown.clone(),
            connect_check,
        ));
        tasks.spawn(quic::accept(quic, tx, tasks.clone(), shutdown.clone()));
        let relay = Relay::new(
            issuer.clone(),
            metrics.clone(),
            settings.limits,
            settings.public_prefixes.clone(),
            shutdown.clone(),
        );
        load_moderation(&relay, &store).await?;
        let cluster = match settings.cluster.clone() {
            Some(cluster) => {
                // A wildcard listener is no address to give other nodes and clients.
                for (given, addr, key) in [
                    (cluster.quic_url.is_some(), quic_addr, "node_quic_url"),
                    (
                        cluster.webtransport_url.is_some(),
                        webtransport_addr,
                        "node_webtransport_url",
                    ),
                ] {
                    if !given && addr.ip().is_unspecified() {
                        anyhow::bail!("{key}: set it; the listener {addr} is no address other nodes can reach");
                    }
                }
                let me = crate::cluster::NodeInfo {
                    id: cluster.node_id.clone(),
                    region: cluster.region.clone(),
                    quic_url: cluster
                        .quic_url
                        .as_ref()
                        .map_or_else(|| format!("moqt://{quic_addr}/"), |u| u.to_string()),
                    webtransport_url: cluster.webtransport_url.as_ref().map_or_else(
                        || format!("https://{webtransport_addr}/"),
                        |u| u.to_string(),
                    ),
                    cert_sha256: certs.facts().sha256,
                    cert_pin: certs.facts().pin,
                    load: 0,
                };
                let started = crate::cluster::Cluster::start(
                    cluster,
                    me,
                    certs.clone(),
                    relay.clone(),
                    shutdown.clone(),
                )
                .await?;
                tracing::info!(
                    node = started.node_id(),
                    region = started.region(),
                    "cluster node registered"
                );
                Some(started)
            }
            None => None,
        };
        let hooks = match &settings.webhooks {
            Some(w) => crate::webhooks::Webhooks::start(
                w,
                cluster.as_ref().map(|c| c.node_id().to_owned()),
                metrics.clone(),
                &tasks,
                shutdown.clone(),
                // Within the grace the server waits for its tasks.
                settings.shutdown_grace.mul_f32(0.8),
            )?,
            None => crate::webhooks::Webhooks::default(),
        };
        let live = Live::new(metrics.clone(), relay.clone(), hooks);
        if let Some(cluster) = &cluster {
            cluster.start_bus(store.clone(), live.clone(), shutdown.clone())?;
        }
        tasks.spawn(crate::api::live::run(
            live.clone(),
            relay.clone(),
            store.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(relay.clone().run(rx));
        tasks.spawn(purge_expired(store.clone(), shutdown.clone()));
        tasks.spawn(certs::watch(
            certs.clone(),
            settings.cert_check_interval,
            shutdown.clone(),
        ));
        let guards = crate::api::guard::Guards::new(settings.hashing);
        let chat_limiter = crate::api::chat_limiter();
        let (l1, l2, stop_pruning) = (guards.clone(), chat_limiter.clone(), shutdown.clone());
        tasks.spawn(async move {
            // Rate-limiter keys are forgotten once their quota has refilled: bounded memory.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
                    _ = stop_pruning.cancelled() => return,
                }
                l1.retain_recent();
                l2.retain_recent();
            }
        });
        let started = api::ops::Started::default();
        let state = ApiState {
            info: Arc::new(Info {
                webtransport_port: settings
                    .webtransport_public_port
                    .unwrap_or(webtransport_addr.port()),
                quic_port: quic_addr.port(),
                moqt_version: crate::transport::MOQT_ALPN,
            }),
            certs: certs.clone(),
            registry: metrics.registry(),
            store,
            issuer: issuer.clone(),
            relay: relay.clone(),
            live: live.clone(),
            cluster,
            guards,
            chat_limiter,
            limits: settings.api,
            started: started.clone(),
        };
        let whip = crate::webrtc::start(
            relay.clone(),
            settings.whip.clone(),
            &tasks,
            shutdown.clone(),
        )
        .await?;
        let whip_routes = crate::webrtc::endpoint::router(crate::webrtc::endpoint::WhipState {
            whip: whip.clone(),
            relay: relay.clone(),
            issuer: issuer.clone(),
        });
        let router = api::router(state, settings.web_dir.clone(), whip_routes);
        let http_shutdown = shutdown.clone();
        let http_limits = settings.http;
        let tls = api::http::Tls {
            config: https,
            plain: settings.http_plain,
        };
        tasks.spawn(async move {
            if let Err(e) = api::http::serve(http, router, http_limits, tls, http_shutdown).await {
                tracing::error!(error = %e, "http server failed");
            }
        });
        tasks.close();
        // Every listener is bound and served: `/ready` says so.
        started.set();
        let grace = settings.shutdown_grace;
        let stop = shutdown.clone();
        let done = tokio::spawn(async move {
            stop.cancelled().await;
            if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
                tracing::warn!("shutdown grace period elapsed with tasks still running");
            }
        });
        Ok(Server {
            webtransport_addr,
            quic_addr,
            http_addr,
            whip_addr: whip.local_addr,
            cert_sha256: certs.facts().sha256,
            certs,
            issuer,
            metrics,
            graceful: GracefulStop {
                readiness: started,
                relay: relay.clone(),
                live,
                shutdown: shutdown.clone(),
                delay: settings.stop_delay,
                drain: settings.drain,
            },
            relay,
            shutdown,
            done,
        })
    }

    /// A token that stops the server at once when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// What stops the server gracefully, as `roomcast serve` does on a signal.
    pub fn graceful_stop(&self) -> GracefulStop {
        self.graceful.clone()
    }

    /// Stops at once: the webhooks hear that the rooms open here finished, listeners stop
    /// accepting, every session is closed with a reason; waits (bounded) for the rest.
    pub async fn stop(self) {
        self.graceful.live.finish_all();
        self.shutdown.cancel();
        let _ = self.done.await;
    }

    /// Waits until the server was stopped (through [`Server::graceful_stop`]).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Creates the administrator account on first start. Its password is the configured one, or a
/// generated one printed once to stderr (never to the log). With JSON logs, stderr is the log:
/// the password goes into `<data_dir>/admin-password` (owner only) instead (`json_logs`).
async fn bootstrap_admin(
    store: &Store,
    password: Option<&str>,
    json_logs: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if store.user_count().await? > 0 {
        return Ok(());
    }
    let generated;
    let password = match password {
        Some(p) => p,
        None => {
            generated = uuid::Uuid::new_v4().simple().to_string();
            match json_logs {
                None => eprintln!("roomcast: created administrator account: username=admin password={generated} (shown once)"),
                Some(dir) => {
                    let file = dir.join("admin-password");
                    crate::transport::tls::write_private(&file, format!("{generated}\n").as_bytes())?;
                    tracing::warn!(username = "admin", password_file = %file.display(), "created administrator account; read its password from the file, then delete it");
                }
            }
            &generated
        }
    };
    let hash = crate::auth::password::hash(password).map_err(anyhow::Error::msg)?;
    store.create_user("admin", &hash, true).await?;
    Ok(())
}

/// How often expired login sessions, invites and revocations are deleted.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Deletes expired rows at start and then every [`PURGE_EVERY`], until `shutdown`.
async fn purge_expired(store: Store, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(PURGE_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match store.purge_expired(crate::auth::token::now_secs()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "expired rows purged"),
            Err(e) => tracing::warn!(error = %e, "purging expired rows failed"),
        }
    }
}

/// Moderation holds across a restart (and, in a cluster, across nodes): bans, revoked
/// tokens, closed and deleted rooms, grant overrides and mutes, read from the store.
pub async fn load_moderation(relay: &Relay, store: &Store) -> Result<(), crate::store::StoreError> {
    for (room, who) in store.bans().await? {
        relay.access().ban(&room, &who);
    }
    relay.access().revoke(store.revocations().await?);
    for (room, who, grants) in store.overrides().await? {
        relay.access().set_grants(&room, &who, Some(grants));
    }
    for (room, who, track) in store.mutes().await? {
        relay.access().set_muted(&room, &who, &track, true);
    }
    for (room, at, deleted) in store.closures().await? {
        relay
            .access()
            .set_closed(&room, crate::relay::access::Closure { at, deleted });
    }
    Ok(())
}
