//! Chat messages and image attachments, with quotas and collection of what nobody refers to.

use super::{AttachmentQuota, ChatMessage, NewAttachment, QuotaHit, Store, StoreError};
use crate::auth::token::now_secs;

/// Seconds an uploaded attachment may wait for a message that refers to it before it is
/// collected (by [`Store::purge_expired`]).
pub const ATTACHMENT_GRACE_SECS: u64 = 15 * 60;

/// (by this uploader, in this room, in all) bytes of attachments stored.
pub type AttachmentUsage = (u64, u64, u64);

impl Store {
    /// Stores an attachment unless it would take its uploader, its room or the relay past
    /// `quota`; the check and the insert are one statement, so concurrent uploads cannot
    /// overshoot together. Returns the quota that refused it.
    pub async fn add_attachment(
        &self,
        a: NewAttachment<'_>,
        quota: AttachmentQuota,
    ) -> Result<Option<QuotaHit>, StoreError> {
        let size = a.data.len() as i64;
        let stored = sqlx::query(
            "INSERT INTO attachments (id, room_id, uploader, mime, data, size, created_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7 WHERE \
             (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM attachments WHERE uploader = $8) + $9 <= $10 AND \
             (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM attachments WHERE room_id = $11) + $12 <= $13 AND \
             (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM attachments) + $14 <= $15",
        )
        .bind(a.id)
        .bind(a.room)
        .bind(a.uploader)
        .bind(a.mime)
        .bind(a.data)
        .bind(size)
        .bind(now_secs() as i64)
        .bind(a.uploader)
        .bind(size)
        .bind(clamp(quota.uploader))
        .bind(a.room)
        .bind(size)
        .bind(clamp(quota.room))
        .bind(size)
        .bind(clamp(quota.total))
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        if stored {
            return Ok(None);
        }
        let usage = self.attachment_usage(a.uploader, a.room).await?;
        Ok(Some(
            exceeded(usage, a.data.len() as u64, quota).unwrap_or(QuotaHit::Total),
        ))
    }

    /// Bytes stored by `uploader` (in all rooms), in `room`, and in all.
    pub async fn attachment_usage(
        &self,
        uploader: &str,
        room: &str,
    ) -> Result<AttachmentUsage, StoreError> {
        let (u, r, t): (i64, i64, i64) = sqlx::query_as(
            "SELECT \
             (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM attachments WHERE uploader = $1), \
             (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM attachments WHERE room_id = $2), \
             (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM attachments)",
        )
        .bind(uploader)
        .bind(room)
        .fetch_one(&self.pool)
        .await?;
        Ok((u as u64, r as u64, t as u64))
    }

    /// (room, mime, bytes) of an attachment.
    pub async fn attachment(
        &self,
        id: &str,
    ) -> Result<Option<(String, String, Vec<u8>)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT room_id, mime, data FROM attachments WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Stores a message and returns it with its id; stored before anyone is told of it. The
    /// room keeps its newest `keep` messages: older ones go in the same transaction (their
    /// attachments are collected later, once nothing refers to them).
    pub async fn add_message(
        &self,
        room: &str,
        username: &str,
        text: &str,
        attachment: Option<&str>,
        keep: u64,
    ) -> Result<ChatMessage, StoreError> {
        let created_at = now_secs() as i64;
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO chat_messages (room_id, username, text, attachment_id, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(room)
        .bind(username)
        .bind(text)
        .bind(attachment)
        .bind(created_at)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM chat_messages WHERE room_id = $1 AND id <= \
             (SELECT id FROM chat_messages WHERE room_id = $2 ORDER BY id DESC LIMIT 1 OFFSET $3)",
        )
        .bind(room)
        .bind(room)
        .bind(clamp(keep))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ChatMessage {
            id,
            username: username.to_owned(),
            text: text.to_owned(),
            attachment: attachment.map(str::to_owned),
            created_at,
        })
    }

    /// Newest first, strictly older than `before` when given.
    pub async fn history(
        &self,
        room: &str,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        Ok(sqlx::query_as::<_, ChatMessage>(
            "SELECT id, username, text, attachment_id AS attachment, created_at FROM chat_messages \
             WHERE room_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(room)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Deletes attachments uploaded before `before` (seconds) that no message refers to.
pub(super) async fn collect_attachments<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Any>,
    before: u64,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "DELETE FROM attachments WHERE created_at < $1 AND NOT EXISTS \
         (SELECT 1 FROM chat_messages WHERE attachment_id = attachments.id)",
    )
    .bind(before as i64)
    .execute(db)
    .await?
    .rows_affected())
}

/// The first quota that `size` more bytes would exceed, given `usage`.
pub fn exceeded(usage: AttachmentUsage, size: u64, quota: AttachmentQuota) -> Option<QuotaHit> {
    let (u, r, t) = usage;
    if u.saturating_add(size) > quota.uploader {
        Some(QuotaHit::Uploader)
    } else if r.saturating_add(size) > quota.room {
        Some(QuotaHit::Room)
    } else if t.saturating_add(size) > quota.total {
        Some(QuotaHit::Total)
    } else {
        None
    }
}

/// SQLite integers are signed.
fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
