-- pgreap exec: cancel pgreap's own attempt (backend $1) while, and only
-- while, it still waits for a lock: it has waited longer than its
-- lock_timeout, which the SQL must have lifted; true when signalled. Not
-- the action path: this is pgreap's own session, never another's.
--  $1 integer  the attempt's backend
SELECT pg_catalog.pg_cancel_backend(l.pid)
  FROM pg_catalog.pg_locks AS l
 WHERE l.pid = $1::integer AND NOT l.granted
