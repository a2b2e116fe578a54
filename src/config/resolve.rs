//! [`Config::resolve`]: defaults filled in and every value checked.

use std::time::Duration;

use std::net::SocketAddr;
use std::path::Path;

use super::{Config, ConfigError, Limits, Settings, MAX_PUBLIC_PREFIXES, MAX_RETAINED_GROUPS};

impl Config {
    /// Fills defaults and checks ranges.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let defaults = Limits::default();
        let positive = |key: &'static str, v: Option<usize>, d: usize| match v {
            Some(0) => Err(ConfigError::Invalid {
                key,
                reason: "must be greater than zero".into(),
            }),
            Some(v) => Ok(v),
            None => Ok(d),
        };
        let millis = |key: &'static str, v: Option<u64>, d: Duration| match v {
            Some(0) => Err(ConfigError::Invalid {
                key,
                reason: "must be greater than zero".into(),
            }),
            Some(ms) => Ok(Duration::from_millis(ms)),
            None => Ok(d),
        };
        let limits = Limits {
            max_sessions: positive("max_sessions", self.max_sessions, defaults.max_sessions)?,
            max_subscriptions: positive(
                "max_subscriptions",
                self.max_subscriptions,
                defaults.max_subscriptions,
            )?,
            max_namespaces_per_session: positive(
                "max_namespaces_per_session",
                self.max_namespaces_per_session,
                defaults.max_namespaces_per_session,
            )?,
            max_namespaces_per_room: positive(
                "max_namespaces_per_room",
                self.max_namespaces_per_room,
                defaults.max_namespaces_per_room,
            )?,
            upstream_timeout: millis(
                "upstream_timeout_ms",
                self.upstream_timeout_ms,
                defaults.upstream_timeout,
            )?,
            max_sessions_per_address: positive(
                "max_sessions_per_address",
                self.max_sessions_per_address,
                defaults.max_sessions_per_address,
            )?,
            max_sessions_per_identity: positive(
                "max_sessions_per_identity",
                self.max_sessions_per_identity,
                defaults.max_sessions_per_identity,
            )?,
            setup_timeout: millis(
                "setup_timeout_ms",
                self.setup_timeout_ms,
                defaults.setup_timeout,
            )?,
            max_object_bytes: positive(
                "max_object_bytes",
                self.max_object_bytes,
                defaults.max_object_bytes,
            )?,
            max_group_bytes: positive(
                "max_group_bytes",
                self.max_group_bytes,
                defaults.max_group_bytes,
            )?,
            retained_groups: positive(
                "retained_groups",
                self.retained_groups,
                defaults.retained_groups,
            )?,
            track_cache_bytes: positive(
                "track_cache_bytes",
                self.track_cache_bytes,
                defaults.track_cache_bytes,
            )?,
            cache_bytes: positive("cache_bytes", self.cache_bytes, defaults.cache_bytes)?,
            address_cache_bytes: positive(
                "address_cache_bytes",
                self.address_cache_bytes,
                defaults.address_cache_bytes,
            )?,
            session_cache_bytes: positive(
                "session_cache_bytes",
                self.session_cache_bytes,
                defaults.session_cache_bytes,
            )?,
            write_timeout: millis(
                "write_timeout_ms",
                self.write_timeout_ms,
                defaults.write_timeout,
            )?,
            send_window_bytes: positive(
                "send_window_bytes",
                self.send_window_bytes,
                defaults.send_window_bytes,
            )?,
        };
        if limits.retained_groups > MAX_RETAINED_GROUPS {
            return Err(ConfigError::Invalid {
                key: "retained_groups",
                reason: format!("at most {MAX_RETAINED_GROUPS}"),
            });
        }
        let http_defaults = crate::api::http::HttpLimits::default();
        let http = crate::api::http::HttpLimits {
            header_timeout: millis(
                "http_header_timeout_ms",
                self.http_header_timeout_ms,
                http_defaults.header_timeout,
            )?,
            body_timeout: millis(
                "http_body_timeout_ms",
                self.http_body_timeout_ms,
                http_defaults.body_timeout,
            )?,
            request_timeout: millis(
                "http_request_timeout_ms",
                self.http_request_timeout_ms,
                http_defaults.request_timeout,
            )?,
            max_connections: positive(
                "http_max_connections",
                self.http_max_connections,
                http_defaults.max_connections,
            )?,
            max_connections_per_address: positive(
                "http_max_connections_per_address",
                self.http_max_connections_per_address,
                http_defaults.max_connections_per_address,
            )?,
        };
        let hashing_defaults = crate::api::guard::HashingLimits::default();
        let hashing = crate::api::guard::HashingLimits {
            concurrency: positive(
                "password_hash_concurrency",
                self.password_hash_concurrency,
                hashing_defaults.concurrency,
            )?,
            queue_timeout: self
                .password_queue_ms
                .map_or(hashing_defaults.queue_timeout, Duration::from_millis),
        };
        let d = crate::api::ApiLimits::default();
        let wide = |key, v: Option<u64>, d: u64| positive(key, v.map(|v| v as usize), d as usize);
        let api = crate::api::ApiLimits {
            chat: crate::api::chat::ChatLimits {
                quota: crate::store::AttachmentQuota {
                    uploader: wide(
                        "attachment_quota_user_bytes",
                        self.attachment_quota_user_bytes,
                        d.chat.quota.uploader,
                    )? as u64,
                    room: wide(
                        "attachment_quota_room_bytes",
                        self.attachment_quota_room_bytes,
                        d.chat.quota.room,
                    )? as u64,
                    total: wide(
                        "attachment_quota_bytes",
                        self.attachment_quota_bytes,
                        d.chat.quota.total,
                    )? as u64,
                },
                history_messages: wide(
                    "chat_history_messages",
                    self.chat_history_messages,
                    d.chat.history_messages,
                )? as u64,
            },
            moderation_entries_per_room: wide(
                "max_moderation_entries_per_room",
                self.max_moderation_entries_per_room,
                d.moderation_entries_per_room,
            )? as u64,
            rooms_per_user: wide(
                "max_rooms_per_user",
                self.max_rooms_per_user,
                d.rooms_per_user,
            )? as u64,
        };
        for (key, small, large, what) in [
            (
                "max_group_bytes",
                limits.max_object_bytes,
                limits.max_group_bytes,
                "max_object_bytes",
            ),
            (
                "session_cache_bytes",
                limits.max_group_bytes,
                limits.session_cache_bytes,
                "max_group_bytes",
            ),
            (
                "address_cache_bytes",
                limits.session_cache_bytes,
                limits.address_cache_bytes,
                "session_cache_bytes",
            ),
            (
                "cache_bytes",
                limits.address_cache_bytes,
                limits.cache_bytes,
                "address_cache_bytes",
            ),
        ] {
            if large < small {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("must be at least {what} ({small})"),
                });
            }
        }
        let token_secret = token_secret(self.token_secret, self.token_secret_file.as_deref())?;
        let admin_password = secret_from(
            "admin_password",
            self.admin_password,
            self.admin_password_file.as_deref(),
        )?;
        if let Some(url) = &self.database_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError::Invalid {
                    key: "database_url",
                    reason: "must be a postgres:// URL".into(),
                });
            }
        }
        let cluster = cluster(
            ClusterKeys {
                redis_url: self.redis_url,
                node_id: self.node_id,
                node_region: self.node_region,
                node_quic_url: self.node_quic_url,
                node_webtransport_url: self.node_webtransport_url,
                cluster_secret: secret_from(
                    "cluster_secret",
                    self.cluster_secret,
                    self.cluster_secret_file.as_deref(),
                )?,
            },
            self.database_url.is_some(),
            token_secret.as_deref(),
        )?;
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid {
                    key: "tls_cert",
                    reason: "tls_cert and tls_key must be set together".into(),
                })
            }
        };
        let addr = |v: Option<SocketAddr>, d: &str| v.unwrap_or_else(|| d.parse().expect("valid"));
        let http_listen = addr(self.http_listen, "127.0.0.1:8080");
        let cert_check_interval = millis(
            "cert_check_interval_ms",
            self.cert_check_interval_ms,
            Duration::from_secs(3600),
        )?;
        let whip_defaults = crate::webrtc::WhipConfig::default();
        let whip = crate::webrtc::WhipConfig {
            listen: self.whip_listen.unwrap_or(whip_defaults.listen),
            public_addresses: self.whip_public_addresses,
            ice_servers: self.whip_ice_servers,
            max_sessions: positive(
                "max_whip_sessions",
                self.max_whip_sessions,
                whip_defaults.max_sessions,
            )?,
            idle_timeout: millis(
                "whip_idle_timeout_ms",
                self.whip_idle_timeout_ms,
                whip_defaults.idle_timeout,
            )?,
        };
        if whip.listen.ip().is_unspecified() && whip.public_addresses.is_empty() {
            return Err(ConfigError::Invalid {
                key: "whip_public_addresses",
                reason: "whip_listen binds every interface: name the address(es) to advertise"
                    .into(),
            });
        }
        let public_prefixes = public_prefixes(self.public_prefixes)?;
        let webhooks = webhooks(
            self.webhook_urls,
            secret_from(
                "webhook_secret",
                self.webhook_secret,
                self.webhook_secret_file.as_deref(),
            )?,
            self.webhook_retry_secs,
        )?;
        Ok(Settings {
            public_prefixes,
            whip,
            webtransport_listen: addr(self.webtransport_listen, "127.0.0.1:4443"),
            webtransport_public_port: self.webtransport_public_port,
            congestion: self.congestion.unwrap_or_default(),
            quic_listen: addr(self.quic_listen, "127.0.0.1:4444"),
            http_listen,
            http_plain: self
                .http_plain
                .unwrap_or_else(|| http_listen.ip().is_loopback()),
            cert_check_interval,
            data_dir: self.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            cert_dir: self.cert_dir.unwrap_or_else(|| "certs".into()),
            tls,
            hashing,
            http,
            api,
            token_secret,
            admin_password,
            database_url: self.database_url,
            cluster,
            web_dir: self.web_dir,
            webhooks,
            log_format: self.log_format.unwrap_or_default(),
            limits,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs.unwrap_or(5)),
            drain: Duration::from_millis(self.drain_ms.unwrap_or(3000)),
            stop_delay: Duration::from_millis(self.stop_delay_ms.unwrap_or(0)),
        })
    }
}

