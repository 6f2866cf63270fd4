-- pgreap watch: of the sessions that waited behind the roots of lock
-- waits whose end (or cancelled query) was just verified, the ones each
-- root released: still there, and no longer waiting, directly or through
-- others, on the root or on another of its waiters: one that now waits on
-- a session that waited in between (and took the lock when the root let it
-- go) was not released. With the server's clock, to tell how long each had
-- waited. One statement for every root a verification found ended: the
-- daemon's one connection then soon answers the next deadline.
--  $1 integer[]      the root each waiter waited behind
--  $2 integer[]      the waiters' pids
--  $3 timestamptz[]  their backend_start: pids are reused, (pid, backend_start) names one session
WITH RECURSIVE behind AS MATERIALIZED (
    SELECT *
      FROM ROWS FROM (pg_catalog.unnest($1::integer[]),
                      pg_catalog.unnest($2::integer[]),
                      pg_catalog.unnest($3::timestamptz[])) AS w(root, pid, backend_start)
), up(waiter, pid) AS (
    -- Whom each waiter waits for, directly, then through others. A
    -- prepared transaction is pid 0: it waits for no one.
    SELECT w.pid, b.pid
      FROM (SELECT DISTINCT behind.pid FROM behind) AS w
     CROSS JOIN LATERAL pg_catalog.unnest(pg_catalog.pg_blocking_pids(w.pid)) AS b(pid)
    UNION
    SELECT up.waiter, b.pid
      FROM up
     CROSS JOIN LATERAL pg_catalog.unnest(pg_catalog.pg_blocking_pids(up.pid)) AS b(pid)
     WHERE up.pid <> 0
)
SELECT w.root, w.pid, pg_catalog.statement_timestamp()
  FROM behind AS w
  JOIN pg_catalog.pg_stat_activity AS a ON a.pid = w.pid AND a.backend_start = w.backend_start
 WHERE NOT EXISTS (SELECT FROM up
                    WHERE up.waiter = w.pid
                      AND (up.pid = w.root
                           OR up.pid IN (SELECT o.pid FROM behind AS o WHERE o.root = w.root)))
 ORDER BY w.root, w.pid
