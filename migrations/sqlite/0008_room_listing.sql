-- roomcast schema v8: the room list is paged newest first; rooms are counted per owner.
CREATE INDEX rooms_by_age ON rooms (created_at, id);
CREATE INDEX rooms_by_owner ON rooms (owner_id);
