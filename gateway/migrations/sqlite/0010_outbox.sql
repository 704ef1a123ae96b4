-- The journal outbox: one row per thing the EPJ must receive, written in the transaction
-- that made it (episode created or changed, message appended, episode finished). The id
-- orders rows; the exporter takes the oldest pending row of each episode, so per-episode
-- order holds. Rows are never deleted by the exporter: done rows are the export history,
-- dead rows wait for an operator (`icbt-gateway export dead-letters`).
CREATE TABLE outbox (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    episode_id         TEXT NOT NULL REFERENCES episodes (id),
    kind               TEXT NOT NULL CHECK (kind IN ('episode', 'message', 'summary')),
    message_seq        BIGINT,
    state              TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'dead')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms BIGINT NOT NULL,
    -- The last failure: a short reason, never message content.
    last_error         TEXT,
    -- The EPJ's OperationOutcome for a refusal, kept for the operator.
    outcome            TEXT,
    created_at_ms      BIGINT NOT NULL,
    done_at_ms         BIGINT
);

CREATE INDEX outbox_pending ON outbox (episode_id, id) WHERE state = 'pending';
CREATE INDEX outbox_dead ON outbox (id) WHERE state = 'dead';

-- What was stored before the outbox existed reaches the EPJ too.
INSERT INTO outbox (episode_id, kind, message_seq, next_attempt_at_ms, created_at_ms)
SELECT id, 'episode', NULL, 0, created_at_ms FROM episodes ORDER BY created_at_ms, id;
INSERT INTO outbox (episode_id, kind, message_seq, next_attempt_at_ms, created_at_ms)
SELECT episode_id, 'message', seq, 0, created_at_ms FROM messages ORDER BY episode_id, seq;
INSERT INTO outbox (episode_id, kind, message_seq, next_attempt_at_ms, created_at_ms)
SELECT id, 'summary', NULL, 0, updated_at_ms FROM episodes WHERE state = 'finished' ORDER BY updated_at_ms, id;
