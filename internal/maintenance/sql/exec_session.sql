-- pgreap exec: the session's backend as the server knows it (behind a
-- pooler it is not the one the protocol named) and its statement_timeout
-- in milliseconds (0: none), read before the first attempt.
SELECT pg_catalog.pg_backend_pid(),
       (SELECT s.setting::pg_catalog.int8 FROM pg_catalog.pg_settings AS s WHERE s.name = 'statement_timeout')
