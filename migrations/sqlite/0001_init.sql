-- roomcast schema v1: users, login sessions, rooms, roles, bans, invites, revocations, chat.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    is_admin      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

CREATE TABLE login_sessions (
    jti        TEXT PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL
);

CREATE TABLE rooms (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    password_hash      TEXT,
    max_participants   INTEGER NOT NULL,
    empty_timeout_secs INTEGER NOT NULL,
    metadata           TEXT NOT NULL DEFAULT '{}',
    mode               TEXT NOT NULL CHECK (mode IN ('meeting', 'classroom')),
    locked             INTEGER NOT NULL DEFAULT 0,
    owner_id           INTEGER NOT NULL REFERENCES users(id),
    created_at         INTEGER NOT NULL
);

CREATE TABLE members (
    room_id TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role    TEXT NOT NULL CHECK (role IN ('host', 'moderator', 'participant', 'viewer')),
    PRIMARY KEY (room_id, user_id)
);

CREATE TABLE bans (
    room_id    TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    username   TEXT NOT NULL COLLATE NOCASE,
    reason     TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    PRIMARY KEY (room_id, username)
);

CREATE TABLE invites (
    jti        TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    role       TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    used_by    INTEGER REFERENCES users(id)
);

CREATE TABLE revoked_tokens (
    jti        TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);

CREATE TABLE attachments (
    id         TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    mime       TEXT NOT NULL,
    data       BLOB NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE chat_messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id       TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    username      TEXT NOT NULL,
    text          TEXT NOT NULL DEFAULT '',
    attachment_id TEXT REFERENCES attachments(id),
    created_at    INTEGER NOT NULL
);
CREATE INDEX chat_by_room ON chat_messages (room_id, id DESC);
