-- The per-principal stream orders messages by rowid: SQLite commits one writer at a time,
-- so rowid order is commit order. This index serves "messages after a position".
CREATE INDEX messages_by_stream_position ON messages (episode_id, created_at_ms);
