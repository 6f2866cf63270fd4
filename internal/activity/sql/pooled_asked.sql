-- pgreap: the server's clock just before the poolers are asked which client
-- each server connection serves. A backend whose state changed after it may
-- serve another client than the one the pooler named.
SELECT pg_catalog.statement_timestamp()
