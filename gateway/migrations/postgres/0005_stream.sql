-- The per-principal stream position of a message: the id of the transaction that wrote
-- it and an identity. Readers only read below the oldest running transaction
-- (pg_snapshot_xmin), so a message committed later can never appear behind a position a
-- reader has already passed.
ALTER TABLE messages ADD COLUMN tx BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint);
ALTER TABLE messages ADD COLUMN pos BIGINT GENERATED ALWAYS AS IDENTITY;
CREATE INDEX messages_by_stream_position ON messages (tx, pos);
