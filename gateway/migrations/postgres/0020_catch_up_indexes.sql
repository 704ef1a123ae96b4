-- A stream that catches up reads, for each episode its principal may see, the messages
-- after its position: this index finds them without visiting the episode's older
-- messages, whatever plan the statement gets. Without it a catch-up read walked every
-- message the caller's episodes ever had.
CREATE INDEX messages_by_episode_position ON messages (episode_id, tx, pos);
-- A clinician's episodes, looked up on every stream open and catch-up, cover check and
-- episode list: without this index, a scan of every care team.
CREATE INDEX care_team_by_member ON care_team (hpr_number);
