-- pgreap action: signal exactly the chosen sessions, re-checked at this instant.
-- One statement for the whole set: pg_stat_activity is read once, each
-- chosen session is judged against it, and only the rows judged 'ok' are
-- signalled, in the same statement, so nothing can slip in between.
--
--  $1  integer[]      pids
--  $2  timestamptz[]  backend_start: pids are reused, (pid, backend_start) names one session
--  $3  timestamptz[]  query_start   \  pinned when $5 says so: the query (and state)
--  $4  timestamptz[]  state_change  /  seen when chosen, so a backend that moved on is left alone
--  $5  boolean[]      pin the query and state
--  $6  text[]         action: cancel | terminate | grace (cancel if it runs a query, else terminate)
--  $7  boolean        send the signals (false: judge only, for a dry run)
--  $8  boolean        walsenders may be signalled (--include-replication)
--  $9  boolean        autovacuum workers may be signalled (--include-autovacuum)
--  $10 timestamptz    pg_postmaster_start_time() the choice was made on (NULL: not checked)
--  and from $11 on, the selection's parameters; its predicate over "a"
--  replaces the "true" after /*selection*/ (alone: every session).
--
-- Privilege is decided per row, as pg_signal_backend() decides it, so that
-- one session we may not signal is reported 'denied' instead of raising the
-- error that would abort the statement for every other session.
WITH me AS (
    SELECT r.oid, r.rolsuper
      FROM pg_catalog.pg_roles AS r
     WHERE r.rolname = CURRENT_USER
), chosen AS (
    SELECT *
      FROM ROWS FROM (pg_catalog.unnest($1::integer[]),
                      pg_catalog.unnest($2::timestamptz[]),
                      pg_catalog.unnest($3::timestamptz[]),
                      pg_catalog.unnest($4::timestamptz[]),
                      pg_catalog.unnest($5::boolean[]),
                      pg_catalog.unnest($6::text[]))
           WITH ORDINALITY AS c(pid, backend_start, query_start, state_change, pin_query, action, n)
), judged AS MATERIALIZED (
    SELECT c.n, c.pid, d.act,
           CASE
             WHEN $10::timestamptz IS NOT NULL
                  AND $10::timestamptz IS DISTINCT FROM pg_catalog.pg_postmaster_start_time() THEN 'other_server'
             WHEN a.pid IS NULL THEN 'gone'
             WHEN a.pid = pg_catalog.pg_backend_pid() THEN 'own'
             WHEN a.backend_type = 'parallel worker' THEN 'parallel_worker'
             WHEN a.backend_type = 'walsender' AND NOT $8::boolean THEN 'walsender'
             WHEN a.backend_type = 'autovacuum worker' AND NOT $9::boolean THEN 'autovacuum'
             WHEN a.backend_type NOT IN ('client backend', 'walsender', 'autovacuum worker') THEN 'not_client'
             WHEN a.backend_start IS NULL THEN 'invisible'
             WHEN c.backend_start IS NULL
                  OR a.backend_start IS DISTINCT FROM c.backend_start THEN 'reused'
             WHEN c.pin_query AND (a.query_start IS DISTINCT FROM c.query_start
                                   OR a.state_change IS DISTINCT FROM c.state_change) THEN 'moved'
             WHEN d.act = 'cancel' AND a.state NOT IN ('active', 'fastpath function call') THEN 'not_running'
             WHEN NOT coalesce(/*selection*/ true, false) THEN 'no_match'
             WHEN me.rolsuper THEN 'ok'
             WHEN t.rolsuper THEN 'superuser'
             WHEN a.usesysid IS NULL THEN 'no_role'
             WHEN pg_catalog.pg_has_role(me.oid, a.usesysid, 'USAGE') THEN 'ok'
             WHEN pg_catalog.pg_has_role(me.oid, 'pg_signal_backend'::pg_catalog.name, 'USAGE') THEN 'ok'
             ELSE 'not_member'
           END AS verdict,
           a.backend_type,
           a.usename::text,
           a.state,
           a.backend_start AS now_backend_start,
           a.query_start,
           a.state_change
      FROM chosen AS c
      CROSS JOIN me
      LEFT JOIN pg_catalog.pg_stat_activity AS a ON a.pid = c.pid
      -- A grace cancels what runs a query and terminates the rest, decided
      -- on what the session runs at this instant.
      CROSS JOIN LATERAL (SELECT CASE WHEN c.action <> 'grace' THEN c.action
                                      WHEN a.state IN ('active', 'fastpath function call') THEN 'cancel'
                                      ELSE 'terminate'
                                 END AS act) AS d
      LEFT JOIN pg_catalog.pg_roles AS t ON t.oid = a.usesysid
)
SELECT j.n, j.verdict,
       CASE WHEN j.verdict = 'ok' AND $7::boolean THEN
            CASE j.act
              WHEN 'cancel' THEN pg_catalog.pg_cancel_backend(j.pid)
              WHEN 'terminate' THEN pg_catalog.pg_terminate_backend(j.pid)
            END
       END AS sent,
       j.backend_type, j.usename, j.state, j.now_backend_start,
       j.act, j.query_start, j.state_change
  FROM judged AS j
 ORDER BY j.n
