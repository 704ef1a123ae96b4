-- The security team's review reports.
--
-- Who was on an episode's care team, and when: a row per stretch of membership, opened
-- when the platform puts the member on the team and closed (to_ms) when the team is next
-- replaced. A cover's own end (until_ms) is kept as well. The review report "access by
-- personnel not on the care team at that moment" reads it. Teams that exist when this
-- migration runs are taken to have held since their episode was created: there is no
-- older history to go by.
CREATE TABLE care_team_periods (
    episode_id TEXT NOT NULL REFERENCES episodes (id),
    hpr_number TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('therapist', 'cover')),
    until_ms   BIGINT,
    from_ms    BIGINT NOT NULL,
    to_ms      BIGINT
);
CREATE INDEX care_team_periods_by_episode ON care_team_periods (episode_id, hpr_number);
INSERT INTO care_team_periods (episode_id, hpr_number, role, until_ms, from_ms, to_ms)
SELECT t.episode_id, t.hpr_number, t.role, t.until_ms, e.created_at_ms, NULL
FROM care_team t JOIN episodes e ON e.id = t.episode_id;

-- Reports read a time window of the log in order: by time, then by place in the tree.
CREATE INDEX audit_records_time ON audit_records (recorded_at_ms, leaf_index)
    WHERE leaf_index IS NOT NULL;
