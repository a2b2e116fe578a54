-- roomcast schema v2: identities in one canonical form (ASCII lower case) everywhere, and
-- room closures that outlive a restart (token revocations already have their table).
UPDATE users SET username = lower(username);
UPDATE bans SET username = lower(username);
UPDATE chat_messages SET username = lower(username);

-- A closed or deleted room: media tokens issued before `closed_at` (every token, for a
-- deleted room) are refused until `expires_at`, when no such token can still be valid.
CREATE TABLE room_closures (
    room_id    TEXT PRIMARY KEY,
    closed_at  INTEGER NOT NULL,
    deleted    INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER NOT NULL
);
