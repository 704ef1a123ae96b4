-- The device key directory. A device is named by its signing key's RFC 7638 thumbprint;
-- its owner is a person (patient by national id, clinician by HPR number), a system
-- client, or a clinic's journal (by organisation number). Every publish and revoke is a
-- leaf of the key log (a Merkle tree, RFC 9162 style) whose head is signed at once.
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    owner_kind TEXT NOT NULL,
    owner_ref TEXT NOT NULL,
    signing_jwk TEXT NOT NULL,
    encryption_kid TEXT NOT NULL UNIQUE,
    encryption_jwk TEXT NOT NULL,
    published_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT,
    publish_index BIGINT NOT NULL,
    revoke_index BIGINT
);
CREATE INDEX devices_owner ON devices (owner_kind, owner_ref);

CREATE TABLE key_log (
    leaf_index BIGINT PRIMARY KEY,
    leaf TEXT NOT NULL,
    leaf_hash TEXT NOT NULL
);

-- The tree's frontier and its newest signed checkpoint. One row; its lock orders writers.
CREATE TABLE key_log_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    size BIGINT NOT NULL,
    peaks TEXT NOT NULL,
    root TEXT NOT NULL,
    timestamp_ms BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL
);
INSERT INTO key_log_head (id, size, peaks, root, timestamp_ms, key_id, signature)
VALUES (1, 0, '', '', 0, '', '');
