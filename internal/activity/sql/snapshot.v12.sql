-- pgreap snapshot, PostgreSQL 12 (no leader_pid before 13, no query_id before 14).
-- One row per client session. pgreap's own backend is left out, and so are
-- rows with datname IS NULL: those are not clients (checkpointer, walwriter,
-- the autovacuum launcher, physical walsenders, ...).
-- blocked_by is computed only for sessions waiting on a heavyweight lock:
-- pg_blocking_pids takes the lock manager's partition locks, so it is costly.
-- Waiting is a lock not granted in pg_locks, not wait_event_type = 'Lock':
-- a waiter clears its wait event for a moment every deadlock_timeout, when
-- it wakes to check for a deadlock.
WITH waiting AS MATERIALIZED (
        -- The locks sessions wait for, each with the modes it conflicts
        -- with as a bit mask (bit n: mode n, lock.c's LockConflicts).
        -- Read once, and only when a row asks (a CTE is read lazily).
        SELECT l.pid, l.locktype, l.database, l.relation, l.page, l.tuple, l.virtualxid,
               l.transactionid, l.classid, l.objid, l.objsubid,
               (ARRAY[256, 384, 480, 496, 472, 504, 508, 510])[pg_catalog.array_position(
                  ARRAY['AccessShareLock', 'RowShareLock', 'RowExclusiveLock', 'ShareUpdateExclusiveLock',
                        'ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock'],
                  l.mode)] AS conflicts
          FROM pg_catalog.pg_locks AS l
         WHERE NOT l.granted),
     prepared AS MATERIALIZED (
        -- The locks prepared transactions hold: no backend holds them (pid
        -- IS NULL), and pg_blocking_pids says 0 for each. Their own xid's
        -- lock names the virtualtransaction that all of them share.
        SELECT p.gid, h.locktype, h.database, h.relation, h.page, h.tuple, h.virtualxid,
               h.transactionid, h.classid, h.objid, h.objsubid,
               1 << pg_catalog.array_position(
                  ARRAY['AccessShareLock', 'RowShareLock', 'RowExclusiveLock', 'ShareUpdateExclusiveLock',
                        'ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock'],
                  h.mode) AS bit
          FROM pg_catalog.pg_prepared_xacts AS p
          JOIN pg_catalog.pg_locks AS x
            ON x.locktype = 'transactionid' AND x.pid IS NULL AND x.transactionid = p.transaction
          JOIN pg_catalog.pg_locks AS h
            ON h.virtualtransaction = x.virtualtransaction AND h.pid IS NULL AND h.granted)
SELECT a.pid,
       NULL::integer AS leader_pid,
       a.datname::text,
       a.usename::text,
       a.application_name,
       a.client_addr,
       a.backend_type,
       a.state,
       a.backend_start,
       a.xact_start,
       a.query_start,
       a.state_change,
       a.wait_event_type,
       a.wait_event,
       a.query,
       NULL::bigint AS query_id,
       -- A prepared transaction is pid 0 to pg_blocking_pids: blocked_by
       -- names backends only, blocked_by_prepared the transactions' GIDs,
       -- found as the server finds them (a conflicting lock on the same
       -- object; a prepared transaction never waits, so it only blocks hard).
       CASE WHEN a.pid IN (SELECT w.pid FROM waiting AS w)
            THEN pg_catalog.array_remove(pg_catalog.pg_blocking_pids(a.pid), 0) END AS blocked_by,
       CASE WHEN a.pid IN (SELECT w.pid FROM waiting AS w)
            THEN ARRAY(SELECT DISTINCT pr.gid
                         FROM waiting AS w
                         JOIN prepared AS pr
                           ON pr.locktype = w.locktype
                          AND pr.database IS NOT DISTINCT FROM w.database
                          AND pr.relation IS NOT DISTINCT FROM w.relation
                          AND pr.page IS NOT DISTINCT FROM w.page
                          AND pr.tuple IS NOT DISTINCT FROM w.tuple
                          AND pr.virtualxid IS NOT DISTINCT FROM w.virtualxid
                          AND pr.transactionid IS NOT DISTINCT FROM w.transactionid
                          AND pr.classid IS NOT DISTINCT FROM w.classid
                          AND pr.objid IS NOT DISTINCT FROM w.objid
                          AND pr.objsubid IS NOT DISTINCT FROM w.objsubid
                        WHERE w.pid = a.pid AND w.conflicts & pr.bit <> 0
                        ORDER BY 1) END AS blocked_by_prepared,
       pg_catalog.statement_timestamp() AS now,
       pg_catalog.pg_postmaster_start_time() AS server_started
  FROM pg_catalog.pg_stat_activity AS a
 WHERE a.datname IS NOT NULL
   AND a.pid <> pg_catalog.pg_backend_pid()
