-- Per-episode stream order. A message's stream position starts with the id of the
-- transaction that wrote it, but transaction ids are handed out before row locks are
-- won: a transaction that got its id first can win the episode's row lock second and
-- write the next sequence number with the smaller id, so readers would list #8 before #7.
-- Each episode remembers the highest position transaction of its messages; a new message
-- takes the greater of that and its own transaction id, so positions within an episode
-- follow the sequence. Readers stay below the oldest running transaction, so a borrowed,
-- larger id is only read once every transaction below it has ended.
ALTER TABLE episodes ADD COLUMN last_tx BIGINT NOT NULL DEFAULT 0;
