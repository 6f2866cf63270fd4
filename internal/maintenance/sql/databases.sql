-- pgreap kick --pgbouncer: the databases a kick's selection names (--db,
-- --exclude-db), matched on the server as the kick's own statement matches
-- them, so that the poolers' databases are chosen by the same rules.
--  from $1 on, the selection; its predicate over "a" replaces the "true"
--  after /*selection*/.
SELECT a.datname
  FROM pg_catalog.pg_database AS a
 WHERE /*selection*/ true
 ORDER BY a.datname
