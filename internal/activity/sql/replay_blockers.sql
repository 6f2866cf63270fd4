-- pgreap: the backends that hold up WAL replay on a hot standby: the
-- startup process waits for read-only queries holding a lock on the object
-- whose ACCESS EXCLUSIVE lock it replays, until max_standby_streaming_delay
-- (or forever, with -1). pg_blocking_pids of the startup process is empty
-- (measured on 12 to 18): its blockers are found as the server finds them,
-- a granted lock on the same object (ACCESS EXCLUSIVE conflicts with every
-- mode). pg_locks is readable by every role. The one-time filter keeps a
-- primary from reading pg_locks for it (a join reads its first row before
-- it finds the other side empty).
SELECT DISTINCT h.pid
  FROM (/*replay_locks*/) AS w
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
