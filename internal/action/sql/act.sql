-- pgreap action: signal exactly the chosen sessions, each re-checked the
-- instant before its own signal.
--
-- pg_stat_activity is not read live: the first time a transaction looks
-- at it, the backend copies the whole status array and keeps that copy
-- until the transaction ends. Judged against that copy, a session may have
-- moved on milliseconds before its signal (measured under load: a cancel
-- hit the next query, a terminate a transaction that had committed). So a
-- session whose pinned facts can move is read afresh on its own row
-- (pg_stat_clear_snapshot drops the copy, pg_stat_get_activity of its pid
-- reads the array again), judged, signalled, and read once more right
-- after its signal: the row says whether the signal reached it as chosen.
-- Sessions whose facts cannot move (the identity only, a selection on
-- database, user, client) share one read, "shared", which is the cost
-- floor: each finds its pid there by a join, where pg_stat_get_activity(pid)
-- would look through every backend for each of them (sessions times
-- backends).
--
-- No ORDER BY: each row says its place (c.n). Asked for c's order, the
-- planner keeps it with a nested loop over "shared" (sessions times
-- backends) rather than hash it.
--
-- Each row's read, verdict and signal are one evaluation of the lateral
-- subqueries "j" and "after": volatile functions in their target lists and
-- OFFSET 0 keep the planner from pulling them up or reordering them, and
-- "after" depends on j.sent, so it runs after that row's signal.
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
--  $11 boolean[]      read the session afresh at its signal, and again after it
--  $12 bigint         system_identifier of the server the choice was made on (NULL: not checked):
--                     a plan is for one server; a failover or a restart in between makes it another's
--  $13 boolean[]      the session must still be as described by $14-$17: a plan file names a
--  $14 text[]         datname           session by (pid, backend_start) and describes it; one
--  $15 text[]         usename           described otherwise is not the session planned (an
--  $16 text[]         application_name  edited plan), and is left alone
--  $17 text[]         client_addr
--  $18 text           the application_name of the pgreap watch that acts (NULL: none): its
--                     role's sessions of that name are a watch's, its own or a replica's,
--                     and never signalled (two targets or replicas would end each other)
--  and from $19 on, the selection's parameters; its predicate over "a"
--  replaces the "true" after /*selection*/ (alone: every session).
--
-- Privilege is decided per row, as pg_signal_backend() decides it, so that
-- one session we may not signal is reported 'denied' instead of raising the
-- error that would abort the statement for every other session.
--
-- The columns after the verdict are the session as this statement read it:
-- what pgreap reports of a session is what the signalling statement saw.
--
-- One file for every version: leader_pid (13) and query_id (14) are read
-- by name from the row as this server has it ("jv"), NULL where the
-- server has not got them.
WITH me AS MATERIALIZED (
    -- Read once: pg_control_system() reads the control file at each call.
    SELECT r.oid, r.rolsuper,
           -- pg_stat_activity's usesysid is a session's login role:
           -- pgreap's own is SESSION_USER, whatever role it acts as.
           (SELECT su.oid FROM pg_catalog.pg_roles AS su WHERE su.rolname = SESSION_USER) AS session_oid,
           (SELECT cs.system_identifier FROM pg_catalog.pg_control_system() AS cs) AS system_identifier,
           pg_catalog.pg_postmaster_start_time() AS started
      FROM pg_catalog.pg_roles AS r
     WHERE r.rolname = CURRENT_USER
), chosen AS (
    SELECT *
      FROM ROWS FROM (pg_catalog.unnest($1::integer[]),
                      pg_catalog.unnest($2::timestamptz[]),
                      pg_catalog.unnest($3::timestamptz[]),
                      pg_catalog.unnest($4::timestamptz[]),
                      pg_catalog.unnest($5::boolean[]),
                      pg_catalog.unnest($6::text[]),
                      pg_catalog.unnest($11::boolean[]),
                      pg_catalog.unnest($13::boolean[]),
                      pg_catalog.unnest($14::text[]),
                      pg_catalog.unnest($15::text[]),
                      pg_catalog.unnest($16::text[]),
                      pg_catalog.unnest($17::text[]))
           WITH ORDINALITY AS c(pid, backend_start, query_start, state_change, pin_query, action, fresh,
                                described, datname, usename, application_name, client_addr, n)
), shared AS MATERIALIZED (
    SELECT s.* FROM pg_catalog.pg_stat_get_activity(NULL) AS s
)
SELECT c.n, j.verdict, j.sent, j.pid IS NOT NULL AS present,
       j.pid, (jv.doc OPERATOR(pg_catalog.->>) 'leader_pid')::integer AS leader_pid, j.datname, j.usename, j.application_name,
       j.client_addr, j.backend_type, j.state, j.backend_start, j.xact_start, j.query_start,
       j.state_change, j.wait_event_type, j.wait_event, j.query, (jv.doc OPERATOR(pg_catalog.->>) 'query_id')::bigint AS query_id,
       j.act, j.xid, j.read_at, j.read_done, j.signal_at, j.signal_done,
       after.pid IS NOT NULL AS after_present,
       after.state AS after_state,
       after.query_start AS after_query_start,
       after.state_change AS after_state_change,
       me.system_identifier, me.started
  FROM chosen AS c
  -- The sessions not read afresh find themselves in the one read.
  LEFT JOIN shared AS sh ON sh.pid = c.pid AND NOT c.fresh
  CROSS JOIN me
  CROSS JOIN LATERAL (
    -- The signal, in the row that judged it on its own read.
    SELECT v.*,
           pg_catalog.clock_timestamp() AS signal_at,
           CASE WHEN v.verdict = 'ok' AND $7::boolean THEN
                CASE v.act
                  WHEN 'cancel' THEN pg_catalog.pg_cancel_backend(c.pid)
                  WHEN 'terminate' THEN pg_catalog.pg_terminate_backend(c.pid)
                END
           END AS sent,
           pg_catalog.clock_timestamp() AS signal_done
      FROM (
        SELECT CASE
                 WHEN ($10::timestamptz IS NOT NULL AND $10::timestamptz IS DISTINCT FROM me.started)
                      OR ($12::bigint IS NOT NULL AND $12::bigint IS DISTINCT FROM me.system_identifier) THEN 'other_server'
                 WHEN a.pid IS NULL THEN 'gone'
                 WHEN a.pid = pg_catalog.pg_backend_pid() THEN 'own'
                 -- Its role too: another role naming itself so is not.
                 WHEN $18::text IS NOT NULL AND a.usesysid = me.session_oid
                      AND a.application_name = $18::text THEN 'watch'
                 WHEN a.backend_type = 'parallel worker' THEN 'parallel_worker'
                 WHEN a.backend_type = 'walsender' AND NOT $8::boolean THEN 'walsender'
                 WHEN a.backend_type = 'autovacuum worker' AND NOT $9::boolean THEN 'autovacuum'
                 WHEN a.backend_type NOT IN ('client backend', 'walsender', 'autovacuum worker') THEN 'not_client'
                 WHEN a.backend_start IS NULL THEN 'invisible'
                 WHEN c.backend_start IS NULL
                      OR a.backend_start IS DISTINCT FROM c.backend_start THEN 'reused'
                 WHEN c.described AND (a.datname IS DISTINCT FROM c.datname
                                       OR a.usename IS DISTINCT FROM c.usename
                                       OR coalesce(a.application_name, '') IS DISTINCT FROM coalesce(c.application_name, '')
                                       OR a.client_addr IS DISTINCT FROM c.client_addr::inet) THEN 'described'
                 WHEN c.pin_query AND (a.query_start IS DISTINCT FROM c.query_start
                                       OR a.state_change IS DISTINCT FROM c.state_change) THEN 'moved'
                 WHEN d.act = 'cancel' AND a.state NOT IN ('active', 'fastpath function call') THEN 'not_running'
                 WHEN NOT coalesce(/*selection*/ true, false) THEN 'no_match'
                 WHEN me.rolsuper THEN 'ok'
                 WHEN a.rolsuper THEN 'superuser'
                 WHEN a.usesysid IS NULL THEN 'no_role'
                 WHEN pg_catalog.pg_has_role(me.oid, a.usesysid, 'USAGE') THEN 'ok'
                 WHEN pg_catalog.pg_has_role(me.oid, 'pg_signal_backend'::pg_catalog.name, 'USAGE') THEN 'ok'
                 ELSE 'not_member'
               END AS verdict,
               d.act,
               a.*,
               a.backend_xid::text AS xid
          FROM (SELECT 1) AS one
          -- "a" has pg_stat_activity's columns, read for this session alone
          -- (afresh), or found in the one read.
          LEFT JOIN LATERAL (
            SELECT r.*, db.datname::text, u.rolname::text AS usename, u.rolsuper
              FROM (
                -- read_at and read_done: the clock just before and after the read
                SELECT s.*, t0.read_at, pg_catalog.clock_timestamp() AS read_done
                  FROM (SELECT c.pid, pg_catalog.clock_timestamp() AS read_at WHERE c.fresh OFFSET 0) AS t0
                  CROSS JOIN LATERAL pg_catalog.pg_stat_get_activity(
                         CASE WHEN t0.read_at IS NULL OR c.n IS NULL THEN 0
                              -- never true (0 would be no backend; NULL, or -1, every
                              -- backend): it drops the copy, so the call reads anew
                              WHEN pg_catalog.pg_stat_clear_snapshot() IS NULL THEN 0
                              ELSE c.pid
                         END) AS s
                UNION ALL
                SELECT sh.*, NULL::timestamptz, NULL::timestamptz
                 WHERE sh.pid IS NOT NULL
              ) AS r
              LEFT JOIN pg_catalog.pg_database AS db ON db.oid = r.datid
              LEFT JOIN pg_catalog.pg_roles AS u ON u.oid = r.usesysid
          ) AS a ON true
          -- A grace cancels what runs a query and terminates the rest, decided
          -- on what the session runs at this instant.
          CROSS JOIN LATERAL (SELECT CASE WHEN c.action <> 'grace' THEN c.action
                                          WHEN a.state IN ('active', 'fastpath function call') THEN 'cancel'
                                          ELSE 'terminate'
                                     END AS act) AS d
        OFFSET 0
      ) AS v
    OFFSET 0
  ) AS j
  CROSS JOIN LATERAL (SELECT pg_catalog.to_jsonb(j) AS doc) AS jv
  -- Read again right after the signal: a session still as chosen then was
  -- as chosen when the signal reached it.
  LEFT JOIN LATERAL (
    SELECT s.pid, s.state, s.query_start, s.state_change
      -- Only after a signal to a session read afresh: even with no
      -- backend to find (pid 0), pg_stat_get_activity looks through all.
      FROM (SELECT 1 WHERE j.sent AND c.fresh OFFSET 0) AS t1
      CROSS JOIN LATERAL pg_catalog.pg_stat_get_activity(
             -- never true: c.n makes each row's arguments its own, so
             -- no cache (Memoize, 14+) answers one row with another's read
             CASE WHEN c.n IS NULL OR pg_catalog.pg_stat_clear_snapshot() IS NULL THEN 0
                  ELSE c.pid
             END) AS s
     WHERE s.backend_start = j.backend_start
  ) AS after ON true
