//! Chat: text with emoji and image attachments, stored before it is acknowledged.

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::{Body, MediaUser};
use super::rooms::load;
use super::ApiState;
use crate::auth::Grant;
use crate::store::{AttachmentQuota, NewAttachment, QuotaHit};

/// Longest message, in characters (an emoji is one or a few).
pub const MAX_TEXT_CHARS: usize = 2000;
/// Largest image attachment.
pub const MAX_IMAGE_BYTES: usize = 2 * 1024 * 1024;
/// Most messages per history page.
pub const MAX_PAGE: i64 = 100;

/// What chat may store: attachment quotas and the history kept per room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatLimits {
    pub quota: AttachmentQuota,
    /// Newest messages kept per room; older ones are deleted as new ones arrive.
    pub history_messages: u64,
}

impl Default for ChatLimits {
    fn default() -> Self {
        const MIB: u64 = 1024 * 1024;
        Self {
            quota: AttachmentQuota {
                uploader: 256 * MIB,
                room: 1024 * MIB,
                total: 16 * 1024 * MIB,
            },
            history_messages: 10_000,
        }
    }
}

fn over_quota(hit: QuotaHit, quota: AttachmentQuota) -> ApiError {
    let mib = |b: u64| b / (1024 * 1024);
    let message = match hit {
        QuotaHit::Uploader => format!(
            "your attachments would exceed your quota of {} MiB",
            mib(quota.uploader)
        ),
        QuotaHit::Room => format!(
            "this room's attachments would exceed its quota of {} MiB",
            mib(quota.room)
        ),
        QuotaHit::Total => "the relay's attachment storage is full".to_owned(),
    };
    ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded", message)
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "images are at most 2 MiB",
    )
}

const IMAGE_TYPES: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];

fn member(me: &MediaUser, room: &str) -> ApiResult<()> {
    if me.claims.room != room {
        return Err(ApiError::forbidden(
            "wrong_room",
            "token is for another room",
        ));
    }
    Ok(())
}

fn may_chat(s: &ApiState, me: &MediaUser, room: &str) -> ApiResult<()> {
    member(me, room)?;
    if !s.relay.access().grants(&me.claims).contains(&Grant::Chat) {
        return Err(ApiError::forbidden(
            "missing_grant",
            "the chat grant is required",
        ));
    }
    if s.chat_limiter
        .check_key(&(room.to_owned(), me.claims.sub.clone()))
        .is_err()
    {
        return Err(ApiError::too_many("sending too fast; slow down"));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    #[serde(default)]
    pub text: String,
    pub attachment: Option<String>,
}

pub async fn send(
    State(s): State<ApiState>,
    me: MediaUser,
    Path(room): Path<String>,
    Body(m): Body<NewMessage>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    load(&s, &room).await?;
    may_chat(&s, &me, &room)?;
    if m.text.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::invalid(
            "text_too_long",
            format!("messages are at most {MAX_TEXT_CHARS} characters"),
        ));
    }
    if m.text.trim().is_empty() && m.attachment.is_none() {
        return Err(ApiError::invalid(
            "empty_message",
            "a message needs text or an attachment",
        ));
    }
    if let Some(a) = &m.attachment {
        match s.store.attachment(a).await? {
            Some((r, _, _)) if r == room => {}
            _ => {
                return Err(ApiError::invalid(
                    "unknown_attachment",
                    "no such attachment in this room",
                ))
            }
        }
    }
    let msg = s
        .store
        .add_message(
            &room,
            &me.claims.sub,
            &m.text,
            m.attachment.as_deref(),
            s.limits.chat.history_messages,
        )
        .await?;
    s.live.push(&room, "chat", json!({"message": msg}));
    Ok((StatusCode::CREATED, Json(json!({"message": msg}))))
}

/// Uploads an image (PNG, JPEG, GIF or WebP, recognised by content, not by header). The
/// room, the caller's membership, grant, rate and quota are checked before the body is read:
/// a refused upload costs the relay no body bytes.
pub async fn upload(
    State(s): State<ApiState>,
    me: MediaUser,
    Path(room): Path<String>,
    request: Request,
) -> ApiResult<(StatusCode, Json<Value>)> {
    load(&s, &room).await?;
    may_chat(&s, &me, &room)?;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_IMAGE_BYTES as u64) {
        return Err(too_large());
    }
    let usage = s.store.attachment_usage(&me.claims.sub, &room).await?;
    if let Some(hit) = crate::store::exceeded(usage, declared.unwrap_or(1), s.limits.chat.quota) {
        return Err(over_quota(hit, s.limits.chat.quota));
    }
    let body = Bytes::from_request(request, &s).await?;
    if body.len() > MAX_IMAGE_BYTES {
        return Err(too_large());
    }
    let mime = infer::get(&body)
        .map(|t| t.mime_type())
        .filter(|m| IMAGE_TYPES.contains(m))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not_an_image",
                "attachments must be PNG, JPEG, GIF or WebP images",
            )
        })?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let new = NewAttachment {
        id: &id,
        room: &room,
        uploader: &me.claims.sub,
        mime,
        data: &body,
    };
    if let Some(hit) = s.store.add_attachment(new, s.limits.chat.quota).await? {
        return Err(over_quota(hit, s.limits.chat.quota));
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "mime": mime, "size": body.len()})),
    ))
}

pub async fn attachment(
    State(s): State<ApiState>,
    me: MediaUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (room, mime, data) = s
        .store
        .attachment(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_attachment", "no such attachment"))?;
    member(&me, &room)?;
    Ok((
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "private, max-age=3600".into()),
        ],
        data,
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct Page {
    pub before: Option<i64>,
    pub limit: Option<i64>,
}

/// History, newest first; pass the last id as `before` for the next page.
pub async fn history(
    State(s): State<ApiState>,
    me: MediaUser,
    Path(room): Path<String>,
    Query(p): Query<Page>,
) -> ApiResult<Json<Value>> {
    load(&s, &room).await?;
    member(&me, &room)?;
    let limit = p.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let messages = s.store.history(&room, p.before, limit).await?;
    let next = (messages.len() as i64 == limit)
        .then(|| messages.last().map(|m| m.id))
        .flatten();
    Ok(Json(json!({"messages": messages, "next_before": next})))
}