/// Most webhook endpoints.
const MAX_WEBHOOK_URLS: usize = 8;

/// The webhook endpoints checked: http(s) URLs, a secret of at least 24 bytes when any is set.
fn webhooks(
    urls: Vec<String>,
    secret: Option<String>,
    retry_secs: Option<u64>,
) -> Result<Option<crate::webhooks::WebhookSettings>, ConfigError> {
    let invalid = |key, reason: String| ConfigError::Invalid { key, reason };
    if urls.is_empty() {
        return Ok(None);
    }
    if urls.len() > MAX_WEBHOOK_URLS {
        return Err(invalid(
            "webhook_urls",
            format!("at most {MAX_WEBHOOK_URLS} endpoints"),
        ));
    }
    let urls = urls
        .iter()
        .map(|u| match url::Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(url),
            _ => Err(invalid(
                "webhook_urls",
                format!("{u:?} is not an http:// or https:// URL"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let secret = secret.ok_or_else(|| {
        invalid(
            "webhook_secret",
            "webhooks are signed: set webhook_secret or webhook_secret_file".into(),
        )
    })?;
    let secret = match crate::webhooks::secret_key(&secret) {
        Some(key) if key.len() >= 24 => key,
        Some(_) => {
            return Err(invalid(
                "webhook_secret",
                "must be at least 24 bytes (decoded, for a whsec_ secret)".into(),
            ))
        }
        None => {
            return Err(invalid(
                "webhook_secret",
                "a whsec_ secret must be base64 after the prefix".into(),
            ))
        }
    };
    let retry_for = Duration::from_secs(retry_secs.unwrap_or(600));
    if retry_for.is_zero() || retry_for > Duration::from_secs(7 * 24 * 3600) {
        return Err(invalid(
            "webhook_retry_secs",
            "must be 1 to 604800 seconds".into(),
        ));
    }
    Ok(Some(crate::webhooks::WebhookSettings {
        urls,
        secret,
        retry_for,
    }))
}

/// `public_prefixes` checked: each a valid namespace element other than `room`, no repeats.
fn public_prefixes(mut prefixes: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        key: "public_prefixes",
        reason,
    };
    if prefixes.len() > MAX_PUBLIC_PREFIXES {
        return Err(invalid(format!("at most {MAX_PUBLIC_PREFIXES} prefixes")));
    }
    for p in &prefixes {
        if p == crate::core::namespace::ROOM_PREFIX {
            return Err(invalid(
                "`room` holds the token-scoped rooms and cannot be opened".into(),
            ));
        }
        if !crate::core::namespace::valid_segment(p) {
            return Err(invalid(format!(
                "{p:?} is not one namespace element (1-64 of A-Z a-z 0-9 _ . -)"
            )));
        }
    }
    prefixes.sort();
    prefixes.dedup();
    Ok(prefixes)
}

/// A secret given as a value or as a file holding it (one trailing newline ignored); not both.
/// The cluster keys, read together.
struct ClusterKeys {
    redis_url: Option<String>,
    node_id: Option<String>,
    node_region: Option<String>,
    node_quic_url: Option<String>,
    node_webtransport_url: Option<String>,
    cluster_secret: Option<String>,
}

/// Cluster mode's settings when `redis_url` is set; what it needs besides is checked here.
fn cluster(
    keys: ClusterKeys,
    has_database: bool,
    token_secret: Option<&str>,
) -> Result<Option<crate::cluster::ClusterSettings>, ConfigError> {
    let invalid = |key: &'static str, reason: &str| ConfigError::Invalid {
        key,
        reason: reason.to_owned(),
    };
    let Some(redis_url) = keys.redis_url else {
        return Ok(None);
    };
    if !(redis_url.starts_with("redis://") || redis_url.starts_with("rediss://")) {
        return Err(invalid("redis_url", "must be a redis:// or rediss:// URL"));
    }
    if !has_database {
        return Err(invalid(
            "database_url",
            "a cluster shares one PostgreSQL store: set database_url",
        ));
    }
    let Some(token_secret) = token_secret else {
        return Err(invalid(
            "token_secret",
            "every node of a cluster verifies the others' tokens: set the same token_secret on each",
        ));
    };
    let node_id = keys
        .node_id
        .ok_or_else(|| invalid("node_id", "a cluster node needs an id"))?;
    let valid_id = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !valid_id(&node_id) {
        return Err(invalid("node_id", "1 to 64 letters, digits, '-' or '_'"));
    }
    let region = keys.node_region.unwrap_or_else(|| "default".into());
    if !valid_id(&region) {
        return Err(invalid(
            "node_region",
            "1 to 64 letters, digits, '-' or '_'",
        ));
    }
    let secret = keys.cluster_secret.ok_or_else(|| {
        invalid(
            "cluster_secret",
            "the nodes of a cluster authenticate to each other with it: set it",
        )
    })?;
    if secret.len() < 32 {
        return Err(invalid("cluster_secret", "must be at least 32 bytes"));
    }
    if secret == token_secret {
        return Err(invalid(
            "cluster_secret",
            "must differ from token_secret (a user token must never pass as a node)",
        ));
    }
    let url = |key: &'static str, value: Option<String>, schemes: &[&str]| {
        value
            .map(|v| {
                let u = url::Url::parse(&v).map_err(|e| invalid(key, &e.to_string()))?;
                if !schemes.contains(&u.scheme()) || u.host().is_none() {
                    return Err(invalid(
                        key,
                        &format!("must be a {} URL", schemes.join(" or ")),
                    ));
                }
                Ok(u)
            })
            .transpose()
    };
    Ok(Some(crate::cluster::ClusterSettings {
        redis_url,
        node_id,
        region,
        quic_url: url("node_quic_url", keys.node_quic_url, &["moqt"])?,
        webtransport_url: url(
            "node_webtransport_url",
            keys.node_webtransport_url,
            &["https"],
        )?,
        secret,
    }))
}

/// Where state lives unless `data_dir` says otherwise (relative to the working directory).
const DEFAULT_DATA_DIR: &str = "data";

impl Config {
    /// What `roomcast token` needs and nothing more: the token secret (checked as
    /// [`Config::resolve`] checks it) and the data directory a generated one lives in. The rest
    /// of a configuration made for `serve` (a cluster's environment, say) is not looked at.
    pub fn token_signing(self) -> Result<(Option<String>, std::path::PathBuf), ConfigError> {
        let secret = token_secret(self.token_secret, self.token_secret_file.as_deref())?;
        Ok((
            secret,
            self.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
        ))
    }
}

/// `token_secret` or the contents of `token_secret_file`, at least 32 bytes.
fn token_secret(value: Option<String>, file: Option<&Path>) -> Result<Option<String>, ConfigError> {
    let secret = secret_from("token_secret", value, file)?;
    if secret.as_ref().is_some_and(|s| s.len() < 32) {
        return Err(ConfigError::Invalid {
            key: "token_secret",
            reason: "must be at least 32 bytes".into(),
        });
    }
    Ok(secret)
}

fn secret_from(
    key: &'static str,
    value: Option<String>,
    file: Option<&Path>,
) -> Result<Option<String>, ConfigError> {
    let Some(path) = file else {
        return Ok(value);
    };
    if value.is_some() {
        return Err(ConfigError::Invalid {
            key,
            reason: format!("set {key} or {key}_file, not both"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
        key,
        reason: format!("{}: {e}", path.display()),
    })?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(Some(text.strip_suffix('\r').unwrap_or(text).to_owned()))
}
