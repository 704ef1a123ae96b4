-- Care teams and messages (PostgreSQL). Messages hold the sealed envelope as BYTEA.

CREATE TABLE care_team (
    episode_id TEXT NOT NULL REFERENCES episodes (id),
    hpr_number TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('therapist', 'cover')),
    until_ms   BIGINT,
    PRIMARY KEY (episode_id, hpr_number)
);

ALTER TABLE episodes ADD COLUMN next_seq BIGINT NOT NULL DEFAULT 1;

CREATE TABLE messages (
    episode_id    TEXT NOT NULL REFERENCES episodes (id),
    seq           BIGINT NOT NULL,
    id            TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('message', 'feedback', 'questionnaire-response', 'notice')),
    sender_kind   TEXT NOT NULL,
    sender_ref    TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    recipients    TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    body          BYTEA NOT NULL,
    request_hash  TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (episode_id, seq),
    UNIQUE (episode_id, id)
);
