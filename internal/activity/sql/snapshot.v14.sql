-- pgreap snapshot, PostgreSQL 14 and later (leader_pid 13+, query_id 14+).
-- One row per client session. pgreap's own backend is left out, and so are
-- rows with datname IS NULL: those are not clients (checkpointer, walwriter,
-- the autovacuum launcher, physical walsenders, ...).
-- blocked_by is computed only for sessions waiting on a heavyweight lock:
-- pg_blocking_pids takes the lock manager's partition locks, so it is costly.
-- Waiting is a lock not granted in pg_locks, not wait_event_type = 'Lock':
-- a waiter clears its wait event for a moment every deadlock_timeout, when
-- it wakes to check for a deadlock.
SELECT a.pid,
       a.leader_pid,
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
       a.query_id,
       CASE WHEN a.pid IN (SELECT l.pid FROM pg_catalog.pg_locks AS l WHERE NOT l.granted)
            THEN pg_catalog.pg_blocking_pids(a.pid) END AS blocked_by,
       pg_catalog.statement_timestamp() AS now,
       pg_catalog.pg_postmaster_start_time() AS server_started
  FROM pg_catalog.pg_stat_activity AS a
 WHERE a.datname IS NOT NULL
   AND a.pid <> pg_catalog.pg_backend_pid()
