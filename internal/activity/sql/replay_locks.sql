-- pgreap: the ACCESS EXCLUSIVE locks of WAL replay on a hot standby, held
-- or awaited, as pg_locks rows (none on a primary: the one-time filter reads
-- nothing there). In recovery no backend may ask for a lock stronger than
-- ROW EXCLUSIVE on a database object (lock.c refuses it; advisory locks are
-- EXCLUSIVE at most): an ACCESS EXCLUSIVE lock is the startup process's,
-- held for a transaction of the primary until replay reaches its end, or
-- awaited (granted false) while read-only queries hold the object (DROP
-- TABLE, TRUNCATE, a vacuum truncating a table). So the startup process is
-- known by its locks even to a role without pg_read_all_stats, which sees
-- its backend_type as NULL.
SELECT l.*
  FROM pg_catalog.pg_locks AS l
 WHERE (SELECT pg_catalog.pg_is_in_recovery())
   AND l.mode = 'AccessExclusiveLock'
