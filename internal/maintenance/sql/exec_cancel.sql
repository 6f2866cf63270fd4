-- pgreap exec: cancel pgreap's own attempt (backend $1) while, and only
-- while, it still waits for a lock: it has waited longer than its
-- lock_timeout, which the SQL must have lifted; true when signalled. On
-- 14+ only while it is the same wait the look saw ($2, its waitstart): a
-- new wait that began since has not waited that long, and the holders of
-- the one seen would be ended for it. Not the action path: this is
-- pgreap's own session, never another's.
--  $1 integer      the attempt's backend
--  $2 timestamptz  the wait's pg_locks.waitstart; NULL before 14
SELECT pg_catalog.pg_cancel_backend(l.pid)
  FROM pg_catalog.pg_locks AS l
 WHERE l.pid = $1::integer AND NOT l.granted
   AND ($2::timestamptz IS NULL
        OR (pg_catalog.to_jsonb(l) OPERATOR(pg_catalog.->>) 'waitstart')::timestamptz = $2::timestamptz)
