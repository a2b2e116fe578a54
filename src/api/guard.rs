//! What keeps one client from exhausting the API for everyone: password hashing through a
//! bounded pool, and rate limits per client address for what costs a hash (login, register,
//! a room join with a password).
//!
//! A login from an unknown username still costs a full argon2id (so timing does not reveal
//! which names exist), so logins are limited per address as well as per address *and*
//! username: a flood of random names from one address is refused, and someone else's failed
//! logins cannot lock a victim out. Every hash waits for one of the pool's permits (sized to
//! the cores); past the queue timeout the request gets 503 `busy` instead of piling up
//! blocking threads.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

use super::error::{ApiError, ApiResult};
use crate::auth::password;
use crate::transport::client_key;

/// Logins per client address per minute, whatever the usernames.
pub const LOGINS_PER_ADDRESS: u32 = 30;
/// Logins per client address and username per minute.
pub const LOGINS_PER_ADDRESS_AND_USER: u32 = 10;
/// Registrations per client address per hour (burst 10: a class behind one NAT).
pub const REGISTRATIONS_PER_ADDRESS: u32 = 60;
/// Joins that check a room password per account and room per minute.
pub const ROOM_PASSWORD_TRIES: u32 = 10;

/// Joins (each mints a media token and records it) per account per minute.
pub const JOINS_PER_MINUTE: u32 = 30;

/// Moderation actions (grants, roles, mutes, kicks, bans, floor) per moderator per second.
pub const MODERATION_PER_SECOND: u32 = 10;
/// Moderation actions a moderator may take at once before the per-second rate applies.
pub const MODERATION_BURST: u32 = 30;

/// Settings of the hashing pool.
#[derive(Debug, Clone, Copy)]
pub struct HashingLimits {
    /// Hashes computed at once (default: the number of cores).
    pub concurrency: usize,
    /// How long a request waits for a permit before it is refused with 503.
    pub queue_timeout: Duration,
}

impl Default for HashingLimits {
    fn default() -> Self {
        Self {
            concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue_timeout: Duration::from_secs(2),
        }
    }
}

/// The API's abuse guards. Cheap to clone.
#[derive(Clone)]
pub struct Guards {
    hashing: Arc<Semaphore>,
    queue_timeout: Duration,
    login_address: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    login_address_user: Arc<DefaultKeyedRateLimiter<(IpAddr, String)>>,
    register_address: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    room_password: Arc<DefaultKeyedRateLimiter<(i64, String)>>,
    moderation: Arc<DefaultKeyedRateLimiter<i64>>,
    join: Arc<DefaultKeyedRateLimiter<i64>>,
}

fn keyed<K: Clone + Eq + std::hash::Hash>(q: Quota) -> Arc<DefaultKeyedRateLimiter<K>> {
    Arc::new(RateLimiter::keyed(q))
}

fn n(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN)
}

impl Guards {
    pub fn new(limits: HashingLimits) -> Self {
        Self {
            hashing: Arc::new(Semaphore::new(limits.concurrency.max(1))),
            queue_timeout: limits.queue_timeout,
            login_address: keyed(Quota::per_minute(n(LOGINS_PER_ADDRESS))),
            login_address_user: keyed(Quota::per_minute(n(LOGINS_PER_ADDRESS_AND_USER))),
            register_address: keyed(
                Quota::per_hour(n(REGISTRATIONS_PER_ADDRESS)).allow_burst(n(10)),
            ),
            room_password: keyed(Quota::per_minute(n(ROOM_PASSWORD_TRIES))),
            moderation: keyed(
                Quota::per_second(n(MODERATION_PER_SECOND)).allow_burst(n(MODERATION_BURST)),
            ),
            join: keyed(Quota::per_minute(n(JOINS_PER_MINUTE))),
        }
    }

    /// A login attempt (or a password change) from `ip` for `username` (canonical), or 429.
    /// The address is charged first, so keys for the pair exist only within its allowance.
    pub fn login(&self, ip: IpAddr, username: &str) -> ApiResult<()> {
        let ip = client_key(ip);
        limited(self.login_address.check_key(&ip).is_err())?;
        limited(
            self.login_address_user
                .check_key(&(ip, username.to_owned()))
                .is_err(),
        )
    }

    /// A registration from `ip`, or 429.
    pub fn register(&self, ip: IpAddr) -> ApiResult<()> {
        limited(self.register_address.check_key(&client_key(ip)).is_err())
    }

    /// A room password check by user `user_id` for `room`, or 429. Keyed by account (every
    /// account cost a registration), so a class behind one address is not refused.
    pub fn room_password(&self, user_id: i64, room: &str) -> ApiResult<()> {
        limited(
            self.room_password
                .check_key(&(user_id, room.to_owned()))
                .is_err(),
        )
    }

    /// A moderation action by user `user_id`, or 429.
    pub fn moderation(&self, user_id: i64) -> ApiResult<()> {
        if self.moderation.check_key(&user_id).is_err() {
            return Err(ApiError::too_many("too many moderation actions; slow down"));
        }
        Ok(())
    }

    /// A join by user `user_id`, or 429: every join mints a media token the store remembers
    /// until it expires, so joins are paced per account (a reconnecting client needs a few).
    pub fn join(&self, user_id: i64) -> ApiResult<()> {
        if self.join.check_key(&user_id).is_err() {
            return Err(ApiError::too_many("too many joins; try again in a minute"));
        }
        Ok(())
    }

    /// Setting a room password (create, update) from `ip` costs a hash: limited like a
    /// registration.
    pub fn set_room_password(&self, ip: IpAddr) -> ApiResult<()> {
        self.register(ip)
    }

    /// Hashes `password` on a blocking thread once a permit is free.
    pub async fn hash(&self, password: String) -> ApiResult<String> {
        // The permit lives in the blocking job: a client that hangs up cannot free its slot
        // while its hash is still being computed.
        let permit = self.permit().await?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            password::hash(&password)
        })
        .await
        .map_err(|_| ApiError::internal("hashing failed"))?
        .map_err(ApiError::internal)
    }

    /// Whether `password` matches `phc`, checked once a permit is free.
    pub async fn verify(&self, password: String, phc: String) -> ApiResult<bool> {
        let permit = self.permit().await?;
        Ok(tokio::task::spawn_blocking(move || {
            let _permit = permit;
            password::verify(&password, &phc)
        })
        .await
        .unwrap_or(false))
    }

    async fn permit(&self) -> ApiResult<tokio::sync::OwnedSemaphorePermit> {
        match tokio::time::timeout(self.queue_timeout, self.hashing.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(ApiError::busy(
                "too many password checks at once; try again shortly",
            )),
        }
    }

    /// Forgets rate-limit keys whose quota has refilled (bounded memory).
    pub fn retain_recent(&self) {
        self.login_address.retain_recent();
        self.login_address_user.retain_recent();
        self.register_address.retain_recent();
        self.room_password.retain_recent();
        self.moderation.retain_recent();
        self.join.retain_recent();
        self.login_address.shrink_to_fit();
        self.login_address_user.shrink_to_fit();
        self.register_address.shrink_to_fit();
        self.room_password.shrink_to_fit();
        self.moderation.shrink_to_fit();
        self.join.shrink_to_fit();
    }
}

fn limited(refused: bool) -> ApiResult<()> {
    if refused {
        Err(ApiError::too_many(
            "too many attempts; try again in a minute",
        ))
    } else {
        Ok(())
    }
}
