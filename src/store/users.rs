//! What administrators do to accounts: list them, delete one.

use serde::Serialize;

use super::{Store, StoreError};

/// An account as an administrator lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Account {
    pub id: i64,
    pub username: String,
    /// 0 or 1 in both schemas; serialized as a boolean.
    #[serde(serialize_with = "flag")]
    pub is_admin: i64,
    pub created_at: i64,
    pub rooms_owned: i64,
}

fn flag<S: serde::Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bool(*v != 0)
}

/// What deleting an account did.
#[derive(Debug, PartialEq, Eq)]
pub enum Deletion {
    Deleted(Deleted),
    /// Not deleted: the account owns this many rooms (delete them first).
    OwnsRooms(u64),
    /// No such account.
    Unknown,
    /// Not deleted: the administrator asking is no longer one (deleted or demoted meanwhile).
    CallerGone,
}

/// What went with a deleted account, for the live state.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Unexpired media tokens issued to it, now revoked, as (jti, expiry).
    pub tokens: Vec<(String, u64)>,
    /// Rooms where a moderator's grant override of its name was lifted.
    pub overrides: Vec<String>,
    /// (room, track) mutes of its name lifted.
    pub mutes: Vec<(String, String)>,
}

impl Store {
    /// Up to `limit` accounts in username order, after `after` (the last name of the
    /// previous page).
    pub async fn accounts(&self, after: &str, limit: i64) -> Result<Vec<Account>, StoreError> {
        Ok(sqlx::query_as::<_, Account>(
            "SELECT id, username, is_admin, created_at, \
             (SELECT COUNT(*) FROM rooms WHERE owner_id = users.id) AS rooms_owned \
             FROM users WHERE username > $1 ORDER BY username LIMIT $2",
        )
        .bind(crate::auth::token::canonical_identity(after))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The ids of the rooms `user_id` owns.
    pub async fn rooms_of(&self, user_id: i64) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM rooms WHERE owner_id = $1 ORDER BY id")
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Ends every login session of `user_id` (it can do nothing more through the API).
    pub async fn end_logins(&self, user_id: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM login_sessions WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes account `user_id` for the administrator `caller` in one transaction, unless it
    /// owns rooms: its login sessions and memberships go with it, the invites it redeemed
    /// (spent) are dropped, every unexpired media token issued to its name is revoked, and a
    /// moderator's overrides and mutes of its name are lifted (a new account of that name
    /// starts with none). Bans on the name and its chat messages stay: a new account of the
    /// same name is still banned where it was.
    ///
    /// The caller's row is locked first (a no-op update): two administrators deleting each
    /// other at once cannot both succeed, so one administrator always remains. A change that
    /// races the deletion (the account creating a room) fails it with
    /// [`StoreError::Conflict`].
    pub async fn delete_account(&self, user_id: i64, caller: i64) -> Result<Deletion, StoreError> {
        self.try_delete_account(user_id, caller)
            .await
            .map_err(|e| match e {
                StoreError::Db(e) => raced(e),
                e => e,
            })
    }

    async fn try_delete_account(&self, user_id: i64, caller: i64) -> Result<Deletion, StoreError> {
        let mut tx = self.pool.begin().await?;
        let locked =
            sqlx::query("UPDATE users SET is_admin = is_admin WHERE id = $1 AND is_admin = 1")
                .bind(caller)
                .execute(&mut *tx)
                .await?;
        if locked.rows_affected() == 0 {
            return Ok(Deletion::CallerGone);
        }
        let username: Option<String> =
            sqlx::query_scalar("SELECT username FROM users WHERE id = $1")
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(username) = username else {
            return Ok(Deletion::Unknown);
        };
        let owned: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rooms WHERE owner_id = $1")
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
        if owned > 0 {
            return Ok(Deletion::OwnsRooms(owned as u64));
        }
        let tokens = super::moderation::revoke_issued(&mut tx, "username = $1", &username).await?;
        let overrides: Vec<String> =
            sqlx::query_scalar("DELETE FROM grant_overrides WHERE identity = $1 RETURNING room_id")
                .bind(&username)
                .fetch_all(&mut *tx)
                .await?;
        let mutes: Vec<(String, String)> =
            sqlx::query_as("DELETE FROM mutes WHERE identity = $1 RETURNING room_id, track")
                .bind(&username)
                .fetch_all(&mut *tx)
                .await?;
        for statement in [
            "DELETE FROM invites WHERE used_by = $1",
            "DELETE FROM users WHERE id = $1",
        ] {
            sqlx::query(statement)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Deletion::Deleted(Deleted {
            tokens,
            overrides,
            mutes,
        }))
    }
}

/// A failure of a transaction that raced another one: a foreign key the other just used
/// (PostgreSQL 23503), a deadlock (40P01) or a serialization failure (40001), SQLite's busy
/// snapshot; anything else is the database's.
fn raced(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(d) = &e {
        let code = d.code().unwrap_or_default();
        let raced = matches!(code.as_ref(), "23503" | "40P01" | "40001" | "517" | "787")
            || d.is_foreign_key_violation();
        if raced {
            return StoreError::Conflict;
        }
    }
    StoreError::Db(e)
}
