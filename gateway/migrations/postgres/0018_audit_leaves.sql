-- The access log's leaves get a table of their own, and the sequencer stops rewriting
-- records.
--
-- Until now the sequencer gave each record its leaf by updating the record row: a second,
-- full-width copy of every record in the WAL and a dead tuple for vacuum. Now a record is
-- written once and never touched by the sequencer; its leaf is a narrow row inserted into
-- `audit_leaves`. The leaf row carries copies of the columns the security team searches by
-- (patient, episode, principal, time), so that those searches run on the leaves' indexes
-- in tree order and a send still writes only two index entries for its record. `audit
-- verify` holds each copy to its record; pruning clears the copies with the record.
--
-- Records waiting for a leaf are found by their position, as messages are: `tx` (the
-- writing transaction) and `pos` (an identity). The sequencer reads records below the
-- oldest running transaction, in position order, and keeps the position of the last one it
-- added in `audit_head`, so no record can commit behind that cursor.
CREATE TABLE audit_leaves (
    leaf_index BIGINT PRIMARY KEY,
    record_id TEXT NOT NULL UNIQUE,
    leaf_hash TEXT,
    content_hash TEXT,
    recorded_at_ms BIGINT NOT NULL,
    patient TEXT,
    episode_id TEXT,
    principal_id TEXT
);
INSERT INTO audit_leaves (leaf_index, record_id, leaf_hash, content_hash, recorded_at_ms, patient, episode_id, principal_id)
SELECT leaf_index, id, leaf_hash, content_hash, recorded_at_ms, patient, episode_id, principal_id
FROM audit_records WHERE leaf_index IS NOT NULL;
-- NOT VALID, as in 0017: a row carried over is not re-read here (verify names it).
ALTER TABLE audit_leaves ADD CONSTRAINT audit_leaves_content_hash_canonical
    CHECK (content_hash ~ '^[0-9a-f]{64}$') NOT VALID;

-- Positions of the records there are: in leaf order, then the waiting ones in the order
-- the old sequencer would have taken them.
ALTER TABLE audit_records ADD COLUMN tx BIGINT NOT NULL DEFAULT 0;
ALTER TABLE audit_records ADD COLUMN pos BIGINT;
UPDATE audit_records SET pos = leaf_index + 1 WHERE leaf_index IS NOT NULL;
UPDATE audit_records SET pos = waiting.n
FROM (
    SELECT id, (SELECT COALESCE(MAX(leaf_index), -1) + 1 FROM audit_leaves)
               + ROW_NUMBER() OVER (ORDER BY recorded_at_ms, id) AS n
    FROM audit_records WHERE leaf_index IS NULL
) AS waiting
WHERE audit_records.id = waiting.id;
ALTER TABLE audit_records ALTER COLUMN pos SET NOT NULL;
ALTER TABLE audit_records ALTER COLUMN pos ADD GENERATED ALWAYS AS IDENTITY;
SELECT setval(pg_get_serial_sequence('audit_records', 'pos'),
              (SELECT COALESCE(MAX(pos), 0) + 1 FROM audit_records), false);
ALTER TABLE audit_records ALTER COLUMN tx SET DEFAULT (pg_current_xact_id()::text::bigint);

-- The sequencer's cursor: the position of the record of the newest leaf.
ALTER TABLE audit_head ADD COLUMN sequenced_tx BIGINT NOT NULL DEFAULT 0;
ALTER TABLE audit_head ADD COLUMN sequenced_pos BIGINT NOT NULL DEFAULT 0;
UPDATE audit_head SET sequenced_pos = COALESCE((
    SELECT r.pos FROM audit_leaves l JOIN audit_records r ON r.id = l.record_id
    ORDER BY l.leaf_index DESC LIMIT 1
), 0);

DROP INDEX audit_records_pending;
DROP INDEX audit_records_leaf;
DROP INDEX audit_records_patient;
DROP INDEX audit_records_episode;
DROP INDEX audit_records_principal;
DROP INDEX audit_records_time;
ALTER TABLE audit_records DROP COLUMN leaf_index;
ALTER TABLE audit_records DROP COLUMN leaf_hash;
ALTER TABLE audit_records DROP COLUMN content_hash;

CREATE INDEX audit_records_position ON audit_records (tx, pos);
CREATE INDEX audit_leaves_patient ON audit_leaves (patient, leaf_index) WHERE patient IS NOT NULL;
CREATE INDEX audit_leaves_episode ON audit_leaves (episode_id, leaf_index) WHERE episode_id IS NOT NULL;
CREATE INDEX audit_leaves_principal ON audit_leaves (principal_id, leaf_index) WHERE principal_id IS NOT NULL;
CREATE INDEX audit_leaves_time ON audit_leaves (recorded_at_ms, leaf_index);
