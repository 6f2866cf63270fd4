// Package action cancels and terminates PostgreSQL sessions, and proves
// what happened to each.
//
// It guarantees, on every path:
//
//   - A session is named by (pid, backend_start), and for a cancel, or a
//     selection that depends on what the session runs, also by query_start
//     and state_change. The one statement that signals a whole set re-reads
//     pg_stat_activity and signals only the sessions that still are what was
//     chosen and still match the selection; any other is reported changed or
//     gone and left alone.
//   - pgreap's own session, parallel workers (their leader is the target),
//     non-client backends, walsenders and autovacuum workers (unless
//     included) are never signalled, even when named by pid.
//   - Privilege is decided per session inside the statement, so a session
//     the role may not signal is reported denied and never aborts the
//     statement for the others.
//   - Sent is not done: signalled sessions are watched, all at once, until
//     gone (or their query ended, for a cancel); the rest are survived.
//
// Per-session results are data (Result.Outcome), not errors; an error
// stops the whole action.
package action
