-- pgreap clear: a table named, in the connected database, and the
-- relations whose locks a query on it takes: the table, its indexes, its
-- TOAST table and the TOAST table's index. A name is resolved as the
-- server resolves it (search_path, quoting) by to_regclass: no row when
-- unknown; a number (the caller checked it is one) is an OID, no row when
-- pg_class has no such relation.
--  $1 text  the table as typed
--  $2 text  the OID it is, if a number (NULL: a name)
-- database is 0 for a shared catalog, as pg_locks has it.
SELECT c.oid, c.oid::pg_catalog.regclass::text AS shown,
       CASE WHEN c.relisshared THEN 0::pg_catalog.oid
            ELSE (SELECT d.oid FROM pg_catalog.pg_database AS d WHERE d.datname = pg_catalog.current_database())
       END AS database,
       ARRAY(SELECT c.oid
              UNION SELECT i.indexrelid FROM pg_catalog.pg_index AS i WHERE i.indrelid = c.oid
              UNION SELECT c.reltoastrelid WHERE c.reltoastrelid <> 0
              UNION SELECT i.indexrelid FROM pg_catalog.pg_index AS i WHERE c.reltoastrelid <> 0 AND i.indrelid = c.reltoastrelid
              ORDER BY 1) AS relations
  FROM pg_catalog.pg_class AS c
 WHERE c.oid = CASE WHEN $2::text IS NOT NULL THEN $2::text::pg_catalog.oid
                    ELSE pg_catalog.to_regclass($1::text)::pg_catalog.oid END
