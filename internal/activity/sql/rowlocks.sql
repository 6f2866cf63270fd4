-- pgreap row locks: for sessions waiting on a row (a transactionid lock not
-- granted, while holding the row's tuple lock, whose mode says how strong a
-- row lock it asks for), the row and the transaction they wait for. Several
-- transactions can hold one row (SELECT ... FOR SHARE by two, a foreign key
-- check): its xmax is then a multixact, and the waiter waits for the
-- members whose lock conflicts with its own, one after another, while
-- pg_blocking_pids names only the one it waits for now.
--
-- pgreap reads such a row by its table's name, which is resolved when the
-- read runs: a role that can make that name stand for a view (the table's
-- owner, or its schema's, by renaming) between this look and the read
-- runs the view's code in pgreap's session. SET ROLE is no sandbox: code
-- run under it can RESET ROLE to pgreap's login role (set_config('role',
-- 'none', true)), a superuser as often as not. So only rows of tables
--   - of this database: pg_class is per database, and another database's
--     relation OID may name something else here;
--   - plain, without row level security (a policy is code);
--   - whose owner pgreap's role may act as;
--   - whose owner, and their schema's (for public on 15+, owned by
--     pg_database_owner: the database's owner), is a superuser or
--     pgreap's own login role: no one with less than pgreap's rights can
--     change what the name stands for.
-- Elsewhere pg_blocking_pids' answer stands (unblock's rounds still reach
-- every holder, one at a time).
--  $1 integer[]  the waiters
SELECT w.pid,
       w.transactionid::text AS waits_for,
       t.mode,
       t.page,
       t.tuple,
       n.nspname::text,
       c.relname::text,
       o.rolname::text AS owner
  FROM pg_catalog.pg_locks AS w
  JOIN pg_catalog.pg_locks AS t
    ON t.pid = w.pid AND t.locktype = 'tuple' AND t.granted
   AND t.database = (SELECT d.oid FROM pg_catalog.pg_database AS d
                      WHERE d.datname = pg_catalog.current_database())
  JOIN pg_catalog.pg_class AS c ON c.oid = t.relation
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_roles AS o ON o.oid = c.relowner
  JOIN pg_catalog.pg_roles AS so ON so.oid = n.nspowner
  JOIN pg_catalog.pg_database AS d ON d.datname = pg_catalog.current_database()
  -- a schema of pg_database_owner (public, from 15 on) is the database owner's
  JOIN pg_catalog.pg_roles AS eo
    ON eo.oid = CASE WHEN so.rolname = 'pg_database_owner' THEN d.datdba ELSE n.nspowner END
 WHERE w.locktype = 'transactionid'
   AND NOT w.granted
   AND w.pid = ANY ($1::integer[])
   AND c.relkind = 'r'
   AND NOT c.relrowsecurity
   AND pg_catalog.pg_has_role(CURRENT_USER, c.relowner, 'MEMBER')
   AND (o.rolsuper OR o.rolname = SESSION_USER)
   AND (eo.rolsuper OR eo.rolname = SESSION_USER)
