-- pgreap row waits: the backends inside a wait for a row. A session that
-- must wait for a row's lockers holds the row's tuple lock until it has
-- them all behind it; one locked by several transactions (a multixact:
-- FOR SHARE by two) is waited for member after member, and between two
-- of them, for an instant that a loaded machine stretches, the waiter
-- waits on no lock and pg_blocking_pids names no one. Holding the tuple
-- lock, it is still waiting for the row.
SELECT DISTINCT l.pid
  FROM pg_catalog.pg_locks AS l
 WHERE l.locktype = 'tuple'
   AND l.granted
   AND l.pid IS NOT NULL
