-- roomcast schema v6: attachments know who uploaded them and their size, so quotas per
-- uploader, per room and per relay are one indexed sum; unreferenced ones are collected.
ALTER TABLE attachments ADD COLUMN uploader TEXT NOT NULL DEFAULT '';
ALTER TABLE attachments ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
UPDATE attachments SET size = length(data);
-- Covering indexes: the sums never read the blobs.
CREATE INDEX attachments_by_uploader ON attachments (uploader, size);
CREATE INDEX attachments_by_room ON attachments (room_id, size);
CREATE INDEX attachments_by_age ON attachments (created_at);
CREATE INDEX chat_by_attachment ON chat_messages (attachment_id);
