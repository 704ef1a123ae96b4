-- Encrypted attachments, addressed by the SHA-256 of their bytes, held per episode so
-- that reaching the episode is reaching its attachments. Messages name theirs.
CREATE TABLE attachments (
    episode_id      TEXT NOT NULL REFERENCES episodes (id),
    sha256          TEXT NOT NULL,
    size            BIGINT NOT NULL,
    content_type    TEXT NOT NULL,
    created_by_kind TEXT NOT NULL,
    created_by_ref  TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    body            BLOB NOT NULL,
    PRIMARY KEY (episode_id, sha256)
);

ALTER TABLE messages ADD COLUMN attachments TEXT NOT NULL DEFAULT '[]';
