-- pgreap prepared transactions: those with these GIDs, as a lock tree shows
-- a root that has no backend (PREPARE TRANSACTION: only ROLLBACK PREPARED
-- or COMMIT PREPARED, in its database, by its owner or a superuser, ends it).
--  $1 text[]  the GIDs
SELECT p.gid, p.database::text, p.owner::text, p.prepared
  FROM pg_catalog.pg_prepared_xacts AS p
 WHERE p.gid = ANY ($1::text[])
 ORDER BY p.gid
