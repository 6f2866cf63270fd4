-- pgreap exec: the lock that pgreap's attempt (backend $1) waits for, and
-- who holds it up, looked at while it waits, for the attempt's lock_timeout
-- ends the wait and takes its pg_locks row with it: the object as pg_locks
-- names it, the mode asked for, the backends that hold it up and the
-- prepared transactions among them. pg_blocking_pids also names the
-- sessions merely queued ahead of the attempt for a conflicting lock (soft
-- blockers): they hold nothing, get the lock once the holders are gone,
-- and are nobody's blocker. Only the backends with a granted lock on the
-- same object in a mode that conflicts are kept (by the selector's table
-- of conflicting modes, sql/lock_conflicts.sql, which Go puts in where the
-- query names it: pgreap's one copy of it), a parallel worker's lock
-- counting for its leader (pg_blocking_pids names leaders); a prepared transaction's
-- locks have no pid, and the lock on its transaction id names it. A
-- backend waits on one lock at a time: no row when it waits on none. The
-- relation is named as regclass does (schema-qualified when not in the
-- search path). A holder that itself waits for a lock (one holding a row's
-- tuple lock while it waits for the transaction that updated that row) is
-- a victim of whoever it waits for, not a blocker to end: it is named apart
-- (waiting_holders), and pgreap ends only holders that wait for nothing.
--  $1 integer  the attempt's backend
SELECT l.locktype, l.database, l.relation, l.page, l.tuple, l.virtualxid, l.transactionid,
       l.classid, l.objid, l.objsubid, l.mode,
       -- When this wait began (14+, read by name; NULL for a moment after
       -- it begins), by the server's clock, and that clock now: two waits
       -- on one object, one after the other, are told apart, and how long
       -- one has lasted is known to the look, not to the poll.
       (pg_catalog.to_jsonb(l) OPERATOR(pg_catalog.->>) 'waitstart')::timestamptz AS waitstart,
       pg_catalog.clock_timestamp() AS now,
       -- The relation's name, when it is of this database (another's
       -- OID names nothing here).
       CASE WHEN l.relation IS NOT NULL
             AND l.database = (SELECT d.oid FROM pg_catalog.pg_database AS d
                                WHERE d.datname = pg_catalog.current_database())
            THEN l.relation::pg_catalog.regclass::pg_catalog.text END AS relname,
       coalesce((SELECT pg_catalog.array_agg(DISTINCT p ORDER BY p)
                   FROM pg_catalog.unnest(b.pids) AS p
                  WHERE p = ANY (h.holders)), '{}') AS blocked_by,
       coalesce((SELECT pg_catalog.array_agg(DISTINCT p ORDER BY p)
                   FROM pg_catalog.unnest(b.pids) AS p
                  WHERE p = ANY (h.waiting)), '{}') AS waiting_holders,
       coalesce((SELECT pg_catalog.array_agg(DISTINCT p.gid ORDER BY p.gid)
                   FROM pg_catalog.pg_locks AS x
                   JOIN pg_catalog.pg_prepared_xacts AS p ON p.transaction = x.transactionid
                  WHERE 0 = ANY (b.pids)
                    AND x.locktype = 'transactionid' AND x.pid IS NULL
                    AND x.virtualtransaction = ANY (h.prepared)), '{}') AS blocked_by_prepared
  FROM pg_catalog.pg_locks AS l
 -- Read once: it takes every partition lock of the lock manager.
 CROSS JOIN LATERAL (SELECT pg_catalog.pg_blocking_pids($1::integer) AS pids) AS b
 CROSS JOIN LATERAL (
        -- The granted locks on the object that conflict with the mode
        -- asked for: backends (a worker as its leader: leader_pid, 13+,
        -- read by name) and prepared transactions.
        SELECT pg_catalog.array_agg(coalesce((pg_catalog.to_jsonb(w) OPERATOR(pg_catalog.->>) 'leader_pid')::integer, g.pid))
                 FILTER (WHERE g.pid IS NOT NULL AND NOT g.waits) AS holders,
               pg_catalog.array_agg(coalesce((pg_catalog.to_jsonb(w) OPERATOR(pg_catalog.->>) 'leader_pid')::integer, g.pid))
                 FILTER (WHERE g.pid IS NOT NULL AND g.waits) AS waiting,
               pg_catalog.array_agg(g.virtualtransaction) FILTER (WHERE g.pid IS NULL) AS prepared
          FROM (SELECT x.*, EXISTS (SELECT FROM pg_catalog.pg_locks AS q
                                     WHERE q.pid = x.pid AND NOT q.granted) AS waits
                  FROM pg_catalog.pg_locks AS x) AS g
          LEFT JOIN pg_catalog.pg_stat_activity AS w ON w.pid = g.pid
         WHERE g.granted
           AND g.locktype = l.locktype
           AND g.database IS NOT DISTINCT FROM l.database
           AND g.relation IS NOT DISTINCT FROM l.relation
           AND g.page IS NOT DISTINCT FROM l.page
           AND g.tuple IS NOT DISTINCT FROM l.tuple
           AND g.virtualxid IS NOT DISTINCT FROM l.virtualxid
           AND g.transactionid IS NOT DISTINCT FROM l.transactionid
           AND g.classid IS NOT DISTINCT FROM l.classid
           AND g.objid IS NOT DISTINCT FROM l.objid
           AND g.objsubid IS NOT DISTINCT FROM l.objsubid
           AND EXISTS (SELECT FROM (LOCK_CONFLICTS) AS lc WHERE lc.mode = l.mode AND g.mode = ANY (lc.conflicts))
       ) AS h
 WHERE l.pid = $1::integer AND NOT l.granted
 LIMIT 1
