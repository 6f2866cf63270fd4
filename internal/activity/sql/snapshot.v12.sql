-- pgreap snapshot, PostgreSQL 12 (no leader_pid before 13, no query_id before 14).
-- One row per client session. pgreap's own backend is left out, and so are
-- rows with datname IS NULL: those are not clients (checkpointer, walwriter,
-- the autovacuum launcher, physical walsenders, ...). One is kept: the
-- startup process of a hot standby, whatever the filter (the caller adds it
-- as "AND (a.backend_type = 'startup' OR (filter))"), which is the replay and
-- is shown as such, never as a session; to a role without pg_read_all_stats
-- its backend_type is NULL, and it is known by its ACCESS EXCLUSIVE locks, if any
-- (sql/replay_locks.sql; sql/replay.sql otherwise).
-- blocked_by is computed only for sessions waiting on a heavyweight lock:
-- pg_blocking_pids takes the lock manager's partition locks, so it is costly.
-- Waiting is a lock not granted in pg_locks, not wait_event_type = 'Lock':
-- a waiter clears its wait event for a moment every deadlock_timeout, when
-- it wakes to check for a deadlock.
WITH waiting AS MATERIALIZED (
        -- The locks sessions wait for: the object as one text (the
        -- columns that name it, by position; which are set depends on the
        -- lock type), and the modes the wait conflicts with as a bit mask
        -- (bit n: mode n, lock.c's LockConflicts).
        SELECT l.pid,
               pg_catalog.format('%s|%s|%s|%s|%s|%s|%s|%s|%s|%s', l.locktype, l.database, l.relation, l.page,
                  l.tuple, l.virtualxid, l.transactionid, l.classid, l.objid, l.objsubid) AS object,
               (ARRAY[256, 384, 480, 496, 472, 504, 508, 510])[pg_catalog.array_position(
                  ARRAY['AccessShareLock', 'RowShareLock', 'RowExclusiveLock', 'ShareUpdateExclusiveLock',
                        'ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock'],
                  l.mode)] AS conflicts
          FROM pg_catalog.pg_locks AS l
         WHERE NOT l.granted),
     prepared_blockers AS MATERIALIZED (
        -- For each waiter, the prepared transactions holding a lock on the
        -- object it waits for in a mode its wait conflicts with: the
        -- server's own test (a prepared transaction never waits, so it
        -- only ever blocks this way), and pg_blocking_pids says 0 for
        -- each. Their locks have no backend (pid IS NULL); their own
        -- xid's lock names the virtualtransaction that all of them share.
        -- Joined on the object's text, so by hash: linear in the waiters.
        -- Nothing is read when no transaction is prepared.
        SELECT w.pid, pg_catalog.array_agg(DISTINCT p.gid ORDER BY p.gid) AS gids
          FROM waiting AS w
          JOIN pg_catalog.pg_locks AS h
            ON pg_catalog.format('%s|%s|%s|%s|%s|%s|%s|%s|%s|%s', h.locktype, h.database, h.relation, h.page,
                  h.tuple, h.virtualxid, h.transactionid, h.classid, h.objid, h.objsubid) = w.object
           AND h.granted AND h.pid IS NULL
          JOIN pg_catalog.pg_locks AS x
            ON x.virtualtransaction = h.virtualtransaction AND x.locktype = 'transactionid' AND x.pid IS NULL
          JOIN pg_catalog.pg_prepared_xacts AS p
            ON p.transaction = x.transactionid
         WHERE w.conflicts & (1 << pg_catalog.array_position(
                  ARRAY['AccessShareLock', 'RowShareLock', 'RowExclusiveLock', 'ShareUpdateExclusiveLock',
                        'ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock'],
                  h.mode)) <> 0
           AND EXISTS (SELECT FROM pg_catalog.pg_prepared_xacts)
         GROUP BY w.pid),
     -- On a hot standby, the locks of WAL replay and the backends that
     -- hold it up (sql/replay_locks.sql, sql/replay_blockers.sql,
     -- put here when the statement is read).
     /*replay_ctes*/
SELECT a.pid,
       NULL::integer AS leader_pid,
       a.datname::text,
       a.usename::text,
       a.application_name,
       a.client_addr,
       a.client_port,
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
            THEN coalesce(pb.gids, '{}') END AS blocked_by_prepared,
       a.pid IN (SELECT b.pid FROM replay_blockers AS b) AS blocking_replay,
       -- When its lock wait began: its statement's start (pg_locks has no
       -- waitstart before 14; unblock measures a wait so too).
       CASE WHEN a.pid IN (SELECT w.pid FROM waiting AS w) THEN a.query_start END AS wait_start,
       -- The startup process of a hot standby is no client, but it is the
       -- replay: its row carries what pgreap shows of it. Not
       -- pg_is_wal_replay_paused(): it raises an error once recovery ends,
       -- which a standby being promoted may do under this statement.
       CASE WHEN a.backend_type = 'startup' OR a.pid IN (SELECT w.pid FROM replay_locks AS w)
            THEN /*replay_facts*/ END AS replay,
       (SELECT pg_catalog.pg_is_in_recovery()) AS in_recovery,
       pg_catalog.statement_timestamp() AS now,
       pg_catalog.pg_postmaster_start_time() AS server_started
  FROM pg_catalog.pg_stat_activity AS a
  LEFT JOIN prepared_blockers AS pb ON pb.pid = a.pid
 WHERE a.pid <> pg_catalog.pg_backend_pid()
   AND (a.datname IS NOT NULL OR a.backend_type = 'startup' OR a.pid IN (SELECT w.pid FROM replay_locks AS w))
