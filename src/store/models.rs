//! Rows and the domain types made from them.

use serde::{Deserialize, Serialize};

use crate::auth::{Grant, Grants};

/// A registered user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub is_admin: bool,
}

#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    id: i64,
    username: String,
    /// 0 or 1: flags are integers in both schemas (sqlx's `Any` decodes no bool from SQLite).
    is_admin: i64,
    password_hash: String,
}

impl UserRow {
    pub(super) fn split(self) -> (User, String) {
        (
            User {
                id: self.id,
                username: self.username,
                is_admin: self.is_admin != 0,
            },
            self.password_hash,
        )
    }
}

/// A role in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Host,
    Moderator,
    Participant,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Moderator => "moderator",
            Role::Participant => "participant",
            Role::Viewer => "viewer",
        }
    }

    /// The grants a role carries.
    pub fn grants(self) -> Grants {
        match self {
            Role::Host | Role::Moderator => {
                [Grant::Publish, Grant::Subscribe, Grant::Chat, Grant::Admin].into()
            }
            Role::Participant => [Grant::Publish, Grant::Subscribe, Grant::Chat].into(),
            Role::Viewer => [Grant::Subscribe, Grant::Chat].into(),
        }
    }

    /// Whether this role may moderate (grant, mute, kick, ban, invite, lock).
    pub fn moderates(self) -> bool {
        matches!(self, Role::Host | Role::Moderator)
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(Role::Host),
            "moderator" => Ok(Role::Moderator),
            "participant" => Ok(Role::Participant),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!("unknown role {other:?}")),
        }
    }
}

/// Room mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Meeting,
    Classroom,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Meeting => "meeting",
            Mode::Classroom => "classroom",
        }
    }
}

/// A room as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Room {
    pub id: String,
    pub name: String,
    #[serde(skip)]
    pub password_hash: Option<String>,
    pub has_password: bool,
    pub max_participants: i64,
    pub empty_timeout_secs: i64,
    pub metadata: serde_json::Value,
    pub mode: Mode,
    pub locked: bool,
    pub owner_id: i64,
    pub created_at: i64,
}

/// Settings of a room to change; `None` leaves a setting as it is.
#[derive(Debug, Default, Clone)]
pub struct RoomChanges {
    pub name: Option<String>,
    pub password_hash: Option<String>,
    pub max_participants: Option<i64>,
    pub empty_timeout_secs: Option<i64>,
    pub metadata: Option<serde_json::Value>,
    pub mode: Option<Mode>,
    pub locked: Option<bool>,
}

#[derive(sqlx::FromRow)]
pub(super) struct RoomRow {
    id: String,
    name: String,
    password_hash: Option<String>,
    max_participants: i64,
    empty_timeout_secs: i64,
    metadata: String,
    mode: String,
    locked: i64,
    owner_id: i64,
    created_at: i64,
}

impl From<RoomRow> for Room {
    fn from(r: RoomRow) -> Self {
        Room {
            has_password: r.password_hash.is_some(),
            id: r.id,
            name: r.name,
            password_hash: r.password_hash,
            max_participants: r.max_participants,
            empty_timeout_secs: r.empty_timeout_secs,
            metadata: serde_json::from_str(&r.metadata).unwrap_or_default(),
            mode: if r.mode == "classroom" {
                Mode::Classroom
            } else {
                Mode::Meeting
            },
            locked: r.locked != 0,
            owner_id: r.owner_id,
            created_at: r.created_at,
        }
    }
}

/// A chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ChatMessage {
    pub id: i64,
    pub username: String,
    pub text: String,
    pub attachment: Option<String>,
    pub created_at: i64,
}

/// Bytes of attachments allowed: per uploader (all rooms), per room, and in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachmentQuota {
    pub uploader: u64,
    pub room: u64,
    pub total: u64,
}

/// The quota an upload would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaHit {
    Uploader,
    Room,
    Total,
}

/// An attachment to store.
#[derive(Debug, Clone, Copy)]
pub struct NewAttachment<'a> {
    pub id: &'a str,
    pub room: &'a str,
    pub uploader: &'a str,
    pub mime: &'a str,
    pub data: &'a [u8],
}
