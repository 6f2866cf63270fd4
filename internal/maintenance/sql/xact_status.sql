-- pgreap unblock --rollback-prepared: what became of the prepared
-- transaction after ROLLBACK PREPARED (aborted, committed, in progress;
-- NULL when too old to tell).
--  $1 bigint  its transaction id, with epoch
SELECT pg_catalog.txid_status($1::bigint)
