-- pgreap clear: the OID of a table named as the user typed it, run on a
-- session opened with the user's own connection settings and no
-- search_path of pgreap's, so that a name without its schema is the
-- relation psql with the same connection string would find (its options,
-- PGOPTIONS, the role's, database's and server's settings: the server
-- reads them, pgreap does not guess). NULL when there is none. Nothing
-- else runs on that session: its search_path may hold any schema, so
-- even the types are pg_catalog-qualified.
--  $1 text  the table as typed
SELECT pg_catalog.to_regclass($1::pg_catalog.text)::pg_catalog.oid
