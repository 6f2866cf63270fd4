-- pgreap watch: end a backend of a connection the daemon abandoned (the
-- network lost it without a close). No row: it is gone.
--  $1 integer      pid
--  $2 timestamptz  backend_start: pids are reused, (pid, backend_start) names one session
SELECT pg_catalog.pg_terminate_backend(a.pid)
  FROM pg_catalog.pg_stat_activity AS a
 WHERE a.pid = $1::integer
   AND a.backend_start = $2::timestamptz
