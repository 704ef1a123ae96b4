-- The access log. A record is written with its access (same transaction) and joins the
-- Merkle tree later, when the sequencer gives it `leaf_index` and `leaf_hash` and signs a
-- checkpoint over the new tree size in the same transaction.
CREATE TABLE audit_records (
    id TEXT PRIMARY KEY,
    leaf_index BIGINT UNIQUE,
    leaf_hash TEXT,
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
CREATE INDEX audit_records_pending ON audit_records (recorded_at_ms, id) WHERE leaf_index IS NULL;
CREATE INDEX audit_records_patient ON audit_records (patient, leaf_index);
CREATE INDEX audit_records_episode ON audit_records (episode_id, leaf_index);
CREATE INDEX audit_records_principal ON audit_records (principal_id, leaf_index);

CREATE TABLE audit_checkpoints (
    size BIGINT PRIMARY KEY,
    root TEXT NOT NULL,
    timestamp_ms BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL
);

-- The tree's frontier (size and the roots of its perfect subtrees), so the sequencer
-- appends without reading old leaves. One row; its lock orders sequencers.
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    size BIGINT NOT NULL,
    peaks TEXT NOT NULL
);
INSERT INTO audit_head (id, size, peaks) VALUES (1, 0, '');
