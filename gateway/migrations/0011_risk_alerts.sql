-- Risk alerts. The exporter, the one component that reads questionnaire answers (with the
-- clinic journal key), screens every new questionnaire response as soon as it is stored,
-- whatever the EPJ is doing, and raises a PHQ-9 item 9 answer above 0 to the care team as
-- a sealed notice. Such a notice is for the care team only: `audience` keeps it out of
-- the patient's history, stream and unread counts.
ALTER TABLE messages ADD COLUMN audience TEXT NOT NULL DEFAULT 'all';

-- 0: a questionnaire response not yet screened for risk; 1: nothing to screen.
ALTER TABLE outbox ADD COLUMN screened INTEGER NOT NULL DEFAULT 1;
CREATE INDEX outbox_unscreened ON outbox (id) WHERE screened = 0;
UPDATE outbox SET screened = 0
WHERE kind = 'message' AND state = 'pending' AND EXISTS (
    SELECT 1 FROM messages m
    WHERE m.episode_id = outbox.episode_id AND m.seq = outbox.message_seq
      AND m.kind = 'questionnaire-response');
