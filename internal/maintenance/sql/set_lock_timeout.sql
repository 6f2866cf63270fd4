-- pgreap exec: the session's lock_timeout for the attempt to come (not
-- SET LOCAL: the attempt's own transaction starts after it), bound.
--  $1 text  milliseconds
SELECT pg_catalog.set_config('lock_timeout', $1::pg_catalog.text, false)
