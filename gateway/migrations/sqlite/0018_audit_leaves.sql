-- The access log's leaves get a table of their own, and the sequencer stops rewriting
-- records (SQLite).
--
-- Until now the sequencer gave each record its leaf by updating the record row. Now a
-- record is written once and never touched by the sequencer; its leaf is a narrow row
-- inserted into `audit_leaves`, which carries copies of the columns the security team
-- searches by (patient, episode, principal, time), so those searches run on the leaves'
-- indexes in tree order. `audit verify` holds each copy to its record; pruning clears the
-- copies with the record.
--
-- Records waiting for a leaf are found by their position: SQLite commits one writer at a
-- time, so an AUTOINCREMENT key is commit order (`tx` is always 0 here; it is the writing
-- transaction on PostgreSQL). `audit_head` keeps the position of the record of the newest
-- leaf. The records table is rebuilt for its new key, since SQLite cannot change a key in
-- place; the triggers that keep its identifiers canonical are created again.
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

CREATE TABLE audit_records_positioned (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    tx BIGINT NOT NULL DEFAULT 0,
    id TEXT UNIQUE,
    recorded_at_ms BIGINT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    principal_kind TEXT NOT NULL,
    principal_id TEXT,
    principal_organisation TEXT,
    issuer TEXT,
    client_id TEXT,
    token_jti TEXT,
    resource_type TEXT NOT NULL,
    resource_id TEXT,
    episode_id TEXT,
    patient TEXT,
    request_id TEXT,
    source TEXT,
    pruned INTEGER NOT NULL DEFAULT 0
);
-- Positions of the records there are: in leaf order, then the waiting ones in the order
-- the old sequencer would have taken them.
INSERT INTO audit_records_positioned (pos, id, recorded_at_ms, action, outcome, reason, principal_kind,
    principal_id, principal_organisation, issuer, client_id, token_jti, resource_type, resource_id,
    episode_id, patient, request_id, source, pruned)
SELECT leaf_index + 1, id, recorded_at_ms, action, outcome, reason, principal_kind,
    principal_id, principal_organisation, issuer, client_id, token_jti, resource_type, resource_id,
    episode_id, patient, request_id, source, pruned
FROM audit_records WHERE leaf_index IS NOT NULL ORDER BY leaf_index;
INSERT INTO audit_records_positioned (id, recorded_at_ms, action, outcome, reason, principal_kind,
    principal_id, principal_organisation, issuer, client_id, token_jti, resource_type, resource_id,
    episode_id, patient, request_id, source, pruned)
SELECT id, recorded_at_ms, action, outcome, reason, principal_kind,
    principal_id, principal_organisation, issuer, client_id, token_jti, resource_type, resource_id,
    episode_id, patient, request_id, source, pruned
FROM audit_records WHERE leaf_index IS NULL ORDER BY recorded_at_ms, id;
DROP TABLE audit_records;
ALTER TABLE audit_records_positioned RENAME TO audit_records;

-- The sequencer's cursor: the position of the record of the newest leaf.
ALTER TABLE audit_head ADD COLUMN sequenced_tx BIGINT NOT NULL DEFAULT 0;
ALTER TABLE audit_head ADD COLUMN sequenced_pos BIGINT NOT NULL DEFAULT 0;
UPDATE audit_head SET sequenced_pos = COALESCE((
    SELECT r.pos FROM audit_leaves l JOIN audit_records r ON r.id = l.record_id
    ORDER BY l.leaf_index DESC LIMIT 1
), 0);

CREATE INDEX audit_leaves_patient ON audit_leaves (patient, leaf_index) WHERE patient IS NOT NULL;
CREATE INDEX audit_leaves_episode ON audit_leaves (episode_id, leaf_index) WHERE episode_id IS NOT NULL;
CREATE INDEX audit_leaves_principal ON audit_leaves (principal_id, leaf_index) WHERE principal_id IS NOT NULL;
CREATE INDEX audit_leaves_time ON audit_leaves (recorded_at_ms, leaf_index);

-- SQLite cannot add a CHECK to a table: triggers refuse the same writes.
CREATE TRIGGER audit_records_canonical_insert BEFORE INSERT ON audit_records
    WHEN NOT (NEW.pruned IN (0, 1) AND (NEW.id IS NULL OR NEW.id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') AND
        (NEW.episode_id IS NULL OR NEW.episode_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') AND
        (NEW.patient IS NULL OR (length(NEW.patient) = 11 AND NEW.patient NOT GLOB '*[^0-9]*')) AND
        (NEW.principal_organisation IS NULL OR (length(NEW.principal_organisation) = 9 AND NEW.principal_organisation NOT GLOB '*[^0-9]*')) AND
        (NOT (NEW.principal_kind = 'patient') OR NEW.principal_id IS NULL OR (length(NEW.principal_id) = 11 AND NEW.principal_id NOT GLOB '*[^0-9]*')) AND
        (NOT (NEW.principal_kind = 'clinician') OR NEW.principal_id IS NULL OR (length(NEW.principal_id) BETWEEN 1 AND 9 AND NEW.principal_id GLOB '[1-9]*' AND NEW.principal_id NOT GLOB '*[^0-9]*')))
BEGIN
    SELECT RAISE(ABORT, 'audit_records: an identifier is not in canonical form');
END;
CREATE TRIGGER audit_records_canonical_update BEFORE UPDATE OF id, episode_id, patient, principal_organisation, principal_kind, principal_id, pruned ON audit_records
    WHEN NOT (NEW.pruned IN (0, 1) AND (NEW.id IS NULL OR NEW.id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') AND
        (NEW.episode_id IS NULL OR NEW.episode_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') AND
        (NEW.patient IS NULL OR (length(NEW.patient) = 11 AND NEW.patient NOT GLOB '*[^0-9]*')) AND
        (NEW.principal_organisation IS NULL OR (length(NEW.principal_organisation) = 9 AND NEW.principal_organisation NOT GLOB '*[^0-9]*')) AND
        (NOT (NEW.principal_kind = 'patient') OR NEW.principal_id IS NULL OR (length(NEW.principal_id) = 11 AND NEW.principal_id NOT GLOB '*[^0-9]*')) AND
        (NOT (NEW.principal_kind = 'clinician') OR NEW.principal_id IS NULL OR (length(NEW.principal_id) BETWEEN 1 AND 9 AND NEW.principal_id GLOB '[1-9]*' AND NEW.principal_id NOT GLOB '*[^0-9]*')))
BEGIN
    SELECT RAISE(ABORT, 'audit_records: an identifier is not in canonical form');
END;
CREATE TRIGGER audit_leaves_canonical_insert BEFORE INSERT ON audit_leaves
    WHEN NOT (NEW.content_hash IS NULL OR (length(NEW.content_hash) = 64 AND NEW.content_hash NOT GLOB '*[^0-9a-f]*'))
BEGIN
    SELECT RAISE(ABORT, 'audit_leaves: a hash is not in canonical form');
END;
CREATE TRIGGER audit_leaves_canonical_update BEFORE UPDATE OF content_hash ON audit_leaves
    WHEN NOT (NEW.content_hash IS NULL OR (length(NEW.content_hash) = 64 AND NEW.content_hash NOT GLOB '*[^0-9a-f]*'))
BEGIN
    SELECT RAISE(ABORT, 'audit_leaves: a hash is not in canonical form');
END;
