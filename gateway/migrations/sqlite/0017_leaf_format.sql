-- Leaf format 2 and canonical identifiers.
--
-- A record sequenced from now on is hashed as a header (position, id, time, action) and
-- the SHA-256 of the rest (`content_hash`), which pruning keeps, so a pruned record's
-- leaf is recomputed from what is left of it. Records sequenced before keep their
-- format-1 leaves; at the first start the gateway signs a seal over their kept columns
-- (`audit_legacy_seal`, one row), so their time and action stay bound after pruning.
--
-- Identifiers are stored in one form: UUIDs lower-case and hyphenated, national id
-- numbers 11 digits, organisation numbers 9, HPR numbers without leading zeros, and the
-- pruned flag 0 or 1. The gateway writes nothing else; the database refuses anything
-- else from now on.
ALTER TABLE audit_records ADD COLUMN content_hash TEXT;
CREATE TABLE audit_legacy_seal (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    size BIGINT NOT NULL,
    root TEXT NOT NULL,
    timestamp_ms BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL
);
-- Witnesses' cosignatures of access-log checkpoints (C2SP note signature lines), served
-- with the checkpoint they sign; one per witness and size.
CREATE TABLE audit_cosignatures (
    size BIGINT NOT NULL,
    witness TEXT NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (size, witness)
);
-- SQLite cannot add a CHECK to a table: triggers refuse the same writes.
CREATE TRIGGER audit_records_canonical_insert BEFORE INSERT ON audit_records
    WHEN NOT (NEW.pruned IN (0, 1) AND (NEW.id IS NULL OR NEW.id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') AND
        (NEW.episode_id IS NULL OR NEW.episode_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') AND
        (NEW.patient IS NULL OR (length(NEW.patient) = 11 AND NEW.patient NOT GLOB '*[^0-9]*')) AND
        (NEW.principal_organisation IS NULL OR (length(NEW.principal_organisation) = 9 AND NEW.principal_organisation NOT GLOB '*[^0-9]*')) AND
        (NEW.content_hash IS NULL OR (length(NEW.content_hash) = 64 AND NEW.content_hash NOT GLOB '*[^0-9a-f]*')) AND
        (NOT (NEW.principal_kind = 'patient') OR NEW.principal_id IS NULL OR (length(NEW.principal_id) = 11 AND NEW.principal_id NOT GLOB '*[^0-9]*')) AND
        (NOT (NEW.principal_kind = 'clinician') OR NEW.principal_id IS NULL OR (length(NEW.principal_id) BETWEEN 1 AND 9 AND NEW.principal_id GLOB '[1-9]*' AND NEW.principal_id NOT GLOB '*[^0-9]*')))
BEGIN
    SELECT RAISE(ABORT, 'audit_records: an identifier is not in canonical form');
END;
CREATE TRIGGER audit_records_canonical_update BEFORE UPDATE OF id, episode_id, patient, principal_organisation, content_hash, principal_kind, principal_id, pruned ON audit_records
    WHEN NOT (NEW.pruned IN (0, 1) AND (NEW.id IS NULL OR NEW.id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') AND
        (NEW.episode_id IS NULL OR NEW.episode_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') AND
        (NEW.patient IS NULL OR (length(NEW.patient) = 11 AND NEW.patient NOT GLOB '*[^0-9]*')) AND
        (NEW.principal_organisation IS NULL OR (length(NEW.principal_organisation) = 9 AND NEW.principal_organisation NOT GLOB '*[^0-9]*')) AND
        (NEW.content_hash IS NULL OR (length(NEW.content_hash) = 64 AND NEW.content_hash NOT GLOB '*[^0-9a-f]*')) AND
        (NOT (NEW.principal_kind = 'patient') OR NEW.principal_id IS NULL OR (length(NEW.principal_id) = 11 AND NEW.principal_id NOT GLOB '*[^0-9]*')) AND
        (NOT (NEW.principal_kind = 'clinician') OR NEW.principal_id IS NULL OR (length(NEW.principal_id) BETWEEN 1 AND 9 AND NEW.principal_id GLOB '[1-9]*' AND NEW.principal_id NOT GLOB '*[^0-9]*')))
BEGIN
    SELECT RAISE(ABORT, 'audit_records: an identifier is not in canonical form');
END;
CREATE TRIGGER episodes_canonical_insert BEFORE INSERT ON episodes
    WHEN NOT ((NEW.id IS NULL OR NEW.id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') AND
        (NEW.clinic_id IS NULL OR NEW.clinic_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') AND
        (NEW.patient_nin IS NULL OR (length(NEW.patient_nin) = 11 AND NEW.patient_nin NOT GLOB '*[^0-9]*')))
BEGIN
    SELECT RAISE(ABORT, 'episodes: an identifier is not in canonical form');
END;
CREATE TRIGGER episodes_canonical_update BEFORE UPDATE OF id, clinic_id, patient_nin ON episodes
    WHEN NOT ((NEW.id IS NULL OR NEW.id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') AND
        (NEW.clinic_id IS NULL OR NEW.clinic_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') AND
        (NEW.patient_nin IS NULL OR (length(NEW.patient_nin) = 11 AND NEW.patient_nin NOT GLOB '*[^0-9]*')))
BEGIN
    SELECT RAISE(ABORT, 'episodes: an identifier is not in canonical form');
END;
CREATE TRIGGER clinics_canonical_insert BEFORE INSERT ON clinics
    WHEN NOT ((NEW.id IS NULL OR NEW.id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') AND
        (NEW.org_number IS NULL OR (length(NEW.org_number) = 9 AND NEW.org_number NOT GLOB '*[^0-9]*')))
BEGIN
    SELECT RAISE(ABORT, 'clinics: an identifier is not in canonical form');
END;
CREATE TRIGGER clinics_canonical_update BEFORE UPDATE OF id, org_number ON clinics
    WHEN NOT ((NEW.id IS NULL OR NEW.id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') AND
        (NEW.org_number IS NULL OR (length(NEW.org_number) = 9 AND NEW.org_number NOT GLOB '*[^0-9]*')))
BEGIN
    SELECT RAISE(ABORT, 'clinics: an identifier is not in canonical form');
END;
CREATE TRIGGER care_team_canonical_insert BEFORE INSERT ON care_team
    WHEN NOT ((NEW.episode_id IS NULL OR NEW.episode_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') AND
        (NEW.hpr_number IS NULL OR (length(NEW.hpr_number) BETWEEN 1 AND 9 AND NEW.hpr_number GLOB '[1-9]*' AND NEW.hpr_number NOT GLOB '*[^0-9]*')))
BEGIN
    SELECT RAISE(ABORT, 'care_team: an identifier is not in canonical form');
END;
CREATE TRIGGER care_team_canonical_update BEFORE UPDATE OF episode_id, hpr_number ON care_team
    WHEN NOT ((NEW.episode_id IS NULL OR NEW.episode_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') AND
        (NEW.hpr_number IS NULL OR (length(NEW.hpr_number) BETWEEN 1 AND 9 AND NEW.hpr_number GLOB '[1-9]*' AND NEW.hpr_number NOT GLOB '*[^0-9]*')))
BEGIN
    SELECT RAISE(ABORT, 'care_team: an identifier is not in canonical form');
END;
CREATE TRIGGER care_team_periods_canonical_insert BEFORE INSERT ON care_team_periods
    WHEN NOT ((NEW.episode_id IS NULL OR NEW.episode_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') AND
        (NEW.hpr_number IS NULL OR (length(NEW.hpr_number) BETWEEN 1 AND 9 AND NEW.hpr_number GLOB '[1-9]*' AND NEW.hpr_number NOT GLOB '*[^0-9]*')))
BEGIN
    SELECT RAISE(ABORT, 'care_team_periods: an identifier is not in canonical form');
END;
CREATE TRIGGER care_team_periods_canonical_update BEFORE UPDATE OF episode_id, hpr_number ON care_team_periods
    WHEN NOT ((NEW.episode_id IS NULL OR NEW.episode_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') AND
        (NEW.hpr_number IS NULL OR (length(NEW.hpr_number) BETWEEN 1 AND 9 AND NEW.hpr_number GLOB '[1-9]*' AND NEW.hpr_number NOT GLOB '*[^0-9]*')))
BEGIN
    SELECT RAISE(ABORT, 'care_team_periods: an identifier is not in canonical form');
END;
