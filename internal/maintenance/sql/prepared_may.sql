-- pgreap: may this session roll back a prepared transaction? ROLLBACK
-- PREPARED needs its owner (the current role itself, not a member of it:
-- twophase.c compares the role ids) or a superuser, run connected to its
-- database, which the role must be allowed to connect to.
--  $1 text  the owner
--  $2 text  the database
SELECT CASE
         WHEN NOT (r.rolsuper OR r.rolname = $1) THEN 'only its owner (' || $1 || ') or a superuser may end it'
         WHEN d.datname IS NULL THEN 'its database is gone'
         WHEN NOT d.datallowconn THEN 'its database does not allow connections (ALLOW_CONNECTIONS false: drained?)'
         WHEN NOT pg_catalog.has_database_privilege(d.oid, 'CONNECT') THEN 'no CONNECT privilege on its database'
       END AS refused
  FROM pg_catalog.pg_roles AS r
  LEFT JOIN pg_catalog.pg_database AS d ON d.datname = $2
 WHERE r.rolname = pg_catalog.current_user()
