-- pgreap rollback of a prepared transaction: the one with this GID now, and
-- its transaction id. A GID is free again once its transaction ended, so
-- the GID with the time it was prepared names one transaction.
--  $1 text  the GID
--
-- transaction is 32 bits; txid_status takes the 64-bit id, rebuilt as the
-- one nearest to the snapshot's xmax (a prepared transaction is still
-- running: its id is within 2^31 of xmax).
WITH horizon AS (
    SELECT pg_catalog.txid_snapshot_xmax(pg_catalog.txid_current_snapshot()) AS xmax
)
SELECT p.prepared, p.database::text, p.owner::text,
       h.xmax + ((p.transaction::text::bigint - (h.xmax & 4294967295) + 6442450944) % 4294967296 - 2147483648) AS xid
  FROM pg_catalog.pg_prepared_xacts AS p
 CROSS JOIN horizon AS h
 WHERE p.gid = $1
