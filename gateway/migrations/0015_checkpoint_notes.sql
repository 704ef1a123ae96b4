-- Checkpoints become C2SP signed notes: the signed text is origin, size and base64 root,
-- under a 4-byte key id derived from the log's name. Checkpoints signed before keep
-- their four-line text (with the time) and 8-byte key id, and are marked 'legacy' so
-- that `audit verify` checks them the old way. At start the gateway re-signs the newest
-- checkpoint of each log as a note (same size, same root), so what it publishes is a
-- note from the first start on.
ALTER TABLE audit_checkpoints ADD COLUMN format TEXT NOT NULL DEFAULT 'legacy'
    CHECK (format IN ('legacy', 'note'));
ALTER TABLE key_log_head ADD COLUMN format TEXT NOT NULL DEFAULT 'legacy'
    CHECK (format IN ('legacy', 'note'));
