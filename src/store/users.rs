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
    /// Deleted; the unexpired media tokens issued to it are revoked, as (jti, expiry).
    Deleted(Vec<(String, u64)>),
    /// Not deleted: the account owns this many rooms (delete them first).
    OwnsRooms(u64),
    /// No such account.
    Unknown,
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

    /// Deletes account `user_id` in one transaction, unless it owns rooms: its login sessions
    /// and memberships go with it, the invites it redeemed (spent) are dropped, and every
    /// unexpired media token issued to its name is revoked. Bans on the name and its chat
    /// messages stay: a new account of the same name is still banned where it was.
    pub async fn delete_account(&self, user_id: i64) -> Result<Deletion, StoreError> {
        let mut tx = self.pool.begin().await?;
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
        sqlx::query("DELETE FROM invites WHERE used_by = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Deletion::Deleted(tokens))
    }
}
