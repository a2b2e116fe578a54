//! One configuration type, read from a TOML file, the environment and flags.
//!
//! Every key is optional in [`Config`]; [`Config::resolve`] fills the defaults and returns
//! [`Settings`], the validated form the server runs with. Precedence: flag > environment >
//! file > default. Unknown keys in the file are rejected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

/// Errors while loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML or has unknown keys.
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    /// A value is out of its allowed range.
    #[error("invalid setting {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`).
    Json,
}

/// Relay configuration as given by file, environment or flags. All optional.
#[derive(Args, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Config {
    /// TOML configuration file; its keys are the long flag names with `_` for `-`.
    #[arg(long, env = "ROOMCAST_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// UDP address for WebTransport (HTTP/3) sessions from browsers.
    #[arg(long, env = "ROOMCAST_WEBTRANSPORT_LISTEN")]
    pub webtransport_listen: Option<SocketAddr>,

    /// WebTransport port the web client is told to use, when a proxy or load balancer in
    /// front of the relay listens on another port than `webtransport_listen`.
    #[arg(long, env = "ROOMCAST_WEBTRANSPORT_PUBLIC_PORT")]
    pub webtransport_public_port: Option<u16>,

    /// Log lines on stderr: `text` (default, for people) or `json` (one object per line, for
    /// log shippers). `RUST_LOG` filters either.
    #[arg(long, env = "ROOMCAST_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    /// QUIC congestion controller: bbr (default), cubic or newreno.
    #[arg(long, env = "ROOMCAST_CONGESTION")]
    pub congestion: Option<crate::transport::Congestion>,

    /// UDP address for raw QUIC sessions (ALPN `moqt-18`) from native clients.
    #[arg(long, env = "ROOMCAST_QUIC_LISTEN")]
    pub quic_listen: Option<SocketAddr>,

    /// TCP address for the HTTP API, metrics and the web client.
    #[arg(long, env = "ROOMCAST_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// Directory for persistent state (the generated token secret, later the database).
    #[arg(long, env = "ROOMCAST_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Directory where the development certificate is generated when none is configured.
    #[arg(long, env = "ROOMCAST_CERT_DIR")]
    pub cert_dir: Option<PathBuf>,

    /// PEM certificate chain; with `tls_key`, used as is instead of a generated certificate.
    #[arg(long, env = "ROOMCAST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for `tls_cert`.
    #[arg(long, env = "ROOMCAST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// UDP address of WebRTC (WHIP) media: every WHIP session on this one port (default
    /// 127.0.0.1:4445).
    #[arg(long, env = "ROOMCAST_WHIP_LISTEN")]
    pub whip_listen: Option<SocketAddr>,

    /// Addresses to advertise as WHIP ICE candidates (comma-separated), e.g. the public
    /// address of a relay behind NAT; default: the `whip_listen` address.
    #[arg(long, env = "ROOMCAST_WHIP_PUBLIC_ADDRESSES", value_delimiter = ',')]
    #[serde(default)]
    pub whip_public_addresses: Vec<std::net::IpAddr>,

    /// STUN/TURN server URLs handed to WHIP clients as `Link` headers (comma-separated).
    #[arg(long, env = "ROOMCAST_WHIP_ICE_SERVERS", value_delimiter = ',')]
    #[serde(default)]
    pub whip_ice_servers: Vec<String>,

    /// WHIP sessions at once (default 64).
    #[arg(long, env = "ROOMCAST_MAX_WHIP_SESSIONS")]
    pub max_whip_sessions: Option<usize>,

    /// Milliseconds a WHIP session may go without media (or without completing ICE and
    /// DTLS) before it is ended (default 10000).
    #[arg(long, env = "ROOMCAST_WHIP_IDLE_TIMEOUT_MS")]
    pub whip_idle_timeout_ms: Option<u64>,

    /// Milliseconds between looks at the certificate: a generated one is renewed when under
    /// 3 days remain, configured files are reloaded when they changed (default 3600000).
    #[arg(long, env = "ROOMCAST_CERT_CHECK_INTERVAL_MS")]
    pub cert_check_interval_ms: Option<u64>,

    /// Serve plain HTTP (without TLS) on `http_listen` besides HTTPS. Default: only when
    /// `http_listen` is a loopback address; elsewhere a plain request is redirected to HTTPS.
    #[arg(long, env = "ROOMCAST_HTTP_PLAIN", num_args = 0..=1, default_missing_value = "true")]
    pub http_plain: Option<bool>,

    /// HS256 token secret (at least 32 bytes). Generated into the data directory when unset.
    /// A flag is visible to every local user (`/proc/*/cmdline`): prefer the environment or
    /// `--token-secret-file`.
    #[arg(long, env = "ROOMCAST_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// File holding the token secret (trailing newline ignored), instead of `token_secret`.
    #[arg(long, env = "ROOMCAST_TOKEN_SECRET_FILE")]
    pub token_secret_file: Option<PathBuf>,

    /// Password of the `admin` account created on first start (generated and printed if unset).
    #[arg(long, env = "ROOMCAST_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,

    /// File holding the admin password, instead of `admin_password`.
    #[arg(long, env = "ROOMCAST_ADMIN_PASSWORD_FILE")]
    pub admin_password_file: Option<PathBuf>,

    /// PostgreSQL URL (`postgres://user:password@host:port/db`) of the store, instead of the
    /// embedded SQLite in `data_dir`: the shared store of a cluster. Holds a password: prefer the
    /// environment to a flag.
    #[arg(long, env = "ROOMCAST_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Redis URL (`redis://host:port/`): runs this relay as a node of a cluster (needs
    /// `database_url`, `node_id`, `cluster_secret` and a `token_secret` shared by every node).
    #[arg(long, env = "ROOMCAST_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// This node's id in the cluster (letters, digits, `-`, `_`; unique per node).
    #[arg(long, env = "ROOMCAST_NODE_ID")]
    pub node_id: Option<String>,

    /// This node's region; joins are placed in the requested region first (default `default`).
    #[arg(long, env = "ROOMCAST_NODE_REGION")]
    pub node_region: Option<String>,

    /// URL other nodes and native clients reach this node's raw QUIC listener at
    /// (default `moqt://<quic_listen>/`).
    #[arg(long, env = "ROOMCAST_NODE_QUIC_URL")]
    pub node_quic_url: Option<String>,

    /// URL browsers reach this node's WebTransport listener at
    /// (default `https://<webtransport_listen>/`).
    #[arg(long, env = "ROOMCAST_NODE_WEBTRANSPORT_URL")]
    pub node_webtransport_url: Option<String>,

    /// Secret (at least 32 bytes, not the token secret) the nodes of a cluster authenticate to
    /// each other with. Prefer the environment or `--cluster-secret-file` to a flag.
    #[arg(long, env = "ROOMCAST_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// File holding the cluster secret, instead of `cluster_secret`.
    #[arg(long, env = "ROOMCAST_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,

    /// Endpoints (http:// or https:// URLs, comma-separated) that receive the rooms' events
    /// as signed JSON (room started and finished, participant joined and left, track
    /// published and unpublished). Needs `webhook_secret`.
    #[arg(long, env = "ROOMCAST_WEBHOOK_URLS", value_delimiter = ',')]
    #[serde(default)]
    pub webhook_urls: Vec<String>,

    /// Key webhook requests are signed with (HMAC-SHA256, at least 24 bytes), as Standard
    /// Webhooks specifies. Prefer the environment or `--webhook-secret-file` to a flag.
    #[arg(long, env = "ROOMCAST_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// File holding the webhook secret, instead of `webhook_secret`.
    #[arg(long, env = "ROOMCAST_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,

    /// Seconds an event is retried (with backoff) before it is given up (default 600).
    #[arg(long, env = "ROOMCAST_WEBHOOK_RETRY_SECS")]
    pub webhook_retry_secs: Option<u64>,

    /// Directory to serve the web client from, instead of the copy built into the binary
    /// (for working on the client without rebuilding).
    #[arg(long, env = "ROOMCAST_WEB_DIR")]
    pub web_dir: Option<PathBuf>,

    /// Maximum concurrent MoQ sessions across both transports.
    #[arg(long, env = "ROOMCAST_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,

    /// Maximum concurrent subscriptions per session.
    #[arg(long, env = "ROOMCAST_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<usize>,

    /// Maximum namespaces one session may publish at once (default 16).
    #[arg(long, env = "ROOMCAST_MAX_NAMESPACES_PER_SESSION")]
    pub max_namespaces_per_session: Option<usize>,

    /// Maximum namespaces published in one room at once (default 1024).
    #[arg(long, env = "ROOMCAST_MAX_NAMESPACES_PER_ROOM")]
    pub max_namespaces_per_room: Option<usize>,

    /// Milliseconds a publisher has to answer the relay's SUBSCRIBE (default 5000).
    #[arg(long, env = "ROOMCAST_UPSTREAM_TIMEOUT_MS")]
    pub upstream_timeout_ms: Option<u64>,

    /// Maximum concurrent MoQ sessions (or handshakes) from one client address.
    #[arg(long, env = "ROOMCAST_MAX_SESSIONS_PER_ADDRESS")]
    pub max_sessions_per_address: Option<usize>,

    /// Maximum concurrent sessions of one identity in a room; a newer one closes the oldest.
    #[arg(long, env = "ROOMCAST_MAX_SESSIONS_PER_IDENTITY")]
    pub max_sessions_per_identity: Option<usize>,

    /// Milliseconds a new connection has to complete SETUP with a valid token.
    #[arg(long, env = "ROOMCAST_SETUP_TIMEOUT_MS")]
    pub setup_timeout_ms: Option<u64>,

    /// Maximum size of one object payload in bytes.
    #[arg(long, env = "ROOMCAST_MAX_OBJECT_BYTES")]
    pub max_object_bytes: Option<usize>,

    /// Maximum bytes kept for the current group of one track.
    #[arg(long, env = "ROOMCAST_MAX_GROUP_BYTES")]
    pub max_group_bytes: Option<usize>,

    /// Groups of each track the relay keeps for late joiners, absolute filters and FETCH
    /// (default 2, at most 1000), within `track_cache_bytes`.
    #[arg(long, env = "ROOMCAST_RETAINED_GROUPS")]
    pub retained_groups: Option<usize>,

    /// Bytes of media one track may hold in the cache (default 32 MiB); past it, its oldest
    /// retained groups are let go first.
    #[arg(long, env = "ROOMCAST_TRACK_CACHE_BYTES")]
    pub track_cache_bytes: Option<usize>,

    /// Bytes of media the relay caches across every track (default 2 GiB); past it, the
    /// publisher whose group would go over has that group dropped.
    #[arg(long, env = "ROOMCAST_CACHE_BYTES")]
    pub cache_bytes: Option<usize>,

    /// Bytes of that cache the sessions of one client address may hold together (128 MiB).
    #[arg(long, env = "ROOMCAST_ADDRESS_CACHE_BYTES")]
    pub address_cache_bytes: Option<usize>,

    /// Bytes of that cache one publishing session may hold (default 64 MiB).
    #[arg(long, env = "ROOMCAST_SESSION_CACHE_BYTES")]
    pub session_cache_bytes: Option<usize>,

    /// Milliseconds a subscription may have data to send and make no progress before it is
    /// ended with PUBLISH_DONE TOO_FAR_BEHIND (default 10000).
    #[arg(long, env = "ROOMCAST_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,

    /// Bytes a connection may have written and not yet acknowledged (QUIC send window,
    /// default 4 MiB): the most a stalled subscriber's connection holds.
    #[arg(long, env = "ROOMCAST_SEND_WINDOW_BYTES")]
    pub send_window_bytes: Option<usize>,

    /// Milliseconds an HTTP client has to send a request's headers, and the most a
    /// keep-alive connection may idle between requests (default 10000).
    #[arg(long, env = "ROOMCAST_HTTP_HEADER_TIMEOUT_MS")]
    pub http_header_timeout_ms: Option<u64>,

    /// Milliseconds an HTTP request's body may stall without a byte arriving (default 30000).
    #[arg(long, env = "ROOMCAST_HTTP_BODY_TIMEOUT_MS")]
    pub http_body_timeout_ms: Option<u64>,

    /// Milliseconds a whole HTTP request may take, body included (default 60000).
    #[arg(long, env = "ROOMCAST_HTTP_REQUEST_TIMEOUT_MS")]
    pub http_request_timeout_ms: Option<u64>,

    /// Open HTTP connections at once (default 4096); more are answered 503 and closed.
    #[arg(long, env = "ROOMCAST_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,

    /// Open HTTP connections from one client address (default 64).
    #[arg(long, env = "ROOMCAST_HTTP_MAX_CONNECTIONS_PER_ADDRESS")]
    pub http_max_connections_per_address: Option<usize>,

    /// Seconds to wait for sessions to close on shutdown.
    #[arg(long, env = "ROOMCAST_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,

    /// First namespace elements open without a token (comma-separated), e.g.
    /// `moq-test,demo`: sessions without a token may publish, subscribe and discover only
    /// there, token holders may too. Off by default; `room` cannot be opened.
    #[arg(long, env = "ROOMCAST_PUBLIC_PREFIXES", value_delimiter = ',')]
    #[serde(default)]
    pub public_prefixes: Vec<String>,

    /// Milliseconds sessions get, after the GOAWAY a stopping relay sends them, to reconnect
    /// before it closes them (default 3000; new sessions are turned away meanwhile).
    #[arg(long, env = "ROOMCAST_DRAIN_MS")]
    pub drain_ms: Option<u64>,

    /// Milliseconds between a stop signal and the GOAWAY: `/ready` answers 503 `stopping`
    /// meanwhile while new sessions are still let in, so a load balancer that probes `/ready`
    /// takes the node out before any client is turned away (default 0: GOAWAY at once).
    #[arg(long, env = "ROOMCAST_STOP_DELAY_MS")]
    pub stop_delay_ms: Option<u64>,

    /// Password hashes (argon2id, 19 MiB each) computed at once; default: the number of cores.
    #[arg(long, env = "ROOMCAST_PASSWORD_HASH_CONCURRENCY")]
    pub password_hash_concurrency: Option<usize>,

    /// Milliseconds a login, registration or room join waits for a hashing slot before it is
    /// refused with 503 busy (default 2000).
    #[arg(long, env = "ROOMCAST_PASSWORD_QUEUE_MS")]
    pub password_queue_ms: Option<u64>,

    /// Bytes of chat attachments one identity may have stored, over all rooms (default 256 MiB).
    #[arg(long, env = "ROOMCAST_ATTACHMENT_QUOTA_USER_BYTES")]
    pub attachment_quota_user_bytes: Option<u64>,

    /// Bytes of chat attachments one room may hold (default 1 GiB).
    #[arg(long, env = "ROOMCAST_ATTACHMENT_QUOTA_ROOM_BYTES")]
    pub attachment_quota_room_bytes: Option<u64>,

    /// Bytes of chat attachments the relay stores in all (default 16 GiB).
    #[arg(long, env = "ROOMCAST_ATTACHMENT_QUOTA_BYTES")]
    pub attachment_quota_bytes: Option<u64>,

    /// Chat messages kept per room, newest first (default 10000).
    #[arg(long, env = "ROOMCAST_CHAT_HISTORY_MESSAGES")]
    pub chat_history_messages: Option<u64>,

    /// Bans, grant changes and mutes one room holds (default 10000).
    #[arg(long, env = "ROOMCAST_MAX_MODERATION_ENTRIES_PER_ROOM")]
    pub max_moderation_entries_per_room: Option<u64>,

    /// Rooms one user (not an admin) may own (default 100).
    #[arg(long, env = "ROOMCAST_MAX_ROOMS_PER_USER")]
    pub max_rooms_per_user: Option<u64>,
}

