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
-- NOT VALID: rows written before are not re-read here (`audit verify` names any that
-- is not canonical); every write from now on is checked.
ALTER TABLE audit_records ADD CONSTRAINT audit_records_pruned_flag
    CHECK (pruned IN (0, 1)) NOT VALID;
ALTER TABLE audit_records ADD CONSTRAINT audit_records_id_canonical
    CHECK (id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$') NOT VALID;
ALTER TABLE audit_records ADD CONSTRAINT audit_records_episode_id_canonical
    CHECK (episode_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$') NOT VALID;
ALTER TABLE audit_records ADD CONSTRAINT audit_records_patient_canonical
    CHECK (patient ~ '^[0-9]{11}$') NOT VALID;
ALTER TABLE audit_records ADD CONSTRAINT audit_records_principal_organisation_canonical
    CHECK (principal_organisation ~ '^[0-9]{9}$') NOT VALID;
ALTER TABLE audit_records ADD CONSTRAINT audit_records_content_hash_canonical
    CHECK (content_hash ~ '^[0-9a-f]{64}$') NOT VALID;
ALTER TABLE audit_records ADD CONSTRAINT audit_records_principal_id_patient_canonical
    CHECK (NOT (principal_kind = 'patient') OR principal_id ~ '^[0-9]{11}$') NOT VALID;
ALTER TABLE audit_records ADD CONSTRAINT audit_records_principal_id_clinician_canonical
    CHECK (NOT (principal_kind = 'clinician') OR principal_id ~ '^[1-9][0-9]{0,8}$') NOT VALID;
ALTER TABLE episodes ADD CONSTRAINT episodes_id_canonical
    CHECK (id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$') NOT VALID;
ALTER TABLE episodes ADD CONSTRAINT episodes_clinic_id_canonical
    CHECK (clinic_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$') NOT VALID;
ALTER TABLE episodes ADD CONSTRAINT episodes_patient_nin_canonical
    CHECK (patient_nin ~ '^[0-9]{11}$') NOT VALID;
ALTER TABLE clinics ADD CONSTRAINT clinics_id_canonical
    CHECK (id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$') NOT VALID;
ALTER TABLE clinics ADD CONSTRAINT clinics_org_number_canonical
    CHECK (org_number ~ '^[0-9]{9}$') NOT VALID;
ALTER TABLE care_team ADD CONSTRAINT care_team_episode_id_canonical
    CHECK (episode_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$') NOT VALID;
ALTER TABLE care_team ADD CONSTRAINT care_team_hpr_number_canonical
    CHECK (hpr_number ~ '^[1-9][0-9]{0,8}$') NOT VALID;
ALTER TABLE care_team_periods ADD CONSTRAINT care_team_periods_episode_id_canonical
    CHECK (episode_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$') NOT VALID;
ALTER TABLE care_team_periods ADD CONSTRAINT care_team_periods_hpr_number_canonical
    CHECK (hpr_number ~ '^[1-9][0-9]{0,8}$') NOT VALID;
