-- pgreap watch: who holds a target's election lock (a session-level
-- advisory lock on two int4 keys: classid, objid, objsubid 2, in this
-- database). Advisory locks need no privilege, so any login role can take
-- it: only a session of the daemon's own login role (pg_stat_activity's
-- usesysid is the session user, whatever SET ROLE or a role's default
-- role says) with the daemon's application_name is a pgreap watch (a
-- replica). A prepared transaction can hold it too (pg_advisory_xact_lock,
-- then PREPARE TRANSACTION): no pid, named by its GID.
--  $1 integer  the first key (lockClass)
--  $2 integer  the second key (the target's name, hashed)
--  $3 text     the daemon's application_name
SELECT l.pid, a.backend_start, a.usename::text, a.application_name, a.client_addr::text,
       coalesce(a.usesysid = me.oid, false) AS same_role,
       coalesce(a.usesysid = me.oid AND a.application_name = $3, false) AS replica,
       g.gid
  FROM pg_catalog.pg_locks AS l
  LEFT JOIN pg_catalog.pg_stat_activity AS a ON a.pid = l.pid
  LEFT JOIN LATERAL (
    SELECT p.gid
      FROM pg_catalog.pg_locks AS x
      JOIN pg_catalog.pg_prepared_xacts AS p ON p.transaction = x.transactionid
     WHERE l.pid IS NULL AND x.locktype = 'transactionid' AND x.pid IS NULL
       AND x.virtualtransaction = l.virtualtransaction
  ) AS g ON true
 CROSS JOIN (SELECT r.oid FROM pg_catalog.pg_roles AS r WHERE r.rolname = SESSION_USER) AS me
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
   AND l.classid = $1::integer::oid AND l.objid = $2::integer::oid
   AND l.database = (SELECT d.oid FROM pg_catalog.pg_database AS d WHERE d.datname = pg_catalog.current_database())