/// Validated settings with every default filled in.
#[derive(Clone)]
pub struct Settings {
    pub webtransport_listen: SocketAddr,
    pub webtransport_public_port: Option<u16>,
    pub congestion: crate::transport::Congestion,
    pub quic_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub cert_dir: PathBuf,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub cert_check_interval: Duration,
    pub whip: crate::webrtc::WhipConfig,
    /// Plain HTTP accepted on `http_listen` (HTTPS always is).
    pub http_plain: bool,
    pub token_secret: Option<String>,
    pub admin_password: Option<String>,
    /// PostgreSQL store instead of SQLite.
    pub database_url: Option<String>,
    /// Cluster mode (`redis_url` set).
    pub cluster: Option<crate::cluster::ClusterSettings>,
    /// Webhook endpoints, if any.
    pub webhooks: Option<crate::webhooks::WebhookSettings>,
    pub log_format: LogFormat,
    /// The web client's directory; `None` serves the embedded copy.
    pub web_dir: Option<PathBuf>,
    pub limits: Limits,
    pub hashing: crate::api::guard::HashingLimits,
    pub http: crate::api::http::HttpLimits,
    pub api: crate::api::ApiLimits,
    pub shutdown_grace: Duration,
    pub drain: Duration,
    /// From a stop signal to the GOAWAY (`stop_delay_ms`).
    pub stop_delay: Duration,
    /// Namespace first elements open without a token (`public_prefixes`).
    pub public_prefixes: Vec<String>,
}

