-- pgreap wait: which of the signalled sessions are still there, and what
-- they run. One statement per poll for the whole set: waiting backend after
-- backend, as pg_terminate_backend(pid, timeout) does, costs a poll
-- interval per session.
--  $1 integer[]      pids
--  $2 timestamptz[]  backend_start: pids are reused, (pid, backend_start) names one session
SELECT c.n, a.pid IS NOT NULL AS present, a.query_start, a.state
  FROM ROWS FROM (pg_catalog.unnest($1::integer[]),
                  pg_catalog.unnest($2::timestamptz[]))
       WITH ORDINALITY AS c(pid, backend_start, n)
  LEFT JOIN pg_catalog.pg_stat_activity AS a
         ON a.pid = c.pid AND a.backend_start = c.backend_start
 ORDER BY c.n
