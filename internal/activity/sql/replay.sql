-- pgreap: a hot standby's replay, when the snapshot had no row for it (a
-- role without pg_read_all_stats cannot tell the startup process from the
-- other background processes while replay waits for no lock). No row on a
-- primary. Not pg_is_wal_replay_paused(): it raises an error once recovery
-- ends, which a standby being promoted may do under this statement.
WITH /*replay_ctes*/
SELECT /*replay_facts*/
 WHERE (SELECT pg_catalog.pg_is_in_recovery())
