-- pgreap row locks: for sessions waiting on a row (a transactionid lock not
-- granted, while holding the row's tuple lock), the row and the transaction
-- they wait for, in the tables pgreap may read safely. Several transactions can
-- hold one row (SELECT ... FOR SHARE by two, a foreign key check): its xmax
-- is then a multixact, and the waiter waits for its members one after
-- another, while pg_blocking_pids names only the one it waits for now.
-- Only rows of this database: pg_class is per database, and another
-- database's relation OID may name something else here.
--  $1 integer[]  the waiters
SELECT w.pid,
       w.transactionid::text AS waits_for,
       t.page,
       t.tuple,
       n.nspname::text,
       c.relname::text
  FROM pg_catalog.pg_locks AS w
  JOIN pg_catalog.pg_locks AS t
    ON t.pid = w.pid AND t.locktype = 'tuple' AND t.granted
   AND t.database = (SELECT d.oid FROM pg_catalog.pg_database AS d
                      WHERE d.datname = pg_catalog.current_database())
  JOIN pg_catalog.pg_class AS c ON c.oid = t.relation
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE w.locktype = 'transactionid'
   AND NOT w.granted
   AND w.pid = ANY ($1::integer[])
   AND c.relkind = 'r'
   -- a policy is code: it would run as pgreap's role
   AND NOT c.relrowsecurity
   AND pg_catalog.has_table_privilege(c.oid, 'SELECT')
