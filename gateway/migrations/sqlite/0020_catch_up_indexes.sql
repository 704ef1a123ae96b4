-- A clinician's episodes, looked up on every stream open and catch-up, cover check and
-- episode list: without this index, a scan of every care team. (Messages need no new
-- index here: a catch-up reads by rowid, which every index of the table carries.)
CREATE INDEX care_team_by_member ON care_team (hpr_number);
