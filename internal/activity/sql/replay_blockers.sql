-- pgreap: the backends that hold up WAL replay on a hot standby. The
-- startup process replays the ACCESS EXCLUSIVE locks the primary took
-- (DROP TABLE, TRUNCATE, a vacuum truncating a table) and waits for
-- read-only queries that hold a lock on the same object, until
-- max_standby_streaming_delay (or forever, with -1). pg_blocking_pids of
-- the startup process is empty (measured on 12 to 18): its blockers are
-- found as the server finds them, a granted lock on the object it waits
-- for in a mode its wait conflicts with (bit n: mode n, lock.c's
-- LockConflicts). On a primary the one-time filter reads nothing.
SELECT DISTINCT h.pid
  FROM pg_catalog.pg_locks AS w
  JOIN pg_catalog.pg_locks AS h
    ON h.locktype = w.locktype
   AND h.database IS NOT DISTINCT FROM w.database
   AND h.relation IS NOT DISTINCT FROM w.relation
   AND h.page IS NOT DISTINCT FROM w.page
   AND h.tuple IS NOT DISTINCT FROM w.tuple
   AND h.virtualxid IS NOT DISTINCT FROM w.virtualxid
   AND h.transactionid IS NOT DISTINCT FROM w.transactionid
   AND h.classid IS NOT DISTINCT FROM w.classid
   AND h.objid IS NOT DISTINCT FROM w.objid
   AND h.objsubid IS NOT DISTINCT FROM w.objsubid
   AND h.granted
   AND h.pid <> w.pid
 WHERE (SELECT pg_catalog.pg_is_in_recovery())
   AND NOT w.granted
   AND (SELECT s.backend_type FROM pg_catalog.pg_stat_get_activity(w.pid) AS s) = 'startup'
   AND (ARRAY[256, 384, 480, 496, 472, 504, 508, 510])[pg_catalog.array_position(
          ARRAY['AccessShareLock', 'RowShareLock', 'RowExclusiveLock', 'ShareUpdateExclusiveLock',
                'ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock'],
          w.mode)]
       & (1 << pg_catalog.array_position(
          ARRAY['AccessShareLock', 'RowShareLock', 'RowExclusiveLock', 'ShareUpdateExclusiveLock',
                'ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock'],
          h.mode)) <> 0
