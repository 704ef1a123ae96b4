-- DPoP proof ids seen (RFC 9449 §11.1), shared by every instance. `key` is a hash of the
-- proof key's thumbprint and the proof's jti; rows are purged once expired.
CREATE TABLE dpop_replay (
    key           TEXT PRIMARY KEY,
    expires_at    BIGINT NOT NULL
);

CREATE INDEX dpop_replay_by_expiry ON dpop_replay (expires_at);
