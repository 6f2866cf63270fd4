-- pgreap row lock holders: the backends of the transactions that hold a
-- row, from the members of the row's multixact, with how strongly each
-- holds it; every transaction holds the ExclusiveLock on its own id. The
-- row is read by its ctid from the table the caller names (a quoted
-- identifier, in place of the placeholder after FROM), as its owner
-- (rowlocks.sql says why): its xmax is the multixact only when it is not
-- the transaction the waiter waits for.
--  $1 tid   the row
--  $2 xid   the transaction the waiter waits for (a member)
SELECT l.pid, m.xid::text, m.mode
  FROM /*table*/ AS r
 CROSS JOIN LATERAL pg_catalog.pg_get_multixact_members(r.xmax) AS m
  JOIN pg_catalog.pg_locks AS l
    ON l.locktype = 'transactionid' AND l.granted AND l.mode = 'ExclusiveLock'
   AND l.transactionid = m.xid
 WHERE r.ctid = $1::tid
   AND r.xmax <> $2::xid
   AND l.pid IS NOT NULL
