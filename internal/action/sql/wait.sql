-- pgreap wait: which of the signalled sessions are still there, and what
-- they run. One statement per poll for the whole set: waiting backend after
-- backend, as pg_terminate_backend(pid, timeout) does, costs a poll
-- interval per session.
--  $1 integer[]      pids
--  $2 timestamptz[]  backend_start: pids are reused, (pid, backend_start) names one session
--  $3 text[]         the transaction id (backend_xid) the session had when signalled, or NULL:
--                    whether it committed is the truth about a cancelled write
--
-- backend_xid is 32 bits; txid_status takes the 64-bit id, rebuilt as the
-- one nearest to the snapshot's xmax (a live or recent xid is within 2^31
-- of it, before or after: xmax is the oldest id not yet completed, and a
-- running transaction may have a later one).
WITH horizon AS (
    SELECT pg_catalog.txid_snapshot_xmax(pg_catalog.txid_current_snapshot()) AS xmax
)
SELECT c.n, a.pid IS NOT NULL AS present, a.query_start, a.state, a.xact_start, a.state_change,
       CASE WHEN c.xid IS NOT NULL THEN
            pg_catalog.txid_status(h.xmax + ((c.xid::bigint - (h.xmax & 4294967295) + 6442450944) % 4294967296 - 2147483648))
       END AS xid_status
  FROM ROWS FROM (pg_catalog.unnest($1::integer[]),
                  pg_catalog.unnest($2::timestamptz[]),
                  pg_catalog.unnest($3::text[]))
       WITH ORDINALITY AS c(pid, backend_start, xid, n)
  CROSS JOIN horizon AS h
  LEFT JOIN pg_catalog.pg_stat_activity AS a
         ON a.pid = c.pid AND a.backend_start = c.backend_start
 ORDER BY c.n
