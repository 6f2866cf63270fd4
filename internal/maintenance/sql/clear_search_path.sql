-- pgreap clear: for the rest of this transaction, the search_path the
-- user's own session would start with (pgreap's own sets pg_catalog,
-- pg_temp), so that a table named without its schema is the one psql, with
-- the same connection string, would find: the one its options or
-- PGOPTIONS set, else ALTER ROLE ... IN DATABASE, then ALTER ROLE, then
-- ALTER DATABASE, else the server's built-in default ("$user", public).
--  $1 text  the search_path the connection string or its options set,
--           NULL when they set none
SELECT pg_catalog.set_config('search_path', coalesce($1::text,
         (SELECT pg_catalog.substr(s.c, 13)
            FROM pg_catalog.pg_db_role_setting AS r
            CROSS JOIN pg_catalog.unnest(r.setconfig) AS s(c)
           WHERE s.c LIKE 'search\_path=%'
             AND r.setdatabase IN (0, (SELECT d.oid FROM pg_catalog.pg_database AS d WHERE d.datname = pg_catalog.current_database()))
             AND r.setrole IN (0, (SELECT u.oid FROM pg_catalog.pg_roles AS u WHERE u.rolname = SESSION_USER))
           ORDER BY r.setrole <> 0 DESC, r.setdatabase <> 0 DESC
           LIMIT 1),
         (SELECT g.boot_val FROM pg_catalog.pg_settings AS g WHERE g.name = 'search_path')), true)