/// Most entries in `public_prefixes`.
pub const MAX_PUBLIC_PREFIXES: usize = 64;

impl Config {
    /// Reads a TOML file into a `Config`, rejecting unknown keys.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Layers `self` (flags and environment) over the file named by `--config`, if any.
    pub fn load(self) -> Result<Self, ConfigError> {
        match &self.config {
            Some(path) => Ok(self.clone().over(Self::from_file(path)?)),
            None => Ok(self),
        }
    }

    /// Returns `self` with every unset key taken from `base`.
    pub fn over(self, base: Config) -> Config {
        Config {
            config: self.config.or(base.config),
            webtransport_listen: self.webtransport_listen.or(base.webtransport_listen),
            webtransport_public_port: self
                .webtransport_public_port
                .or(base.webtransport_public_port),
            log_format: self.log_format.or(base.log_format),
            congestion: self.congestion.or(base.congestion),
            quic_listen: self.quic_listen.or(base.quic_listen),
            http_listen: self.http_listen.or(base.http_listen),
            data_dir: self.data_dir.or(base.data_dir),
            cert_dir: self.cert_dir.or(base.cert_dir),
            tls_cert: self.tls_cert.or(base.tls_cert),
            tls_key: self.tls_key.or(base.tls_key),
            cert_check_interval_ms: self.cert_check_interval_ms.or(base.cert_check_interval_ms),
            whip_listen: self.whip_listen.or(base.whip_listen),
            whip_public_addresses: if self.whip_public_addresses.is_empty() {
                base.whip_public_addresses
            } else {
                self.whip_public_addresses
            },
            whip_ice_servers: if self.whip_ice_servers.is_empty() {
                base.whip_ice_servers
            } else {
                self.whip_ice_servers
            },
            max_whip_sessions: self.max_whip_sessions.or(base.max_whip_sessions),
            whip_idle_timeout_ms: self.whip_idle_timeout_ms.or(base.whip_idle_timeout_ms),
            http_plain: self.http_plain.or(base.http_plain),
            token_secret: self.token_secret.or(base.token_secret),
            token_secret_file: self.token_secret_file.or(base.token_secret_file),
            admin_password_file: self.admin_password_file.or(base.admin_password_file),
            admin_password: self.admin_password.or(base.admin_password),
            web_dir: self.web_dir.or(base.web_dir),
            database_url: self.database_url.or(base.database_url),
            redis_url: self.redis_url.or(base.redis_url),
            node_id: self.node_id.or(base.node_id),
            node_region: self.node_region.or(base.node_region),
            node_quic_url: self.node_quic_url.or(base.node_quic_url),
            node_webtransport_url: self.node_webtransport_url.or(base.node_webtransport_url),
            cluster_secret: self.cluster_secret.or(base.cluster_secret),
            cluster_secret_file: self.cluster_secret_file.or(base.cluster_secret_file),
            webhook_urls: if self.webhook_urls.is_empty() {
                base.webhook_urls
            } else {
                self.webhook_urls
            },
            webhook_secret: self.webhook_secret.or(base.webhook_secret),
            webhook_secret_file: self.webhook_secret_file.or(base.webhook_secret_file),
            webhook_retry_secs: self.webhook_retry_secs.or(base.webhook_retry_secs),
            max_sessions: self.max_sessions.or(base.max_sessions),
            max_subscriptions: self.max_subscriptions.or(base.max_subscriptions),
            max_namespaces_per_session: self
                .max_namespaces_per_session
                .or(base.max_namespaces_per_session),
            max_namespaces_per_room: self
                .max_namespaces_per_room
                .or(base.max_namespaces_per_room),
            upstream_timeout_ms: self.upstream_timeout_ms.or(base.upstream_timeout_ms),
            max_sessions_per_address: self
                .max_sessions_per_address
                .or(base.max_sessions_per_address),
            max_sessions_per_identity: self
                .max_sessions_per_identity
                .or(base.max_sessions_per_identity),
            setup_timeout_ms: self.setup_timeout_ms.or(base.setup_timeout_ms),
            max_object_bytes: self.max_object_bytes.or(base.max_object_bytes),
            max_group_bytes: self.max_group_bytes.or(base.max_group_bytes),
            retained_groups: self.retained_groups.or(base.retained_groups),
            track_cache_bytes: self.track_cache_bytes.or(base.track_cache_bytes),
            cache_bytes: self.cache_bytes.or(base.cache_bytes),
            address_cache_bytes: self.address_cache_bytes.or(base.address_cache_bytes),
            session_cache_bytes: self.session_cache_bytes.or(base.session_cache_bytes),
            write_timeout_ms: self.write_timeout_ms.or(base.write_timeout_ms),
            send_window_bytes: self.send_window_bytes.or(base.send_window_bytes),
            http_header_timeout_ms: self.http_header_timeout_ms.or(base.http_header_timeout_ms),
            http_body_timeout_ms: self.http_body_timeout_ms.or(base.http_body_timeout_ms),
            http_request_timeout_ms: self
                .http_request_timeout_ms
                .or(base.http_request_timeout_ms),
            http_max_connections: self.http_max_connections.or(base.http_max_connections),
            http_max_connections_per_address: self
                .http_max_connections_per_address
                .or(base.http_max_connections_per_address),
            shutdown_grace_secs: self.shutdown_grace_secs.or(base.shutdown_grace_secs),
            drain_ms: self.drain_ms.or(base.drain_ms),
            stop_delay_ms: self.stop_delay_ms.or(base.stop_delay_ms),
            public_prefixes: if self.public_prefixes.is_empty() {
                base.public_prefixes
            } else {
                self.public_prefixes
            },
            password_hash_concurrency: self
                .password_hash_concurrency
                .or(base.password_hash_concurrency),
            password_queue_ms: self.password_queue_ms.or(base.password_queue_ms),
            attachment_quota_user_bytes: self
                .attachment_quota_user_bytes
                .or(base.attachment_quota_user_bytes),
            attachment_quota_room_bytes: self
                .attachment_quota_room_bytes
                .or(base.attachment_quota_room_bytes),
            attachment_quota_bytes: self.attachment_quota_bytes.or(base.attachment_quota_bytes),
            chat_history_messages: self.chat_history_messages.or(base.chat_history_messages),
            max_moderation_entries_per_room: self
                .max_moderation_entries_per_room
                .or(base.max_moderation_entries_per_room),
            max_rooms_per_user: self.max_rooms_per_user.or(base.max_rooms_per_user),
        }
    }
}

