-- pgreap watch: the election of a target's leader, the advisory lock of
-- the policy's key (held for the session: the leader is the session that
-- holds it).
--  $1 integer  the lock's class (pgreap's)
--  $2 integer  the key
SELECT pg_catalog.pg_try_advisory_lock($1::integer, $2::integer)
