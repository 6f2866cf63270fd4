-- pgreap watch: of the sessions that waited behind a root of lock waits
-- whose end (or cancelled query) was just verified, the ones released:
-- still there, and no longer waiting, directly or through others, on the
-- root or on another of those waiters: one that now waits on a session
-- that waited in between (and took the lock when the root let it go) was
-- not released. With the server's clock, to tell how long each had waited.
--  $1 integer        the root's pid
--  $2 integer[]      the waiters' pids
--  $3 timestamptz[]  their backend_start: pids are reused, (pid, backend_start) names one session
WITH RECURSIVE up(waiter, pid) AS (
    -- Whom each waiter waits for, directly, then through others. A
    -- prepared transaction is pid 0: it waits for no one.
    SELECT w.pid, b.pid
      FROM pg_catalog.unnest($2::integer[]) AS w(pid)
     CROSS JOIN LATERAL pg_catalog.unnest(pg_catalog.pg_blocking_pids(w.pid)) AS b(pid)
    UNION
    SELECT up.waiter, b.pid
      FROM up
     CROSS JOIN LATERAL pg_catalog.unnest(pg_catalog.pg_blocking_pids(up.pid)) AS b(pid)
     WHERE up.pid <> 0
)
SELECT w.pid, pg_catalog.statement_timestamp()
  FROM ROWS FROM (pg_catalog.unnest($2::integer[]), pg_catalog.unnest($3::timestamptz[])) AS w(pid, backend_start)
  JOIN pg_catalog.pg_stat_activity AS a ON a.pid = w.pid AND a.backend_start = w.backend_start
 WHERE w.pid NOT IN (SELECT up.waiter FROM up WHERE up.pid = $1::integer OR up.pid = ANY ($2::integer[]))
 ORDER BY w.pid
