pg_catalog.json_build_object(
            'replay_timestamp', pg_catalog.pg_last_xact_replay_timestamp(),
            'receive_lsn', pg_catalog.pg_last_wal_receive_lsn(),
            'replay_lsn', pg_catalog.pg_last_wal_replay_lsn(),
            'lag_bytes', pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_receive_lsn(), pg_catalog.pg_last_wal_replay_lsn()),
            'lock_wait', EXISTS (SELECT FROM replay_locks AS w WHERE NOT w.granted),
            'waiting_since', (SELECT pg_catalog.min(/*waitstart*/) FROM replay_locks AS w WHERE NOT w.granted),
            'blockers', (SELECT pg_catalog.array_agg(b.pid ORDER BY b.pid) FROM replay_blockers AS b),
            'conflicts', (SELECT pg_catalog.json_build_object(
                    'tablespace', pg_catalog.sum(c.confl_tablespace), 'lock', pg_catalog.sum(c.confl_lock),
                    'snapshot', pg_catalog.sum(c.confl_snapshot), 'bufferpin', pg_catalog.sum(c.confl_bufferpin),
                    'deadlock', pg_catalog.sum(c.confl_deadlock))
                  FROM pg_catalog.pg_stat_database_conflicts AS c))
