-- roomcast schema v4: the media tokens a join issued, so removing a participant (kick, ban)
-- revokes every token they still hold, used or not.
CREATE TABLE issued_tokens (
    jti        TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL,
    username   TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX issued_tokens_holder ON issued_tokens (room_id, username);
