-- pgreap top: has a snapshot anything new to show? A quiet server sends
-- this one row a refresh instead of every session. The selectors' predicate,
-- if any, is added as the snapshot's is.
-- Only a statement changes what a quiet session shows, and a statement
-- moves state_change, which only ever grows: the largest state_change
-- moves. A session that connects moves the largest backend_start, one
-- that ends the count; a server that restarted has another start time.
-- An active session changes with no state change (wait events, a lock
-- wait, its workers): while any runs, every refresh is a snapshot.
-- A session's role name is looked up as the view is read: a role renamed
-- (or dropped) from a session the selectors leave out changes what an
-- idle session shows, and nothing else: the sum of the names' hashes
-- moves.
SELECT pg_catalog.count(*) AS sessions,
       pg_catalog.count(*) FILTER (WHERE a.state IS NULL
          OR a.state NOT IN ('idle', 'idle in transaction', 'idle in transaction (aborted)')) AS busy,
       pg_catalog.max(a.state_change) AS state_change,
       pg_catalog.max(a.backend_start) AS backend_start,
       pg_catalog.sum(pg_catalog.hashtext(coalesce(a.usename::text, ''))) AS users,
       pg_catalog.pg_postmaster_start_time() AS server_started,
       pg_catalog.statement_timestamp() AS now
  FROM pg_catalog.pg_stat_activity AS a
 WHERE a.datname IS NOT NULL
   AND a.pid <> pg_catalog.pg_backend_pid()
