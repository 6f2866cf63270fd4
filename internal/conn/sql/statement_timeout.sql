-- pgreap: the session's statement_timeout in milliseconds (pg_settings
-- gives it in its unit, ms), as the server read it from the startup packet:
-- the connection string, its options, PGOPTIONS, or pgreap's default. The
-- deadline on pgreap's side is this plus a margin.
SELECT s.setting
  FROM pg_catalog.pg_settings AS s
 WHERE s.name = 'statement_timeout'
