-- pgreap prepared transactions: those with these GIDs, or of this
-- database, as a lock tree shows a root that has no backend (PREPARE
-- TRANSACTION: only ROLLBACK PREPARED or COMMIT PREPARED, in its database,
-- by its owner or a superuser, ends it).
--  $1 text[]  the GIDs, or NULL: any
--  $2 text    the database, or NULL: any
SELECT p.gid, p.database::text, p.owner::text, p.prepared
  FROM pg_catalog.pg_prepared_xacts AS p
 WHERE ($1::text[] IS NULL OR p.gid = ANY ($1::text[]))
   AND ($2::text IS NULL OR p.database = $2::text)
 ORDER BY p.prepared, p.gid
