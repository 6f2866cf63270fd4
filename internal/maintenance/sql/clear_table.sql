-- pgreap clear: a table named, in the connected database, and the
-- relations whose locks a query on it takes: the table and every partition
-- or inheritance child under it (ALTER TABLE without ONLY recurses, and a
-- query on one partition locks it, not its parent), their indexes, TOAST
-- tables and the TOAST tables' indexes. Always one row: oid NULL when no
-- relation has that OID (a name is resolved beforehand: clear_name.sql).
--  $1 oid  the table's OID
-- shown: schema-qualified whatever the search_path. schema and kind say
-- what is not a table; of: the table an index, TOAST table or TOAST index
-- belongs to.
-- database is 0 for a shared catalog, as pg_locks has it.
SELECT c.oid,
       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) AS shown,
       n.nspname AS schema, c.relkind::text AS kind,
       (SELECT pg_catalog.quote_ident(tn.nspname) || '.' || pg_catalog.quote_ident(t.relname)
          FROM pg_catalog.pg_class AS t
          JOIN pg_catalog.pg_namespace AS tn ON tn.oid = t.relnamespace
         WHERE t.oid IN (SELECT i.indrelid FROM pg_catalog.pg_index AS i WHERE i.indexrelid = c.oid)
            OR t.reltoastrelid = c.oid
            OR t.reltoastrelid IN (SELECT i.indrelid FROM pg_catalog.pg_index AS i WHERE i.indexrelid = c.oid)
         ORDER BY t.reltoastrelid = c.oid DESC, t.relkind = 't'
         LIMIT 1) AS of,
       CASE WHEN c.relisshared THEN 0::pg_catalog.oid
            ELSE (SELECT d.oid FROM pg_catalog.pg_database AS d WHERE d.datname = pg_catalog.current_database())
       END AS database,
       ARRAY(WITH RECURSIVE tree(oid) AS (
                  SELECT c.oid
                  UNION SELECT h.inhrelid FROM pg_catalog.pg_inherits AS h JOIN tree ON h.inhparent = tree.oid)
             SELECT r.oid FROM pg_catalog.pg_class AS r JOIN tree ON r.oid = tree.oid
              UNION SELECT i.indexrelid FROM pg_catalog.pg_index AS i JOIN tree ON i.indrelid = tree.oid
              UNION SELECT r.reltoastrelid FROM pg_catalog.pg_class AS r JOIN tree ON r.oid = tree.oid WHERE r.reltoastrelid <> 0
              UNION SELECT i.indexrelid FROM pg_catalog.pg_class AS r JOIN tree ON r.oid = tree.oid
                      JOIN pg_catalog.pg_index AS i ON i.indrelid = r.reltoastrelid WHERE r.reltoastrelid <> 0
              ORDER BY 1) AS relations
  FROM (SELECT $1::pg_catalog.oid AS oid) AS q
  LEFT JOIN pg_catalog.pg_class AS c ON c.oid = q.oid
  LEFT JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
