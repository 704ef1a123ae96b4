-- Receipts as watermarks: per episode and reader, the highest sequence number delivered
-- to and read by them. A message is delivered to / read by a reader when its seq is at or
-- below the mark. Marks only move forward.
CREATE TABLE receipts (
    episode_id      TEXT NOT NULL REFERENCES episodes (id),
    reader_kind     TEXT NOT NULL,
    reader_ref      TEXT NOT NULL,
    delivered_up_to BIGINT NOT NULL,
    read_up_to      BIGINT NOT NULL,
    updated_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (episode_id, reader_kind, reader_ref)
);
