-- pgreap unblock, PostgreSQL 14 and later: how long each session waiting
-- on a heavyweight lock has waited (pg_locks.waitstart is 14+).
SELECT a.pid,
       pg_catalog.statement_timestamp()
         - coalesce((SELECT pg_catalog.min(l.waitstart)
                       FROM pg_catalog.pg_locks AS l
                      WHERE l.pid = a.pid AND NOT l.granted),
                    a.query_start) AS waited
  FROM pg_catalog.pg_stat_activity AS a
 WHERE a.pid IN (SELECT l.pid FROM pg_catalog.pg_locks AS l WHERE NOT l.granted)
   AND a.pid <> pg_catalog.pg_backend_pid()
