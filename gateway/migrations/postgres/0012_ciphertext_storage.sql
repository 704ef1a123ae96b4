-- Envelopes and attachments are ciphertext: TOAST compression (pglz) spends CPU on
-- every insert and saves nothing. Keep large values out of line, uncompressed.
ALTER TABLE messages ALTER COLUMN body SET STORAGE EXTERNAL;
ALTER TABLE attachments ALTER COLUMN body SET STORAGE EXTERNAL;
