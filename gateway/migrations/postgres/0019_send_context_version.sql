-- What a send is decided on (an episode's patient and clinic, the clinic's organisation
-- number, the care team, the devices of everyone involved) may be kept in memory between
-- sends. Every change to it, by any writer, bumps this one number in the same
-- transaction; a send decided on a kept copy commits only if the number is still the one
-- read with that copy, and is decided again on fresh rows otherwise.
CREATE TABLE send_context_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO send_context_version (id, version) VALUES (1, 1);

CREATE FUNCTION bump_send_context_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE send_context_version SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER care_team_send_context AFTER INSERT OR UPDATE OR DELETE ON care_team
    FOR EACH STATEMENT EXECUTE FUNCTION bump_send_context_version();
CREATE TRIGGER devices_send_context AFTER INSERT OR UPDATE OR DELETE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION bump_send_context_version();
CREATE TRIGGER episodes_send_context AFTER UPDATE OF patient_nin, clinic_id OR DELETE ON episodes
    FOR EACH STATEMENT EXECUTE FUNCTION bump_send_context_version();
CREATE TRIGGER clinics_send_context AFTER UPDATE OF org_number OR DELETE ON clinics
    FOR EACH STATEMENT EXECUTE FUNCTION bump_send_context_version();
