-- roomcast schema v3: a moderator's live changes outlive a restart. Both are forgotten when
-- the room closes (empty past its timeout) or is deleted.

-- Grants set for one participant (grant, floor, role change), replacing their token's.
CREATE TABLE grant_overrides (
    room_id  TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    identity TEXT NOT NULL,
    grants   TEXT NOT NULL, -- JSON array of grant names
    PRIMARY KEY (room_id, identity)
);

-- Tracks a moderator muted.
CREATE TABLE mutes (
    room_id  TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    identity TEXT NOT NULL,
    track    TEXT NOT NULL,
    PRIMARY KEY (room_id, identity, track)
);
