-- What a send is decided on (an episode's patient and clinic, the clinic's organisation
-- number, the care team, the devices of everyone involved) may be kept in memory between
-- sends. Every change to it, by any writer, bumps this one number in the same
-- transaction (SQLite: a trigger per row and event); a send decided on a kept copy commits only if the number is still the one
-- read with that copy, and is decided again on fresh rows otherwise.
CREATE TABLE send_context_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO send_context_version (id, version) VALUES (1, 1);

CREATE TRIGGER care_team_send_context_insert AFTER INSERT ON care_team
BEGIN UPDATE send_context_version SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER care_team_send_context_update AFTER UPDATE ON care_team
BEGIN UPDATE send_context_version SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER care_team_send_context_delete AFTER DELETE ON care_team
BEGIN UPDATE send_context_version SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER devices_send_context_insert AFTER INSERT ON devices
BEGIN UPDATE send_context_version SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER devices_send_context_update AFTER UPDATE ON devices
BEGIN UPDATE send_context_version SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER devices_send_context_delete AFTER DELETE ON devices
BEGIN UPDATE send_context_version SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER episodes_send_context_update AFTER UPDATE OF patient_nin, clinic_id ON episodes
BEGIN UPDATE send_context_version SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER episodes_send_context_delete AFTER DELETE ON episodes
BEGIN UPDATE send_context_version SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER clinics_send_context_update AFTER UPDATE OF org_number ON clinics
BEGIN UPDATE send_context_version SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER clinics_send_context_delete AFTER DELETE ON clinics
BEGIN UPDATE send_context_version SET version = version + 1 WHERE id = 1; END;
