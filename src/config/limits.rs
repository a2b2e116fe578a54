//! Bounds on everything a peer can make the relay hold, and their defaults.

use std::time::Duration;

/// Most groups a track may retain (`retained_groups`).
pub const MAX_RETAINED_GROUPS: usize = 1000;

/// Bounds on everything a peer can make the relay hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_sessions: usize,
    pub max_subscriptions: usize,
    pub max_namespaces_per_session: usize,
    pub max_namespaces_per_room: usize,
    pub upstream_timeout: Duration,
    pub max_sessions_per_address: usize,
    pub max_sessions_per_identity: usize,
    pub setup_timeout: Duration,
    pub max_object_bytes: usize,
    pub max_group_bytes: usize,
    pub retained_groups: usize,
    pub track_cache_bytes: usize,
    pub cache_bytes: usize,
    pub address_cache_bytes: usize,
    pub session_cache_bytes: usize,
    pub write_timeout: Duration,
    pub send_window_bytes: usize,
}

impl Limits {
    /// What one relayed track may hold.
    pub fn track(&self) -> crate::core::track::TrackLimits {
        crate::core::track::TrackLimits {
            max_object_bytes: self.max_object_bytes,
            max_group_bytes: self.max_group_bytes,
            retained_groups: self.retained_groups,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 4096,
            max_subscriptions: 1024,
            max_namespaces_per_session: 16,
            max_namespaces_per_room: 1024,
            upstream_timeout: Duration::from_secs(5),
            max_sessions_per_address: 64,
            max_sessions_per_identity: 4,
            setup_timeout: Duration::from_secs(3),
            max_object_bytes: 4 * 1024 * 1024,
            max_group_bytes: 16 * 1024 * 1024,
            retained_groups: 2,
            track_cache_bytes: 32 * 1024 * 1024,
            cache_bytes: 2048 * 1024 * 1024,
            address_cache_bytes: 128 * 1024 * 1024,
            session_cache_bytes: 64 * 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            send_window_bytes: 4 * 1024 * 1024,
        }
    }
}
