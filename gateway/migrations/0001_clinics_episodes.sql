-- Clinics and treatment episodes. Portable SQL: the same text runs on SQLite and
-- PostgreSQL. Times are Unix milliseconds (BIGINT); ids are UUID strings.

CREATE TABLE clinics (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    org_number    TEXT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE episodes (
    id            TEXT PRIMARY KEY,
    clinic_id     TEXT NOT NULL REFERENCES clinics (id),
    -- National identity number (fødselsnummer or D-nummer) of the patient.
    patient_nin   TEXT NOT NULL,
    programme     TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('planned', 'active', 'finished', 'cancelled')),
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE INDEX episodes_by_patient ON episodes (patient_nin);
CREATE INDEX episodes_by_clinic ON episodes (clinic_id);
