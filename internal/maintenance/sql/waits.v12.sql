-- pgreap unblock, PostgreSQL 12 and 13: how long each session waiting on a
-- heavyweight lock has waited, as the age of its statement (pg_locks has
-- no waitstart before 14).
SELECT a.pid,
       pg_catalog.statement_timestamp() - a.query_start AS waited
  FROM pg_catalog.pg_stat_activity AS a
 WHERE a.pid IN (SELECT l.pid FROM pg_catalog.pg_locks AS l WHERE NOT l.granted)
   AND a.pid <> pg_catalog.pg_backend_pid()