/// Debug output names where the relay listens and which secrets are set, never their values
/// (a database or webhook URL may hold a password too).
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: bool| v.then_some("<redacted>");
        f.debug_struct("Config")
            .field("config", &self.config)
            .field("http_listen", &self.http_listen)
            .field("webtransport_listen", &self.webtransport_listen)
            .field("quic_listen", &self.quic_listen)
            .field("token_secret", &set(self.token_secret.is_some()))
            .field("database_url", &set(self.database_url.is_some()))
            .field("webhook_secret", &set(self.webhook_secret.is_some()))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("http_listen", &self.http_listen)
            .field("webtransport_listen", &self.webtransport_listen)
            .field("quic_listen", &self.quic_listen)
            .field("cluster", &self.cluster)
            .field("webhooks", &self.webhooks)
            .finish_non_exhaustive()
    }
}

/// Warnings for secrets passed as command-line flags, which every local user can read.
pub fn flag_secret_warnings(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut warnings = vec![];
    for arg in args {
        for flag in [
            "--token-secret",
            "--admin-password",
            "--cluster-secret",
            "--webhook-secret",
        ] {
            if arg == flag || arg.starts_with(&format!("{flag}=")) {
                warnings.push(format!(
                    "{flag} on the command line is readable by every local user (/proc/*/cmdline); \
                     use the environment or {flag}-file"
                ));
            }
        }
    }
    warnings
}

mod limits;
mod resolve;

pub use limits::{Limits, MAX_RETAINED_GROUPS};

#[cfg(test)]
mod tests;
