//! Moderation that outlives a restart: bans, revoked tokens, room closures, and a
//! moderator's live grant overrides and mutes.

use super::{Store, StoreError};
use crate::auth::token::now_secs;
use crate::auth::Grants;

impl Store {
    // ----- bans and revocations -----

    /// Bans, grant overrides and mutes `room` holds for identities other than `except`: what
    /// [`crate::api::ApiLimits::moderation_entries_per_room`] bounds.
    pub async fn moderation_entries(&self, room: &str, except: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM bans WHERE room_id = $1 AND username != $2) \
             + (SELECT COUNT(*) FROM grant_overrides WHERE room_id = $3 AND identity != $4) \
             + (SELECT COUNT(*) FROM mutes WHERE room_id = $5 AND identity != $6)",
        )
        .bind(room)
        .bind(except)
        .bind(room)
        .bind(except)
        .bind(room)
        .bind(except)
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }

    /// Bans `username` from `room` and, in the same transaction, takes away what they held
    /// there: their membership (and so any role), a moderator's grant overrides and mutes.
    pub async fn ban(&self, room: &str, username: &str, reason: &str) -> Result<(), StoreError> {
        // Canonical whatever the caller passed: PostgreSQL compares case-sensitively.
        let username = crate::auth::token::canonical_identity(username);
        let username = username.as_str();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO bans (room_id, username, reason, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (room_id, username) DO UPDATE SET reason = excluded.reason",
        )
        .bind(room)
        .bind(username)
        .bind(reason)
        .bind(now_secs() as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM members WHERE room_id = $1 AND user_id IN \
             (SELECT id FROM users WHERE username = $2)",
        )
        .bind(room)
        .bind(username)
        .execute(&mut *tx)
        .await?;
        for table in ["grant_overrides", "mutes"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE room_id = $1 AND identity = $2"
            ))
            .bind(room)
            .bind(username)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a media token a join issued from the login session `login_jti`, until it
    /// expires; expired records are dropped.
    pub async fn issued(
        &self,
        jti: &str,
        room: &str,
        username: &str,
        expires_at: u64,
        login_jti: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM issued_tokens WHERE expires_at < $1")
            .bind(now_secs() as i64)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO issued_tokens (jti, room_id, username, expires_at, login_jti) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(jti)
        .bind(room)
        .bind(username)
        .bind(expires_at as i64)
        .bind(login_jti)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends the login session `login_jti` and revokes, in the same transaction, every
    /// unexpired media token its joins issued; returns those as (jti, expiry).
    pub async fn logout(&self, login_jti: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM login_sessions WHERE jti = $1")
            .bind(login_jti)
            .execute(&mut *tx)
            .await?;
        let tokens = revoke_issued(&mut tx, "login_jti = $1", login_jti).await?;
        tx.commit().await?;
        Ok(tokens)
    }

    /// Sets a user's password and, in the same transaction, ends every login session of
    /// theirs and revokes every unexpired media token issued to them; returns those tokens.
    pub async fn set_password(
        &self,
        user_id: i64,
        hash: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let username: String = sqlx::query_scalar(
            "UPDATE users SET password_hash = $1 WHERE id = $2 RETURNING username",
        )
        .bind(hash)
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM login_sessions WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let tokens = revoke_issued(&mut tx, "username = $1", &username).await?;
        tx.commit().await?;
        Ok(tokens)
    }

    /// Revokes, in one transaction, every unexpired token issued to `username` for `room`
    /// and the `extra` ones (held by open sessions, e.g. minted by an application); returns
    /// all of them as (jti, expiry).
    pub async fn revoke_holder(
        &self,
        room: &str,
        username: &str,
        extra: &[(String, u64)],
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT jti, expires_at FROM issued_tokens \
             WHERE room_id = $1 AND username = $2 AND expires_at >= $3",
        )
        .bind(room)
        .bind(username)
        .bind(now_secs() as i64)
        .fetch_all(&mut *tx)
        .await?;
        let mut all: Vec<(String, u64)> = rows.into_iter().map(|(j, e)| (j, e as u64)).collect();
        all.extend(extra.iter().cloned());
        insert_revoked(&mut tx, &all).await?;
        tx.commit().await?;
        Ok(all)
    }

    pub async fn unban(&self, room: &str, username: &str) -> Result<bool, StoreError> {
        // Canonical whatever the caller passed: PostgreSQL compares case-sensitively.
        let username = crate::auth::token::canonical_identity(username);
        let username = username.as_str();
        let r = sqlx::query("DELETE FROM bans WHERE room_id = $1 AND username = $2")
            .bind(room)
            .bind(username)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Every ban, as (room, username), for the relay's in-memory check.
    pub async fn bans(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(sqlx::query_as("SELECT room_id, username FROM bans")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Persists a revoked token id until the token's expiry.
    pub async fn revoke(&self, jti: &str, expires_at: u64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(expires_at as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Revocations still in force, as (jti, expiry); expired ones are deleted.
    pub async fn revocations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let now = now_secs() as i64;
        sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT jti, expires_at FROM revoked_tokens")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|(j, e)| (j, e as u64)).collect())
    }

    // ----- live moderation -----

    /// Stores the grants a moderator set for `identity` (`None` forgets them).
    pub async fn set_override(
        &self,
        room: &str,
        identity: &str,
        grants: Option<&Grants>,
    ) -> Result<(), StoreError> {
        match grants {
            Some(g) => sqlx::query(
                "INSERT INTO grant_overrides (room_id, identity, grants) VALUES ($1, $2, $3) \
                 ON CONFLICT (room_id, identity) DO UPDATE SET grants = excluded.grants",
            )
            .bind(room)
            .bind(identity)
            .bind(serde_json::to_string(g).unwrap_or_else(|_| "[]".into())),
            None => sqlx::query("DELETE FROM grant_overrides WHERE room_id = $1 AND identity = $2")
                .bind(room)
                .bind(identity),
        }
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every stored override, as (room, identity, grants). A row that does not parse (written
    /// by a newer version) is skipped with a warning rather than granting anything.
    pub async fn overrides(&self) -> Result<Vec<(String, String, Grants)>, StoreError> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT room_id, identity, grants FROM grant_overrides")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(room, who, g)| match serde_json::from_str(&g) {
                Ok(g) => Some((room, who, g)),
                Err(e) => {
                    tracing::warn!(%room, identity = %who, error = %e, "stored grants ignored");
                    None
                }
            })
            .collect())
    }

    pub async fn set_muted(
        &self,
        room: &str,
        identity: &str,
        track: &str,
        muted: bool,
    ) -> Result<(), StoreError> {
        let sql = if muted {
            "INSERT INTO mutes (room_id, identity, track) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM mutes WHERE room_id = $1 AND identity = $2 AND track = $3"
        };
        sqlx::query(sql)
            .bind(room)
            .bind(identity)
            .bind(track)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every stored mute, as (room, identity, track).
    pub async fn mutes(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        Ok(sqlx::query_as("SELECT room_id, identity, track FROM mutes")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Persists a room closure until `expires_at` and forgets the room's live moderation
    /// (grant overrides, mutes), in one transaction. A closure refuses the tokens issued
    /// before `closed_at`; those it cannot tell by their issue time, issued in its own second,
    /// are revoked in the same transaction by `jti`: every token a join issued for the room
    /// that expires at `revoke_from` or later, and `held` (the room's sessions'). Returns
    /// those as (jti, expiry).
    pub async fn close_room(
        &self,
        room: &str,
        closed_at: u64,
        deleted: bool,
        expires_at: u64,
        revoke_from: Option<u64>,
        held: &[(String, u64)],
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        for table in ["grant_overrides", "mutes"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE room_id = $1"))
                .bind(room)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO room_closures (room_id, closed_at, deleted, expires_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (room_id) DO UPDATE SET closed_at = excluded.closed_at, \
             deleted = CASE WHEN excluded.deleted > room_closures.deleted \
             THEN excluded.deleted ELSE room_closures.deleted END, expires_at = excluded.expires_at",
        )
        .bind(room)
        .bind(closed_at as i64)
        .bind(i64::from(deleted))
        .bind(expires_at as i64)
        .execute(&mut *tx)
        .await?;
        let mut tokens = match revoke_from {
            Some(from) => revoke_issued_from(&mut tx, "room_id = $1", room, from).await?,
            None => Vec::new(),
        };
        insert_revoked(&mut tx, held).await?;
        tokens.extend(held.iter().cloned());
        tx.commit().await?;
        Ok(tokens)
    }

    /// Closures still in force, as (room, closed_at, deleted); expired ones are deleted.
    pub async fn closures(&self) -> Result<Vec<(String, u64, bool)>, StoreError> {
        let now = now_secs() as i64;
        sqlx::query("DELETE FROM room_closures WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        let rows: Vec<(String, i64, i64)> =
            sqlx::query_as("SELECT room_id, closed_at, deleted FROM room_closures")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(r, c, d)| (r, c as u64, d != 0))
            .collect())
    }

    pub async fn is_banned(&self, room: &str, username: &str) -> Result<bool, StoreError> {
        // Canonical whatever the caller passed: PostgreSQL compares case-sensitively.
        let username = crate::auth::token::canonical_identity(username);
        let username = username.as_str();
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM bans WHERE room_id = $1 AND username = $2")
                .bind(room)
                .bind(username)
                .fetch_one(&self.pool)
                .await?;
        Ok(n > 0)
    }
}

/// Revokes the unexpired issued tokens `filter` (one `$1`, bound to `value`) selects.
pub(super) async fn revoke_issued(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    filter: &str,
    value: &str,
) -> Result<Vec<(String, u64)>, StoreError> {
    revoke_issued_from(tx, filter, value, now_secs()).await
}

/// Revokes the issued tokens `filter` (one `$1`, bound to `value`) selects that expire at
/// `from` or later.
async fn revoke_issued_from(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    filter: &str,
    value: &str,
    from: u64,
) -> Result<Vec<(String, u64)>, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT jti, expires_at FROM issued_tokens WHERE {filter} AND expires_at >= $2"
    ))
    .bind(value)
    .bind(from as i64)
    .fetch_all(&mut **tx)
    .await?;
    let rows: Vec<(String, u64)> = rows.into_iter().map(|(j, e)| (j, e as u64)).collect();
    insert_revoked(tx, &rows).await?;
    Ok(rows)
}

/// Stores `tokens` (jti, expiry) as revoked, each until its expiry.
async fn insert_revoked(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tokens: &[(String, u64)],
) -> Result<(), StoreError> {
    for (jti, exp) in tokens {
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(*exp as i64)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Tables whose rows mean nothing once `expires_at` has passed.
const EXPIRING: [&str; 5] = [
    "login_sessions",
    "invites",
    "revoked_tokens",
    "issued_tokens",
    "room_closures",
];

impl Store {
    /// Deletes every row that expired before `now` (seconds): login sessions, invites,
    /// revocations and issued-token records of tokens that can no longer be valid, and room
    /// closures past the last token they refuse; attachments no message refers to once their
    /// grace period ([`super::ATTACHMENT_GRACE_SECS`]) is over. Returns how many rows went.
    pub async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut gone = 0;
        for table in EXPIRING {
            gone += sqlx::query(&format!("DELETE FROM {table} WHERE expires_at < $1"))
                .bind(now as i64)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        gone += super::chat::collect_attachments(
            &mut *tx,
            now.saturating_sub(super::ATTACHMENT_GRACE_SECS),
        )
        .await?;
        tx.commit().await?;
        Ok(gone)
    }
}
