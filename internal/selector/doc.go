// Package selector turns the selectors of the command line and of a policy
// rule's match into one SQL predicate over pg_stat_activity, with every
// value a bound parameter: globs become escaped LIKE patterns, --client a
// CIDR containment, durations intervals measured by the server's clock.
//
// The same predicate serves the snapshot and, repeated inside an action's
// statement, the re-check at the instant of signalling. Only the query
// regular expression (RE2) is evaluated in Go, on the snapshot's text; an
// action stays safe because it also pins the session's query_start.
//
// A Selector answers every question about itself, so that a new selector
// is a change to this package alone (and its flag and policy key): its
// predicate (Compile, CompileEach), its snapshot (Take, with Keep), what an
// action's guard must pin (PinsQuery) and re-read (Moves), when the daemon
// should act on a session (Due, Untimed, Thresholds), and its summary
// (Spec.Summary).
//
// Behind poolers (WithPooled), user, app and client judge a pooler's
// server connection by the client the pooler named, passed as bound arrays
// keyed by (pid, backend_start) into the snapshot and the re-check alike;
// never a backend whose state changed after the poolers were asked, and
// the guard pins the query of each session so chosen (ByPooledClient).
package selector
