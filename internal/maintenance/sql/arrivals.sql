-- pgreap kick: client sessions that connected to the kicked databases
-- since the kick chose its sessions (a pool reconnecting).
--  $1 timestamptz  when the sessions were chosen (the server's clock)
--  and from $2 on, the databases' selection; its predicate over "a"
--  replaces the "true" after /*selection*/.
SELECT pg_catalog.count(*)
  FROM pg_catalog.pg_stat_activity AS a
 WHERE a.backend_type = 'client backend'
   AND a.pid <> pg_catalog.pg_backend_pid()
   AND a.backend_start > $1::timestamptz
   AND /*selection*/ true
