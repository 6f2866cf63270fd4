-- pgreap clear: a table named, in the connected database, and the
-- relations whose locks a query on it takes: the table, its indexes, its
-- TOAST table and the TOAST table's index. A name is resolved as the
-- server resolves it (search_path, quoting) by to_regclass; a number (the
-- caller checked it is one) is an OID. Always one row: oid NULL when
-- unknown.
--  $1 text  the table as typed
--  $2 text  the OID it is, if a number (NULL: a name)
-- bare: a name without its schema. shown: schema-qualified whatever the
-- search_path.
-- database is 0 for a shared catalog, as pg_locks has it.
SELECT c.oid,
       CASE WHEN $2::text IS NOT NULL THEN false
            ELSE pg_catalog.array_length(pg_catalog.parse_ident($1::text), 1) = 1 END AS bare,
       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) AS shown,
       CASE WHEN c.relisshared THEN 0::pg_catalog.oid
            ELSE (SELECT d.oid FROM pg_catalog.pg_database AS d WHERE d.datname = pg_catalog.current_database())
       END AS database,
       ARRAY(SELECT c.oid WHERE c.oid IS NOT NULL
              UNION SELECT i.indexrelid FROM pg_catalog.pg_index AS i WHERE i.indrelid = c.oid
              UNION SELECT c.reltoastrelid WHERE c.reltoastrelid <> 0
              UNION SELECT i.indexrelid FROM pg_catalog.pg_index AS i WHERE c.reltoastrelid <> 0 AND i.indrelid = c.reltoastrelid
              ORDER BY 1) AS relations
  FROM (SELECT CASE WHEN $2::text IS NOT NULL THEN $2::text::pg_catalog.oid
                    ELSE pg_catalog.to_regclass($1::text)::pg_catalog.oid END AS oid) AS q
  LEFT JOIN pg_catalog.pg_class AS c ON c.oid = q.oid
  LEFT JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
