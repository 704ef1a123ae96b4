-- SQLite does not compress values; nothing to change.
SELECT 1;
