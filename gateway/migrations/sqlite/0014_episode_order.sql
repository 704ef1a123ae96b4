-- Per-episode stream order (PostgreSQL only). SQLite commits one writer at a time, so a
-- message's rowid already follows its episode's sequence: nothing to change.
SELECT 1;
