// Package tui is `pgreap top`: a bubbletea model of the live sessions of one
// server, with the blocking tree, sort, filter, marks, and cancel and
// terminate.
//
// It guarantees:
//   - nothing is signalled without a y to a question that names the
//     sessions, and nothing at all with ReadOnly;
//   - every action goes through action.NewPlan and action.Execute: the
//     identity shown on the screen (pid, backend_start, and for a cancel
//     the query_start) is what the signalling statement re-checks, and every
//     session's outcome is shown, refusals included;
//   - Update never waits on the server: snapshots and actions run as
//     commands, one statement at a time on one connection;
//   - a refresh of a quiet server (every session shown idle or idle in
//     transaction, none started, ended or run a statement since the last
//     snapshot: sql/quiet.sql) reads one row and shows the last
//     snapshot's sessions at the server's new time; any change, or a
//     selector that moves with time or queries, takes a snapshot;
//   - text from the server (queries, application names) is cleaned of
//     control characters before it reaches the terminal.
package tui
