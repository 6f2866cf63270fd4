-- pgreap watch: the backend_start of the daemon's own new connection, so
-- that it can be ended by (pid, backend_start) if the network loses it.
-- NULL when the role acts as another one that may not see its login
-- role's sessions.
SELECT a.backend_start
  FROM pg_catalog.pg_stat_activity AS a
 WHERE a.pid = pg_catalog.pg_backend_pid()
