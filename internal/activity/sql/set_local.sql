-- pgreap: a setting for the rest of this transaction only (SET LOCAL,
-- with the value bound).
--  $1 text  the setting's name
--  $2 text  its value
SELECT pg_catalog.set_config($1::text, $2::text, true)
