-- pgreap: the backends a pooler named as its server connections (by pid),
-- with what tells one backend of a pid from another: pids are reused, and
-- a pooler may serve other servers too.
SELECT a.pid, a.backend_start, a.client_port, a.datname::text
  FROM pg_catalog.pg_stat_activity AS a
 WHERE a.pid = ANY ($1::integer[])
   AND a.datname IS NOT NULL
