-- pgreap: the lock WAL replay waits for on a hot standby, as a pg_locks
-- row (none on a primary: the one-time filter reads nothing there). It is
-- found by its mode, not by pg_stat_activity's backend_type 'startup',
-- which a role without pg_read_all_stats sees as NULL: in recovery no
-- backend may ask for a lock stronger than ROW EXCLUSIVE on a database
-- object (lock.c refuses it; advisory locks are EXCLUSIVE at most), so an
-- ACCESS EXCLUSIVE lock not granted is the startup process replaying one
-- the primary took (DROP TABLE, TRUNCATE, a vacuum truncating a table).
SELECT l.*
  FROM pg_catalog.pg_locks AS l
 WHERE (SELECT pg_catalog.pg_is_in_recovery())
   AND NOT l.granted
   AND l.mode = 'AccessExclusiveLock'
