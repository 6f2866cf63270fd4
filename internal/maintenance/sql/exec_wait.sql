-- pgreap exec: the lock that pgreap's attempt (backend $1) waits for, and
-- who holds it up, looked at while it waits, for the attempt's lock_timeout
-- ends the wait and takes its pg_locks row with it: the object as pg_locks
-- names it, the mode asked for, the backends pg_blocking_pids names (a
-- prepared transaction is its 0, left out) and the prepared transactions
-- among the blockers, found as the snapshot finds them: a granted lock on
-- the same object, of no backend, in a mode that conflicts (lock.c's
-- LockConflicts as bit masks: bit n is mode n). A backend waits on one lock
-- at a time: no row when it waits on none. The relation is named as
-- regclass does (schema-qualified when not in the search path).
--  $1 integer  the attempt's backend
SELECT l.locktype, l.database, l.relation, l.page, l.tuple, l.virtualxid, l.transactionid,
       l.classid, l.objid, l.objsubid, l.mode,
       -- The relation's name, when it is of this database (another's
       -- OID names nothing here).
       CASE WHEN l.relation IS NOT NULL
             AND l.database = (SELECT d.oid FROM pg_catalog.pg_database AS d
                                WHERE d.datname = pg_catalog.current_database())
            THEN l.relation::pg_catalog.regclass::pg_catalog.text END AS relname,
       pg_catalog.array_remove(b.pids, 0) AS blocked_by,
       CASE WHEN 0 = ANY (b.pids) THEN coalesce((
        SELECT pg_catalog.array_agg(DISTINCT p.gid ORDER BY p.gid)
          FROM pg_catalog.pg_locks AS h
          JOIN pg_catalog.pg_locks AS x
            ON x.virtualtransaction = h.virtualtransaction AND x.locktype = 'transactionid' AND x.pid IS NULL
          JOIN pg_catalog.pg_prepared_xacts AS p
            ON p.transaction = x.transactionid
         WHERE h.granted AND h.pid IS NULL
           AND h.locktype = l.locktype
           AND h.database IS NOT DISTINCT FROM l.database
           AND h.relation IS NOT DISTINCT FROM l.relation
           AND h.page IS NOT DISTINCT FROM l.page
           AND h.tuple IS NOT DISTINCT FROM l.tuple
           AND h.virtualxid IS NOT DISTINCT FROM l.virtualxid
           AND h.transactionid IS NOT DISTINCT FROM l.transactionid
           AND h.classid IS NOT DISTINCT FROM l.classid
           AND h.objid IS NOT DISTINCT FROM l.objid
           AND h.objsubid IS NOT DISTINCT FROM l.objsubid
           AND (ARRAY[256, 384, 480, 496, 472, 504, 508, 510])[pg_catalog.array_position(
                  ARRAY['AccessShareLock', 'RowShareLock', 'RowExclusiveLock', 'ShareUpdateExclusiveLock',
                        'ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock'], l.mode)]
               & (1 << pg_catalog.array_position(
                  ARRAY['AccessShareLock', 'RowShareLock', 'RowExclusiveLock', 'ShareUpdateExclusiveLock',
                        'ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock'], h.mode)) <> 0
       ), '{}') ELSE '{}' END AS blocked_by_prepared
  FROM pg_catalog.pg_locks AS l
 -- Read once: it takes every partition lock of the lock manager.
 CROSS JOIN LATERAL (SELECT pg_catalog.pg_blocking_pids($1::integer) AS pids) AS b
 WHERE l.pid = $1::integer AND NOT l.granted
 LIMIT 1
