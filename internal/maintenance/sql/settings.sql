-- pgreap drain: a database's connection settings, and whether pgreap's role
-- may change them (ALTER DATABASE: a superuser, or a member of the owner).
--  $1 text  the database
SELECT d.datallowconn, d.datconnlimit,
       (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = CURRENT_USER)
       OR pg_catalog.pg_has_role(d.datdba, 'USAGE')
  FROM pg_catalog.pg_database AS d
 WHERE d.datname = $1::text
