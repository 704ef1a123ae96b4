-- A record is written on every access and gets its leaf later, from the sequencer. The
-- auditor's queries read only records that have one, so index them for those queries only
-- then: writing a record touches two indexes (its id, the sequencer's queue), not six.
ALTER TABLE audit_records DROP CONSTRAINT audit_records_leaf_index_key;
CREATE UNIQUE INDEX audit_records_leaf ON audit_records (leaf_index) WHERE leaf_index IS NOT NULL;
DROP INDEX audit_records_patient;
CREATE INDEX audit_records_patient ON audit_records (patient, leaf_index) WHERE leaf_index IS NOT NULL;
DROP INDEX audit_records_episode;
CREATE INDEX audit_records_episode ON audit_records (episode_id, leaf_index) WHERE leaf_index IS NOT NULL;
DROP INDEX audit_records_principal;
CREATE INDEX audit_records_principal ON audit_records (principal_id, leaf_index) WHERE leaf_index IS NOT NULL;
